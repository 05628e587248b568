"""Which units are worth a look: the Machine Interpretability Score (MIS) of each unit.

Zimmermann, Klindt & Brendel, "Measuring Per-Unit Interpretability at Scale Without Humans"
(NeurIPS 2024), automate the two-alternative forced-choice task of Borowski et al. (ICLR 2021).
One *task* shows ``K`` strongly and ``K`` weakly activating reference images of a unit and two
queries, one strongly and one weakly activating; the score is how surely a perceptual similarity
model tells which query is which:

* a unit's activation on an image is its strongest response over the map's positions (before its
  activation function: the value that ranks the gallery's dataset examples), and its crop is the
  receptive field at that position (the whole image where the field covers it);
* the strong pool is the ``quantile`` (0.2) of images the unit answers most, the weak pool the same
  share it answers least (each at least ``K + 1`` images);
* each of the ``N`` (20) tasks draws ``K + 1`` (10) images from each pool: the ``K`` most extreme are
  the references, the least extreme is the query, so queries never reuse reference images;
* ``s(q, E)`` is the mean cosine similarity of query ``q`` to references ``E``;
  ``d = (s(q+, E+) - s(q+, E-)) - (s(q-, E+) - s(q-, E-))`` and the task's probability of choosing
  right is ``sigmoid(d / alpha)`` (``alpha`` = 0.16); MIS is its mean over the tasks, 0.5 = chance.

*Natural* MIS takes the references from the image set. *Synthetic* MIS keeps the same queries and
lets the unit's pictures stand in for the references: the positive picture (and the diverse ones
when there are any) for ``E+``, the negative picture for ``E-``. It asks whether the pictures explain
the unit as well as natural images do.

Deviations from the paper, documented in docs/interpretability.md: the similarity model is not
DreamSim (not available offline) but an ImageNet network's features (:mod:`cnnvis.atlas.similarity`);
``alpha`` acts as a temperature (``sigmoid(d / alpha)``): with cosine similarities ``d`` is a
fraction of one, and ``sigmoid(alpha * d)`` would keep every unit within 0.5 +- 0.02.

Example:
    >>> import torch
    >>> activation = torch.arange(40.0)                       # image i makes the unit answer i
    >>> features = torch.nn.functional.normalize(torch.stack([torch.ones(40), activation / 40], 1), dim=1)
    >>> tasks = make_tasks(activation, ScoreSettings(), torch.Generator().manual_seed(0))
    >>> s = natural_score(tasks, features, ScoreSettings())
    >>> s.accuracy, s.mis > 0.5
    (1.0, True)
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from cnnvis.core.errors import InputError
from cnnvis.core.io import load_picture
from cnnvis.core.memory import release_freed_memory
from cnnvis.atlas.examples import LayerExamples, crop_box
from cnnvis.atlas.store import fingerprint, variant_name
from cnnvis.synthesis.settings import unit_seed

#: where the method comes from (linked from every unit page)
PAPER = "https://arxiv.org/abs/2405.13808"


@dataclass(frozen=True)
class ScoreSettings:
    """The task's parameters; the defaults are the paper's (K = 9, N = 20, quantile 0.2, alpha 0.16)."""

    k: int = 9
    tasks: int = 20
    quantile: float = 0.2
    alpha: float = 0.16
    seed: int = 0

    def __post_init__(self):
        if int(self.k) < 1 or int(self.tasks) < 1:
            raise InputError(f"K and N must be 1 or more, got K={self.k}, N={self.tasks}")
        if not 0 < float(self.quantile) <= 0.5:
            raise InputError(f"the quantile must be in (0, 0.5], got {self.quantile}")
        if not (math.isfinite(float(self.alpha)) and float(self.alpha) > 0):
            raise InputError(f"alpha must be a positive number, got {self.alpha}")

    @property
    def needed(self) -> int:
        """Images a unit needs: ``K + 1`` strong and ``K + 1`` weak ones, none shared."""
        return 2 * int(self.k) + 2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Score:
    """One MIS: ``mis`` (mean probability of choosing right) and ``accuracy`` (share of tasks the
    similarity gets right outright), or both None with the ``reason`` it is undefined."""

    mis: Optional[float]
    accuracy: Optional[float] = None
    reason: Optional[str] = None
    tasks: int = 0
    references: Optional[Dict[str, int]] = None  # synthetic: pictures standing in for each side

    @classmethod
    def undefined(cls, reason: str) -> "Score":
        return cls(None, None, reason)

    def to_dict(self) -> dict:
        out = {"mis": self.mis, "accuracy": self.accuracy, "reason": self.reason, "tasks": self.tasks}
        if self.references is not None:
            out["references"] = dict(self.references)
        return out


@dataclass(frozen=True)
class Tasks:
    """Image indices of each task: ``top[t]`` strongest first, ``bottom[t]`` weakest first; the last of
    each row is that side's query, the others its references."""

    top: torch.Tensor
    bottom: torch.Tensor

    def images(self) -> List[int]:
        return sorted(set(self.top.flatten().tolist()) | set(self.bottom.flatten().tolist()))


def make_tasks(activation: torch.Tensor, settings: ScoreSettings, generator: torch.Generator) -> Tasks:
    """The ``N`` tasks of a unit whose activation on image ``i`` is ``activation[i]`` (non-finite
    values are not usable). Raises InputError when fewer than ``2K + 2`` images are usable."""
    activation = activation.detach().double().cpu().flatten()
    usable = torch.nonzero(torch.isfinite(activation)).flatten()
    n, k = len(usable), int(settings.k)
    if n < settings.needed:
        raise InputError(f"{n} usable image{'s' if n != 1 else ''}; the score needs at least {settings.needed} "
                         f"(2K+2 with K={k}): pass more images with --images, or a smaller --k")
    values = activation[usable]
    order = usable[torch.argsort(values, stable=True)]  # weakest first; ties keep image order
    m = max(math.ceil(float(settings.quantile) * n), k + 1)
    pools = (order.flip(0)[:m], order[:m])
    rows: Tuple[List[torch.Tensor], List[torch.Tensor]] = ([], [])
    for _ in range(int(settings.tasks)):
        for side, pool in enumerate(pools):
            drawn = pool[torch.randperm(m, generator=generator)[: k + 1]]
            ranked = torch.argsort(activation[drawn], descending=side == 0, stable=True)
            rows[side].append(drawn[ranked])
    return Tasks(torch.stack(rows[0]), torch.stack(rows[1]))


def _score(d: torch.Tensor, settings: ScoreSettings, references=None) -> Score:
    d = d.double()
    mis = float(torch.sigmoid(d / float(settings.alpha)).mean())
    return Score(round(mis, 6), round(float((d > 0).double().mean()), 6), None, len(d), references)


def natural_score(tasks: Tasks, features: torch.Tensor, settings: ScoreSettings) -> Score:
    """MIS with natural references: ``features[i]`` is image ``i``'s unit-length embedding."""
    k = int(settings.k)
    f = features.double()
    e_plus, e_minus = f[tasks.top[:, :k]], f[tasks.bottom[:, :k]]  # task x K x D
    q_plus, q_minus = f[tasks.top[:, k]], f[tasks.bottom[:, k]]  # task x D

    def s(q, e):
        return torch.einsum("td,tkd->t", q, e) / e.shape[1]

    return _score((s(q_plus, e_plus) - s(q_plus, e_minus)) - (s(q_minus, e_plus) - s(q_minus, e_minus)), settings)


def synthetic_score(tasks: Tasks, features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                    settings: ScoreSettings) -> Score:
    """MIS with the pictures as references: the same queries as :func:`natural_score`, ``positive``
    (``P x D``) and ``negative`` (``Q x D``) embeddings for ``E+`` and ``E-``."""
    return _query_score(_queries(tasks, features, settings), positive, negative, settings)


def _queries(tasks: Tasks, features: torch.Tensor, settings: ScoreSettings) -> Tuple[torch.Tensor, torch.Tensor]:
    """The tasks' query embeddings (``task x D``, strong and weak): all a synthetic score needs of the images."""
    k = int(settings.k)
    f = features.double()
    return f[tasks.top[:, k]], f[tasks.bottom[:, k]]


def _query_score(queries: Tuple[torch.Tensor, torch.Tensor], positive: torch.Tensor, negative: torch.Tensor,
                 settings: ScoreSettings) -> Score:
    q_plus, q_minus = queries
    pos, neg = positive.double(), negative.double()

    def s(q, e):
        return (q @ e.t()).mean(1)

    return _score((s(q_plus, pos) - s(q_plus, neg)) - (s(q_minus, pos) - s(q_minus, neg)), settings,
                  {"positive": len(pos), "negative": len(neg)})


# --------------------------------------------------------------------------- units of a layer


@dataclass
class UnitScores:
    layer: str
    filter: int
    natural: Score
    synthetic: Score

    def to_dict(self) -> dict:
        return {"layer": self.layer, "filter": int(self.filter), "natural": self.natural.to_dict(),
                "synthetic": self.synthetic.to_dict()}


#: picture kinds standing in for each side of the synthetic references
POSITIVE_KINDS = ("positive", "diverse")


def unit_pictures(records: Sequence[dict], objective: str, preset: str) -> Dict[Tuple[str, int], Dict[str, List[str]]]:
    """Each unit's pictures of one objective and preset, by kind (``positive``, ``negative``,
    ``diverse``), as image paths relative to the store's folder."""
    positive, negative = variant_name(objective, preset), variant_name(objective, preset, negative=True)
    diverse = f"{positive}-diverse"
    out: Dict[Tuple[str, int], Dict[str, List[str]]] = {}
    for rec in sorted(records, key=lambda r: str(r.get("variant"))):
        variant, image = str(rec.get("variant")), rec.get("image")
        kind = ("positive" if variant == positive else "negative" if variant == negative
                else "diverse" if variant.startswith(diverse) else None)
        if kind is None or not image:
            continue
        out.setdefault((str(rec["layer"]), int(rec["filter"])), {}).setdefault(kind, []).append(image)
    return out


def _responds(ex: LayerExamples, unit: int) -> Optional[str]:
    """Why a unit cannot be scored on this image set (its response is the same on every image), or None."""
    response = ex.peaks[unit].double()
    finite = response[torch.isfinite(response)]
    if len(finite) and float(finite.max() - finite.min()) <= 1e-6 * max(1.0, float(finite.abs().max())):
        value = float(finite[0])
        what = ("it responds to nothing in the image set" if value <= 0 else
                "it answers every image alike (saturated: a ReLU6 at its ceiling, say)")
        return (f"the unit's response is {value:.3g} on every one of the {len(finite)} images: "
                f"{what}, so no image is stronger than another")
    return None


def crop_side(ex: LayerExamples) -> int:
    """The side of the crops a layer's units are scored on: the receptive field, or the whole image."""
    h, w = ex.images.shape[-2:]
    if ex.rf is None or ex.rf.is_global:
        return max(h, w)
    fh, fw = ex.rf.size
    return max(h, w) if fh >= h or fw >= w else max(fh, fw)


def unit_crop(ex: LayerExamples, unit: int, image: int) -> torch.Tensor:
    """Image ``image`` as the unit saw it at its strongest position: the receptive field there (grey
    where it leaves the image), or the whole image when the field is as large as the image."""
    h, w = ex.images.shape[-2:]
    if crop_side(ex) >= max(h, w):
        return ex.images[image]
    p = int(ex.strongest_at[unit, image])
    return crop_box(ex.images[image], ex.rf.region(p // ex.map_size[1], p % ex.map_size[1]))


@dataclass
class NaturalScores:
    """A layer's natural scores (:func:`natural_layer`; an undefined one carries its reason) and what its
    synthetic scores need of the images: each scored unit's query embeddings (``task x D``, strong and weak)."""

    layer: str
    side: int  # the similarity model's input side for this layer's crops
    natural: Dict[int, Score]
    queries: Dict[int, Tuple[torch.Tensor, torch.Tensor]]


def score_layer(ex: LayerExamples, units: Sequence[int], similarity, settings: ScoreSettings, *,
                pictures: Optional[Dict[int, Dict[str, List[torch.Tensor]]]] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> Dict[int, UnitScores]:
    """Natural (and, for units in ``pictures``, synthetic) MIS of ``units`` of one layer.

    ``ex`` comes from :func:`cnnvis.atlas.examples.collect_examples` (the gallery's dataset pass);
    ``similarity`` is a :class:`~cnnvis.atlas.similarity.Similarity`; ``pictures[u]`` holds a unit's
    pictures by kind as ``C x H x W`` tensors in [0, 1]. A unit without pictures gets an undefined
    synthetic score saying so. The same as :func:`synthetic_layer` of :func:`natural_layer`, which a
    gallery runs apart: the natural part while its pictures are drawn, the synthetic part after.
    """
    return synthetic_layer(natural_layer(ex, units, similarity, settings, progress=progress), similarity, settings,
                           pictures=pictures)


def natural_layer(ex: LayerExamples, units: Sequence[int], similarity, settings: ScoreSettings, *,
                  progress: Optional[Callable[[int, int], None]] = None) -> NaturalScores:
    """The natural MIS of ``units`` of one layer, and their queries for :func:`synthetic_layer`."""
    if ex.strongest is None:
        raise InputError("these examples carry no per-image activations; collect them again")
    side = similarity.side(crop_side(ex))
    whole = crop_side(ex) >= max(ex.images.shape[-2:])
    cache: Dict[Tuple[int, ...], torch.Tensor] = {}
    natural: Dict[int, Score] = {}
    queries: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
    for n, u in enumerate(units):
        g = torch.Generator().manual_seed(unit_seed(int(settings.seed), ex.layer, "mis", int(u)))
        reason = _responds(ex, u)
        tasks = None
        if reason is None:
            try:
                tasks = make_tasks(ex.strongest[u], settings, g)
            except InputError as exc:
                reason = str(exc)
        if tasks is None:
            natural[int(u)] = Score.undefined(reason)
            continue
        wanted = tasks.images()
        keys = {i: (i,) if whole else (i, int(ex.strongest_at[u, i])) for i in wanted}
        missing = [i for i in wanted if keys[i] not in cache]
        if missing:
            embedded = similarity.embed([unit_crop(ex, u, i) for i in missing], side)  # stacked a batch at a time
            cache.update({keys[i]: row for i, row in zip(missing, embedded)})
        features = torch.zeros(len(ex.images), next(iter(cache.values())).shape[0])
        for i in wanted:
            features[i] = cache[keys[i]]
        natural[int(u)] = natural_score(tasks, features, settings)
        queries[int(u)] = _queries(tasks, features, settings)
        if progress is not None:
            progress(n + 1, len(units))
    return NaturalScores(ex.layer, side, natural, queries)


def synthetic_layer(found: NaturalScores, similarity, settings: ScoreSettings, *,
                    pictures: Optional[Dict[int, Dict[str, List[torch.Tensor]]]] = None) -> Dict[int, UnitScores]:
    """:func:`score_layer`'s result from a layer's natural scores and, for units in ``pictures``, their pictures."""
    out = {}
    for u, natural in found.natural.items():
        if u not in found.queries:  # no score: the same reason for both
            out[u] = UnitScores(found.layer, u, natural, natural)
            continue
        synthetic = _synthetic(found.queries[u], (pictures or {}).get(u), similarity, found.side, settings,
                               has_pictures=pictures is not None)
        out[u] = UnitScores(found.layer, u, natural, synthetic)
    return out


def _synthetic(queries, mine, similarity, side, settings, *, has_pictures: bool) -> Score:
    if not has_pictures:
        return Score.undefined("no pictures were asked for (synthetic references off)")
    mine = mine or {}
    pos = [p for kind in POSITIVE_KINDS for p in mine.get(kind) or []]
    neg = list(mine.get("negative") or [])
    if not pos:
        return Score.undefined("the unit has no positive picture yet")
    if not neg:
        return Score.undefined("the unit has no negative picture: make one with --negative "
                               "(cnnvis gallery) or let cnnvis score make its pictures")
    embedded = similarity.embed(torch.stack(_same_size(pos + neg)), side)
    return _query_score(queries, embedded[: len(pos)], embedded[len(pos) :], settings)


def _same_size(images: List[torch.Tensor]) -> List[torch.Tensor]:
    h, w = images[0].shape[-2:]
    return [x if tuple(x.shape[-2:]) == (h, w) else
            torch.nn.functional.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            for x in images]


def load_pictures(folder: str, paths: Dict[str, List[str]], channels: int) -> Dict[str, List[torch.Tensor]]:
    """A unit's picture files (relative to ``folder``) as ``C x H x W`` tensors in [0, 1]."""
    return {kind: [load_picture(os.path.join(folder, rel), channels) for rel in files] for kind, files in paths.items()}


def score_examples(examples: Dict[str, LayerExamples], units: Sequence[Tuple[str, int]], similarity,
                   settings: ScoreSettings, *, folder: Optional[str] = None, records: Optional[Sequence[dict]] = None,
                   kind: Tuple[str, str] = ("channel-relu", "robust"), channels: int = 3,
                   progress: Optional[Callable[[int, int], None]] = None) -> Dict[Tuple[str, int], UnitScores]:
    """:func:`score_layer` for ``units`` (``(layer, filter)`` pairs) over layers' examples; with ``records``
    (of the store in ``folder``), the pictures of objective and preset ``kind`` are the synthetic references."""
    found = natural_examples(examples, units, similarity, settings, progress=progress)
    return synthetic_examples(found, similarity, settings, folder=folder, records=records, kind=kind,
                              channels=channels)


def natural_examples(examples: Dict[str, LayerExamples], units: Sequence[Tuple[str, int]], similarity,
                     settings: ScoreSettings, *,
                     progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, NaturalScores]:
    """:func:`natural_layer` of each layer of ``units``: what needs the images and none of the pictures."""
    out: Dict[str, NaturalScores] = {}
    done = 0
    for layer in dict.fromkeys(name for name, _ in units):
        mine = [int(f) for name, f in units if name == layer]

        def tick(d, _t, base=done):
            if progress is not None:
                progress(base + d, len(units))

        out[layer] = natural_layer(examples[layer], mine, similarity, settings, progress=tick)
        done += len(mine)
        release_freed_memory()  # the next layer embeds images of another size
    return out


def synthetic_examples(found: Dict[str, NaturalScores], similarity, settings: ScoreSettings, *,
                       folder: Optional[str] = None, records: Optional[Sequence[dict]] = None,
                       kind: Tuple[str, str] = ("channel-relu", "robust"),
                       channels: int = 3) -> Dict[Tuple[str, int], UnitScores]:
    """Every unit's scores from :func:`natural_examples`; with ``records`` (of the store in ``folder``), the
    pictures of objective and preset ``kind`` are the synthetic references."""
    pictures_of = unit_pictures(records, *kind) if records is not None else None
    out: Dict[Tuple[str, int], UnitScores] = {}
    for layer, part in found.items():
        pictures = (None if pictures_of is None else
                    {f: load_pictures(folder or ".", pictures_of.get((layer, f), {}), channels) for f in part.natural})
        out.update({(layer, f): s for f, s in synthetic_layer(part, similarity, settings, pictures=pictures).items()})
    return out


class Scorer:
    """Scores the units of a dataset pass (the gallery's): a similarity model, the task's settings and the
    ``kind`` (objective, preset) of the pictures that stand in as synthetic references.

    ``describe`` goes into the gallery's settings, ``fingerprint`` into its analyses' (with ``extra``:
    what else decides the pictures), so changing any of them scores the units again. A gallery calls
    :meth:`natural` while its pictures are drawn and :meth:`synthetic` once they are stored; calling the
    scorer does both."""

    def __init__(self, similarity, settings: ScoreSettings, kind: Tuple[str, str], channels: int, extra=()):
        self.similarity, self.settings, self.kind, self.channels = similarity, settings, tuple(kind), channels
        self.describe = {**similarity.describe(), **settings.to_dict(), "paper": PAPER}
        self.fingerprint = fingerprint(self.describe, self.kind, extra)
        self.seconds = 0.0

    def natural(self, examples: Dict[str, LayerExamples], units: Sequence[Tuple[str, int]]) -> Dict[str, NaturalScores]:
        t0 = time.perf_counter()
        out = natural_examples(examples, units, self.similarity, self.settings)
        self.seconds += time.perf_counter() - t0
        return out

    def synthetic(self, found: Dict[str, NaturalScores], folder: str,
                  records: Optional[Sequence[dict]]) -> Dict[Tuple[str, int], UnitScores]:
        t0 = time.perf_counter()
        out = synthetic_examples(found, self.similarity, self.settings, folder=folder, records=records or [],
                                 kind=self.kind, channels=self.channels)
        self.seconds += time.perf_counter() - t0
        return out

    def __call__(self, examples: Dict[str, LayerExamples], units: Sequence[Tuple[str, int]], folder: str,
                 records: Optional[Sequence[dict]]) -> Dict[Tuple[str, int], UnitScores]:
        return self.synthetic(self.natural(examples, units), folder, records)


# --------------------------------------------------------------------------- summaries


def median(values: Sequence[Optional[float]]) -> Optional[float]:
    """The median of the defined values, None when none is."""
    defined = [v for v in values if v is not None]
    return round(float(statistics.median(defined)), 6) if defined else None


@dataclass
class ScoreResult:
    """What :func:`cnnvis.interpretability` returns: one :class:`UnitScores` per unit, and how they were made."""

    model: str
    units: List[UnitScores]
    settings: ScoreSettings
    similarity: dict
    images: int
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    pictures: Optional[dict] = None

    def layers(self) -> Dict[str, dict]:
        out: Dict[str, dict] = {}
        for name in dict.fromkeys(u.layer for u in self.units):
            mine = [u for u in self.units if u.layer == name]
            nat = [u.natural.mis for u in mine]
            syn = [u.synthetic.mis for u in mine]
            both = [(a, b) for a, b in zip(nat, syn) if a is not None and b is not None]
            out[name] = {"units": len(mine), "natural_median": median(nat), "synthetic_median": median(syn),
                         "natural_defined": sum(v is not None for v in nat),
                         "synthetic_defined": sum(v is not None for v in syn),
                         "synthetic_at_least_natural": (round(sum(b >= a for a, b in both) / len(both), 6)
                                                        if both else None)}
        return out

    def to_dict(self) -> dict:
        return {"version": 1, "model": self.model, "method": {"name": "MIS", "paper": PAPER, **self.settings.to_dict()},
                "similarity": self.similarity, "images": self.images,
                "skipped": [{"path": p, "why": w} for p, w in self.skipped], "pictures": self.pictures,
                "layers": self.layers(), "units": [u.to_dict() for u in self.units]}

