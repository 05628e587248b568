"""Build a gallery folder: what ``cnnvis gallery`` and :func:`build_gallery` add to the one pipeline.

A gallery is a set of *units* ``(layer, filter)``. Their pictures go through the same plan,
chunks and store as ``cnnvis maximize`` (:mod:`cnnvis.atlas.runs`), so a gallery folder is a superset
of a maximize folder and ``cnnvis gallery`` renders a folder that ``cnnvis maximize`` filled.
What is gallery-specific lives here:

* the default layers (one per resolution stage, and the last convolution) and filters (the first 16);
* which pictures each unit gets: the positive one, and on request the negative, the neuron and
  K diverse ones; the pictures of the units a unit listens to most (its *strongest inputs*,
  :mod:`cnnvis.atlas.circuits`) and of a few class logits for the index;
* each layer's kernels (``kernels/<layer>/``);
* dataset examples: over an image set (``images``, or by default crops of the photographs that
  scikit-image and scikit-learn ship) each unit's ten strongest and ten weakest responses as
  receptive-field crops with the unit's saliency on each (:mod:`cnnvis.atlas.examples`), the unit's
  activation statistics and histogram, reused while the images' contents and the model's
  weights are unchanged;
* the ``gallery`` section of the store (written in the same transaction as a commit, so several
  shards' layers and units all end in it), and the site, drawn by the renderer the caller hands in.

Folder layout::

    records.sqlite, manifest.json           records (one per picture) + "model" + "gallery"; the export
    <layer>/<variant>/NNNN.png              the pictures, as cnnvis maximize writes them (no grid PNG)
    kernels/<layer>/filter-NNNN.png, shared-NNNN.png, values-<hash>.f32
    examples/<content hash>.webp|png       dataset examples (WebP) and their saliency (PNG), at the size shown, each once
    stats/stats.json, stats/<layer>-histogram.png, stats/<layer>-channels.png
    dreams/<layer>.webp                     a DeepDream of each layer (WebP: a photograph, not a measurement)
    index.html, layers/<layer>.html, units/<layer>/<filter>.html, static/
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from cnnvis.core.files import layer_file
from cnnvis.core.memory import release_freed_memory
from cnnvis.synthesis.objectives import UNIT_OBJECTIVES
from cnnvis.core.progress import duration, Progress
from cnnvis.atlas.store import Store, fingerprint, model_fingerprint
from cnnvis.atlas.analysis import add_scores, examine_units, inputs_entry, unit_key
from cnnvis.atlas.circuits import strongest_inputs
from cnnvis.atlas.layer_files import dream_file, kernel_images, kernel_values, write_dreams
from cnnvis.core.errors import CnnvisError, InputError
from cnnvis.atlas.scores import Scorer, ScoreSettings
from cnnvis.atlas.similarity import default_similarity, Similarity
from cnnvis.atlas.examples import ImageSet
from cnnvis.synthesis.health import measure_health, unit_health
from cnnvis.model.layers import parse_filter_spec, resolve_layers
from cnnvis.model.loading import load_model
from cnnvis.model.probing import list_layers, names_order, probe, stage_layers
from cnnvis.atlas.runs import (DEFAULT_BATCH, DEFAULT_RETRIES, execute_pool, STEP_PIXELS, ImageRequest, model_entry, parse_workers,
                         Plan, plan_images, Renderer)
from cnnvis.synthesis.settings import canvas_size, image_size, make_settings, Settings
from cnnvis.synthesis.units import Variant

DEFAULT_FILTERS = 16
#: The gallery's pictures by default (chosen with benchmarks/bench_quality.py; see the README).
DEFAULT_PRESET = "robust"
DEFAULT_OBJECTIVE = "channel-relu"
#: At most this many steps: a picture stops when its objective stops rising (``--steps`` sets one number for all).
DEFAULT_STEPS = Settings.steps
#: ... and at most this many for a picture of :data:`LARGE_PICTURE` pixels or more (efficientnet-lite0's deep layers
#: and class row at 224 px), whose steps cost the most: there 192 steps give the same responses as 256 on units
#: nobody tuned on, for 15-29% less CPU time; on smaller canvases (48 and 144 px) they lost up to 29% of a unit's
#: response, so those keep 256 (docs/performance.md).
LARGE_STEPS = 192
LARGE_PICTURE = 224 * 224
PRESET_CHOICES = ("robust", "maco", "plain", "both")
#: Dataset examples per unit at each end, strongest inputs per unit on each side, class pictures.
DEFAULT_EXAMPLES = 10
DEFAULT_INPUTS = 3
DEFAULT_CLASSES = 4
#: The side, in CSS pixels, at which a unit page shows a strongest input's picture (gallery.css ``.input img``):
#: those pictures are made at most this large.
INPUT_SIDE = 96

__all__ = ["GalleryRequest", "GallerySummary", "build_gallery", "choose_filters", "gallery_layers"]


@dataclass(frozen=True)
class GalleryRequest:
    """Everything a gallery build decides (what ``cnnvis gallery``'s options fill in).

    Args:
        layers: layer specs; default one representative layer per resolution stage and the last
            convolution (:func:`gallery_layers`).
        filters: the first N filters of each layer, or a spec (``0-7,12``, ``all``).
        preset: ``robust``, ``maco``, ``plain`` or ``both`` (robust and plain); ``steps``/``size``/
            ``lr`` override the preset.
        objective: ``channel-relu`` (the positive response after the layer's batch norm, what the
            next layer sees), ``channel-l2`` (the textbook ``||h||_2``), ``channel-mean`` or ``neuron``.
        negative, neuron, diversity: more pictures per unit: the unit switched off, its centre
            position, and ``diversity`` distinct pictures (lucid's diversity term, ``diversity_weight``).
        images: image files/folders for the dataset examples and statistics; none: crops of the
            photographs bundled with scikit-image and scikit-learn (``examples=False``: no examples).
        top_k: dataset examples per unit at each end.
        inputs: strongest inputs per unit on each side (0: none), each with its own picture.
        classes: class pictures closing the index (the model's top classes on the image set; 0: none).
        skip_bad: skip image files that cannot be read (and say so) instead of stopping.
        shard: ``"i/n"``; default from ``RANK``/``WORLD_SIZE`` under torchrun, else everything.
        batch_size: units per optimisation batch (also the unit of sharding), or ``auto``.
        early_stop: stop a picture whose objective has reached a plateau.
        canvas: ``layer``: each layer's pictures at the scale of its units (a few receptive fields
            wide, :func:`cnnvis.synthesis.canvas_size`); ``input``: at the model's input size. ``size``
            overrides both.
        workers: local processes sharing the pictures' chunks (``auto``: one per CPU core).
        dreams: a DeepDream of each layer on one bundled photograph (scikit-image's ``chelsea``).
        render: write the HTML pages.
        score: each unit's interpretability scores (MIS, :mod:`cnnvis.atlas.scores`). None (the default):
            the natural-reference score when the similarity model is installed (it shares the dataset
            pass and costs about 3% of the main job), the synthetic one for units with a negative
            picture; True: also every unit's negative picture, and the similarity model is required;
            False: none.
        similarity: the similarity model (a model spec; default efficientnet-lite1, or lite0 for Lite1).
    """

    layers: Optional[Tuple[str, ...]] = None
    filters: Union[int, str] = DEFAULT_FILTERS
    preset: str = DEFAULT_PRESET
    objective: str = DEFAULT_OBJECTIVE
    steps: Optional[int] = None  # None: DEFAULT_STEPS, LARGE_STEPS for large pictures (steps_for)
    size: object = None
    lr: Optional[float] = None
    negative: bool = False
    neuron: bool = False
    diversity: int = 0
    diversity_weight: float = 1.0
    images: Tuple[str, ...] = ()
    examples: bool = True
    top_k: int = DEFAULT_EXAMPLES
    inputs: int = DEFAULT_INPUTS
    classes: int = DEFAULT_CLASSES
    skip_bad: bool = False
    seed: int = 0
    shard: Union[str, Tuple[int, int], None] = None
    force: bool = False
    batch_size: Union[int, str] = DEFAULT_BATCH
    retries: int = DEFAULT_RETRIES
    early_stop: bool = True
    canvas: str = "layer"
    workers: Union[int, str] = 1
    dreams: bool = True
    render: bool = True
    score: Optional[bool] = None
    similarity: Optional[str] = None

    def __post_init__(self):
        if self.canvas not in ("layer", "input"):
            raise InputError(f"--canvas must be layer or input, got {self.canvas!r}")
        if self.preset not in PRESET_CHOICES:
            raise InputError(f"--preset must be one of {', '.join(PRESET_CHOICES)}, got {self.preset!r}")
        if self.objective not in UNIT_OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(UNIT_OBJECTIVES)} for a gallery, got {self.objective!r}")
        for label, value in (("--top-k", self.top_k), ("--inputs", self.inputs), ("--classes", self.classes),
                             ("--diversity", self.diversity)):
            if int(value) < 0:
                raise InputError(f"{label} must be 0 or more, got {value}")


    @property
    def presets(self) -> Tuple[str, ...]:
        return ("robust", "plain") if self.preset == "both" else (self.preset,)

    def overrides(self) -> dict:
        out = {k: v for k, v in (("steps", self.steps), ("size", self.size), ("lr", self.lr)) if v is not None}
        if not self.early_stop:
            out["early_stop"] = False
        return out

    def sizes(self, lm, layers: Sequence[str]) -> Dict[str, Tuple[int, int]]:
        """Each layer's canvas (``input``: the model's input size; empty when ``size`` is given)."""
        if self.size is not None:
            return {}

        return {layer: canvas_size(lm, layer) if self.canvas == "layer" else tuple(lm.preprocessing.input_size())
                for layer in layers}

    def steps_for(self, lm, layers: Sequence[str], sizes: Optional[Dict[str, Tuple[int, int]]] = None) -> Dict[str, int]:
        """Each layer's steps at most, when ``steps`` is not given: :data:`DEFAULT_STEPS`, or :data:`LARGE_STEPS`
        where the layer's pictures (at its canvas, ``sizes`` from :meth:`sizes` when the caller has them, or
        ``size``) have :data:`LARGE_PICTURE` pixels or more."""
        if self.steps is not None:
            return {}
        request = ImageRequest(overrides=self.overrides(), sizes=self.sizes(lm, layers) if sizes is None else sizes)
        return {layer: _steps_of(image_size(lm, request.settings(self.presets[0], layer))) for layer in layers}

    def image_request(self, sizes: Optional[Dict[str, Tuple[int, int]]] = None,
                      steps: Optional[Dict[str, int]] = None) -> ImageRequest:
        """The pictures of the gallery's own units: the main ones and those asked for on top (``steps``:
        :meth:`steps_for`)."""
        first = self.presets[0]
        extra = []
        if self.negative or self.score:
            extra.append((self.objective, first, Variant(negative=True)))
        if self.neuron:
            extra.append(("neuron", first, Variant(normalised=True)))
        if self.diversity > 1:
            extra.append((self.objective, first, Variant(diversity=self.diversity,
                                                         diversity_weight=self.diversity_weight)))
        return ImageRequest(self.layers or (), self.filters, self.objective, self.presets, int(self.seed),
                            self.batch_size, int(self.retries), self.shard, bool(self.force), self.overrides(),
                            Variant(), tuple(extra), dict(sizes or {}), dict(steps or {}), grids=False)

    def linked_request(self, sizes: Optional[Dict[str, Tuple[int, int]]] = None,
                       steps: Optional[Dict[str, int]] = None) -> ImageRequest:
        """The pictures of the units other units listen to: the main picture only, as a thumbnail (half
        the canvas, at least 32 px and at most :data:`INPUT_SIDE`, the size a unit page shows it; half the
        steps of a picture of the layer, ``steps`` from :meth:`steps_for`), since there are about twice as many."""
        overrides = self.overrides()
        if self.steps is not None:
            overrides["steps"] = max(1, int(self.steps) // 2)
        halves = {layer: max(1, int(n) // 2) for layer, n in (steps or {}).items()}
        if "size" not in overrides:
            sizes = {layer: (_thumbnail_side(h), _thumbnail_side(w)) for layer, (h, w) in (sizes or {}).items()}
        return ImageRequest((), "all", self.objective, self.presets[:1], int(self.seed), self.batch_size,
                            int(self.retries), self.shard, bool(self.force), overrides, sizes=dict(sizes or {}),
                            layer_steps=halves, grids=False)

    def class_request(self, lm, classes: Sequence[int]) -> ImageRequest:
        """Class-logit pictures, made with the main preset at the model's input size."""
        overrides = self.overrides()
        if self.steps is None:
            settings = make_settings(self.presets[0], **overrides)
            overrides["steps"] = _steps_of(image_size(lm, settings))
        return ImageRequest((), list(classes), "class", self.presets[:1], int(self.seed), self.batch_size,
                            int(self.retries), self.shard, bool(self.force), overrides, grids=False)


def _steps_of(size) -> int:
    """A picture's steps at most by its size (the default, ``--steps`` not given)."""
    h, w = size
    return LARGE_STEPS if int(h) * int(w) >= LARGE_PICTURE else DEFAULT_STEPS


def _thumbnail_side(side: int) -> int:
    """A strongest input's picture side for a canvas side: half of it, a multiple of 8, within 32..INPUT_SIDE."""
    return min(INPUT_SIDE, max(32, (side // 2) // 8 * 8))


@dataclass(frozen=True)
class GallerySummary:
    out_dir: str
    units: int  # units in the gallery (its own layers)
    computed: int  # units that got a new picture or analysis from this call
    skipped: int  # this shard's units that were already finished
    shard: Tuple[int, int]
    pages: int  # pages rewritten
    seconds: float
    images_written: int = 0
    skipped_files: Tuple[Tuple[str, str], ...] = ()
    off: int = 0  # the gallery's units that are off-units (drawn switched off)
    flat: int = 0  # the gallery's units whose response does not vary


def choose_filters(spec, channels: int) -> List[int]:
    """A gallery's filters: a count N (the first N), or a spec like ``0-7,12`` / ``all``.

    Example:
        >>> choose_filters(16, 6), choose_filters("0-2,5", 6), choose_filters("4", 6)
        ([0, 1, 2, 3, 4, 5], [0, 1, 2, 5], [0, 1, 2, 3])
    """
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        n = int(spec)
        if n < 1:
            raise InputError(f"--filters {spec}: give a positive count, a spec like 0-7,12, or all")
        return list(range(min(n, channels)))
    return parse_filter_spec(spec, channels)


def gallery_layers(model) -> List[str]:
    """The default layers: one per resolution stage (:func:`cnnvis.model.probing.stage_layers`) and the last
    convolution with a spatial output, so the deepest layer shown is the network's last stage.

    Example:
        >>> import cnnvis
        >>> gallery_layers(cnnvis.load_model("lenet-digits"))
        ['conv1', 'conv2']
    """
    lm = load_model(model)
    names = stage_layers(lm)
    convs = {n for n, m in lm.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    spatial = [n for n, shape in probe(lm).check().order
               if n in convs and len(shape) == 3 and shape[1] * shape[2] > 1]
    if spatial and spatial[-1] not in names:
        names.append(spatial[-1])
    return names


def _layer_rows(lm, names: Sequence[str], filters) -> List[dict]:
    info = {row.name: row for row in list_layers(lm)}
    layers = []
    for name in names:
        row = info[name]
        if row.output_shape is None or len(row.output_shape) != 3:
            raise InputError(f"layer {name!r} has no spatial output ({row.type}); a gallery shows convolutional layers")
        chosen = choose_filters(filters, row.channels) if not isinstance(filters, list) else sorted(filters)
        layers.append({"name": name, "type": row.type, "channels": row.channels,
                       "output_shape": list(row.output_shape), "filters": chosen})
    return layers


def _request_from(options: dict) -> GalleryRequest:
    known = {f.name for f in fields(GalleryRequest)}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown gallery option(s): {', '.join(sorted(unknown))}")
    if options.get("layers") is not None:
        options["layers"] = tuple(options["layers"])
    options["images"] = tuple(options.get("images") or ())
    return GalleryRequest(**options)


class _Reporter:
    """Progress over the whole build (in pictures, examples counted as one picture per unit) and one
    line per finished phase (``log``) with the time left. The time left is estimated from the work done
    so far weighed by what it costs (a picture by its pixels and steps, :meth:`cnnvis.atlas.runs.Plan.cost`;
    a unit's examples as :data:`EXAMPLES_COST` pictures at 224 px, fewer for a smaller input), at the pace
    since the work began (:meth:`begin`: loading the model and planning are not the pace of the work), so a
    run whose deep pictures come first does not promise hours for the small ones that follow, nor a
    ten-second run minutes."""

    def __init__(self, progress: Progress, log: Optional[Callable[[str], None]]):
        self.progress, self.log, self.t0 = progress, log, time.perf_counter()
        self.total, self.done = 0.0, 0.0
        self.work, self.finished, self.spent = 0.0, 0.0, 0.0  # in cost: all, finished work, and now
        self.started: Optional[float] = None  # when the work began (begin)
        self.examples_cost = EXAMPLES_COST  # a unit's examples, in pictures
        self.current: Optional[Tuple[float, float, List[float]]] = None  # the running phase: size, cost, fraction
        self.lock = threading.RLock()  # the examples finish on another thread while the pictures are drawn

    def begin(self, examples_cost: float) -> None:
        """The work begins now; a unit's examples cost ``examples_cost`` pictures."""
        self.started, self.examples_cost = time.perf_counter(), float(examples_cost)

    def phase(self, size: float, cost: float):
        """A progress callback for a phase of ``size`` pictures costing ``cost``; :meth:`end_phase` ends it.
        Work that :meth:`finish` counts meanwhile (the examples, on another thread) adds to it."""
        reached = [0.0]
        with self.lock:
            self.current = (float(size), float(cost), reached)

        def report(done, total):
            with self.lock:
                reached[0] = max(reached[0], min(1.0, done / total) if total else 1.0)
                self._moved()

        return report

    def end_phase(self, message: str = "") -> None:
        """The running phase is done: all of its pictures count, costing what it was given."""
        with self.lock:
            if self.current is not None:
                size, cost, _ = self.current
                self.current = None
                self.finish(size, message, cost)

    def _moved(self) -> None:
        size, cost, reached = self.current or (0.0, 0.0, [0.0])
        self.spent = max(self.spent, self.finished + cost * reached[0])
        if self.progress is not None and self.total:
            self.progress(min(self.total, self.done + size * reached[0]), self.total)

    def stamp(self) -> str:
        """The time so far and, while work remains, the time left at the pace so far: ``(79 s; about 4 min left)``."""
        now = time.perf_counter()
        elapsed, working = now - self.t0, now - (self.started or self.t0)
        left = ""
        if 0 < self.spent < self.work:
            left = f"; about {duration(working * (self.work - self.spent) / self.spent)} left"
        return f"({elapsed:.0f} s{left})"

    def job(self, job, records) -> None:
        """One line when a layer's pictures of one variant are all stored."""
        if self.log is not None:
            counts: Dict[str, int] = {}
            for r in records:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            off = sum(r.get("unit_kind") == "off" for r in records)
            more = f", {off} off-unit{'s' if off != 1 else ''}" if off and not job.kind.negative else ""
            more += "".join(f", {n} {status}" for status, n in sorted(counts.items()) if status != "ok")
            what = f"{job.variant} picture{'s' if len(records) != 1 else ''}"
            if job.kind.negative and not more:
                off = sum(r.get("unit_kind") == "off" for r in records)
                more = f" of {'an off-unit' if off == 1 else 'off-units'}" if off == len(records) else ""
            self.line(f"{job.layer}: {len(records)} {what}{more}")

    def say(self, message: str) -> None:
        """``message`` as it is, one line of the log."""
        if self.log is not None:
            with self.lock:
                self.log(message)

    def line(self, message: str) -> None:
        """``message`` and its stamp, one line of the log."""
        if self.log is not None:
            with self.lock:
                self.log(f"{message} {self.stamp()}")

    def finish(self, amount: float, message: str, cost: Optional[float] = None) -> None:
        """Work outside the running phase is done (a layer's examples): ``amount`` pictures costing ``cost``
        (default ``amount``)."""
        with self.lock:
            self.done += amount
            self.finished += amount if cost is None else cost
            self._moved()
            if message:
                self.line(message)


#: What a unit's analysis (its share of the dataset pass and of the natural scores, 20 crops' saliency and
#: their files) costs, in 224-px, 256-step pictures: measured on the main job, where it runs beside the
#: pictures at one thread (about 1.0 CPU second per unit, against 8.4 per 224-px, 256-step picture).
EXAMPLES_COST = 0.12


def build_gallery(model, out_dir: str, request: Optional[GalleryRequest] = None, *, progress: Progress = None,
                  log: Optional[Callable[[str], None]] = None, renderer: Optional[Renderer] = None,
                  **options) -> GallerySummary:
    """Compute what is missing for this shard's units, store it, and render the site with ``renderer``.

    ``renderer(folder, manifest)`` writes the pages and returns them (``cnnvis.build_gallery`` hands in
    :func:`cnnvis.gallery.render.render_site`; here, without one, only the records and files are written).

    ``request`` is a :class:`GalleryRequest`, or give its fields as keywords
    (``build_gallery(lm, "site", layers=["conv1"], filters=8, images=["digits/"])``).
    ``model`` is a spec, an ``nn.Module`` or a ``LoadedModel``. ``progress(done, total)`` counts the
    pictures and examples of this shard; ``log(line)`` gets one line per finished layer and phase.
    """
    t0 = time.perf_counter()
    if request is None:
        request = _request_from(options)
    elif options:
        raise TypeError("give a GalleryRequest or keyword options, not both")
    lm = load_model(model)
    names = resolve_layers(lm, list(request.layers)) if request.layers else gallery_layers(lm)
    if not names:
        raise InputError(f"{lm.name} has no convolution layers to show; pass layers with -l")
    layers = _layer_rows(lm, names, request.filters)
    store = Store(out_dir, force=request.force)
    store.read()  # a damaged manifest stops here, before any work
    model_fp = model_fingerprint(lm)
    reporter = _Reporter(progress, log)
    image_set = ImageSet(lm, request.images, enabled=bool(request.images) or request.examples,
                         skip_bad=request.skip_bad)  # the user's images or the built-in sample
    scorer = _scorer(lm, request, log) if image_set.enabled else None
    analysis_fp = (fingerprint(model_fp, image_set.fingerprint(), request.top_k, request.inputs, 5,
                               scorer.fingerprint if scorer else None) if image_set.enabled else None)

    # plan: the gallery's own pictures, the class row, the pictures of the units they listen to
    sizes = request.sizes(lm, names)
    main = plan_images(lm, request.image_request(sizes, request.steps_for(lm, names, sizes)), store, layers=names,
                       units={l["name"]: l["filters"] for l in layers})
    linked_layers, linked = _plan_linked(lm, request, store, layers)
    off_main = _plan_off(lm, main, store) if not (request.negative or request.score) else None
    off_linked = _plan_off(lm, linked, store) if linked is not None else None
    classes = image_set.top_classes(request.classes) if request.classes else []
    class_plan = plan_images(lm, request.class_request(lm, classes), store) if classes else None
    my_units = _shard_units(main)
    old_units = (store.read().get("gallery") or {}).get("units") or {}
    needs_analysis = [u for u in my_units if analysis_fp and (request.force or (old_units.get(unit_key(*u)) or {})
                                                             .get("analysis_fingerprint") != analysis_fp)]
    plans = [(p, label) for p, label in ((main, "pictures"), (off_main, "off-unit pictures"),
                                          (class_plan, "class pictures"), (linked, "pictures of strongest inputs"),
                                          (off_linked, "off-unit pictures of strongest inputs")) if p is not None]
    todo, costs = (list(x) for x in zip(*(p.remaining() for p, _ in plans))) if plans else ([], [])
    h, w = lm.preprocessing.input_size()
    reporter.begin(EXAMPLES_COST * max(h * w, STEP_PIXELS) / (224 * 224))
    reporter.total = float(sum(todo) + len(needs_analysis))
    reporter.work = float(sum(costs) + reporter.examples_cost * len(needs_analysis))
    if progress is not None:
        progress(0.0, reporter.total)

    # compute: the pictures on the workers; beside them, as they need none of the pictures, the kernels,
    # the dataset examples and their natural scores, the strongest inputs and the dreams
    rows = _merge_rows(layers, linked_layers, names)
    workers = parse_workers(request.workers, lm)
    found: dict = {}

    def beside() -> None:
        kernel_images(lm, store.folder, list(rows.values()), request.force)
        if needs_analysis:
            found["analysis"] = examine_units(lm, store, image_set, needs_analysis, analysis_fp, request.top_k,
                                              reporter, scorer)
        image_set.release()  # the dreams and the pages do without the crops
        release_freed_memory()
        found["inputs"] = ({u: inputs_entry(lm, u[0], u[1], request.inputs) for u in my_units}
                           if request.inputs > 0 else {})
        if request.dreams and main.shard[0] == 0:
            dreams = write_dreams(lm, store.folder, layers, model_fp, request.force)
            if dreams:
                reporter.say(f"DeepDream of {dreams} layers ({time.perf_counter() - reporter.t0:.0f} s)")

    def plan_done(p: int, summary) -> None:  # a phase's line once its last picture is stored
        plan, label = plans[p]
        if label != "pictures":
            reporter.line(_phase_line(plan, summary, label))

    # every phase's pictures in one queue, the costliest first: no core waits at the end of a phase
    image_set.release()  # the workers fork without the image set's crops
    summaries = execute_pool([plan for plan, _ in plans], workers, on_job=reporter.job, on_plan=plan_done,
                             progress=reporter.phase(sum(todo), sum(costs)), alongside=beside)
    reporter.end_phase()
    analysis, inputs = {}, found["inputs"]
    if needs_analysis:
        analysis = add_scores(store, reporter, scorer, *found["analysis"])
        release_freed_memory()

    # store the gallery section under the folder lock and render the pages from the merged manifest
    pages = [0]
    update = _gallery_update(lm, store.folder, rows, _settings_entry(lm, request, main, image_set, scorer), classes,
                             analysis, inputs, model_fp)

    def render(manifest):
        if request.render:
            pages[0] = len(renderer(store.folder, manifest)) if renderer is not None else 0

    if reporter.total or analysis or store.writable():
        store.commit([], update=update, after=render, export=True)
    if progress is not None:
        progress(reporter.total, reporter.total)
    done_now = {(r["layer"], r["filter"]) for r in summaries[0].records} | set(_analysis_units(analysis))
    kinds = _unit_kinds(main, store)
    return GallerySummary(store.folder, sum(len(l["filters"]) for l in layers), len(done_now),
                          len([u for u in my_units if u not in done_now]), main.shard, pages[0],
                          time.perf_counter() - t0, sum(s.written for s in summaries), tuple(image_set.skipped),
                          sum(k == "off" for k in kinds.values()), sum(k == "flat" for k in kinds.values()))


def _unit_kinds(main: Plan, store: Store) -> Dict[Tuple[str, int], str]:
    """Each gallery unit's kind (live, off, flat) as its main picture's record says."""
    wanted = {(job.layer, int(u), job.variant) for job in main.jobs if job.kind == Variant()
              for u in job.selection.filters}
    kinds = {}
    for rec in store.read().get("records") or []:
        key = (str(rec.get("layer")), int(rec.get("filter", -1)), str(rec.get("variant")))
        if key in wanted:
            kinds[key[:2]] = "flat" if rec.get("status") == "flat" else rec.get("unit_kind") or "live"
    return kinds


def _plan_linked(lm, request: GalleryRequest, store: Store, layers: List[dict]):
    """The layers and plan of the units the gallery's units listen to most (not already in the gallery)."""
    links = _links(lm, layers, request.inputs)
    own = {l["name"]: set(l["filters"]) for l in layers}
    links = [(s, c) for s, c in links if c not in own.get(s, ())]
    linked_layers = _layer_rows(lm, sorted({s for s, _ in links}, key=names_order(lm)), [])
    for row in linked_layers:
        row["filters"] = sorted({c for s, c in links if s == row["name"]})
    names = [r["name"] for r in linked_layers]
    if not names:
        return [], None
    sizes = request.sizes(lm, names)
    plan = plan_images(lm, request.linked_request(sizes, request.steps_for(lm, names, sizes)), store, layers=names,
                       units={r["name"]: r["filters"] for r in linked_layers})
    return linked_layers, plan


def _plan_off(lm, plan: Plan, store: Store) -> Optional[Plan]:
    """The negative pictures of ``plan``'s off-units (:mod:`cnnvis.synthesis.health`): what switches each of them off
    leads its tile and page. None when no unit of the plan is one."""
    from dataclasses import replace

    off: Dict[str, List[int]] = {}
    jobs = [job for job in plan.jobs
            if job.kind == Variant() and job.selection.objective == "channel-relu" and job.layer != "output"]
    measure_health(lm, [(job.selection, image_size(lm, job.settings)) for job in jobs])  # one pass per size
    for job in jobs:
        health = unit_health(lm, job.selection, image_size(lm, job.settings))
        units = [u for u in job.selection.filters if health.kind(u) == "off"]
        if units:
            off[job.layer] = sorted(set(off.get(job.layer, [])) | set(units))
    if not off:
        return None
    request = replace(plan.request, presets=plan.request.presets[:1], variant=Variant(negative=True), extra=())
    return plan_images(lm, request, store, layers=list(off), units=off)


def _merge_rows(layers: List[dict], linked_layers: List[dict], names: Sequence[str]) -> Dict[str, dict]:
    """One row per layer: a gallery layer's linked units join its own; the others are ``linked`` layers."""
    rows: Dict[str, dict] = {}
    for layer in layers + linked_layers:
        row = rows.setdefault(layer["name"], dict(layer, filters=[]))
        row["filters"] = sorted(set(row["filters"]) | set(layer["filters"]))
        row["linked"] = layer["name"] not in names
    return rows


def _gallery_update(lm, folder: str, rows: Dict[str, dict], settings: dict, classes: List[int], analysis: dict,
                    inputs: dict, model_fp: str):
    """What this build adds to the manifest's ``gallery`` section (run under the folder lock, so several
    shards' layers, linked units and analyses all end in it)."""

    def update(manifest):
        gallery = manifest.setdefault("gallery", {})
        gallery["settings"] = settings
        by_name = {l["name"]: l for l in gallery.get("layers") or []}
        for name, layer in rows.items():
            entry = _layer_entry(lm, folder, layer)
            old = by_name.get(name) or {}
            if entry.get("linked") and old.get("linked"):  # several shards each link their own units
                entry["filters"] = sorted(set(entry["filters"]) | set(old.get("filters") or []))
            by_name[name] = entry
        gallery["layers"] = [by_name[n] for n in sorted(by_name, key=names_order(lm))]
        if classes:
            gallery["classes"] = [{"index": c, "name": lm.class_name(c)} for c in classes]
        units = gallery.setdefault("units", {})
        for key, entry in analysis.items():
            units[key] = {**entry, "inputs": (units.get(key) or {}).get("inputs")}
        for (layer, f), entry in inputs.items():
            units.setdefault(unit_key(layer, f), {"layer": layer, "filter": f})["inputs"] = entry
        manifest.setdefault("model", model_entry(lm, model_fp))

    return update


def _phase_line(plan: Plan, summary, label: str) -> str:
    layers = list(dict.fromkeys(j.layer for j in plan.jobs))
    what = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    extra = f"; {summary.dead} dead" if summary.dead else ""
    extra += f"; {summary.flat} flat" if summary.flat else ""
    return f"{summary.written} {label} of {what} finished{extra}"


def _analysis_units(analysis: dict) -> List[Tuple[str, int]]:
    return [(v["layer"], int(v["filter"])) for v in analysis.values()]


def _shard_units(plan: Plan) -> List[Tuple[str, int]]:
    """The units this shard owns: those of its chunks of each layer's first variant."""
    first = {}
    for job in plan.jobs:
        first.setdefault(job.layer, job.variant)
    return sorted({(c.job.layer, u) for c in plan.mine if first[c.job.layer] == c.job.variant for u in c.units})


def _links(lm, layers: List[dict], k: int) -> List[Tuple[str, int]]:
    """(source layer, channel) of every strongest input of the gallery's units."""
    if k <= 0:
        return []
    out = set()
    for layer in layers:
        for f in layer["filters"]:
            try:
                s = strongest_inputs(lm, layer["name"], f, k=k)
            except InputError:
                break  # not a convolution: no weights to follow
            if s.source is not None:
                out |= {(s.source, link.channel) for link in s.excitatory + s.inhibitory}
    return sorted(out)


def _scorer(lm, request: GalleryRequest, log) -> Optional[Scorer]:
    """The scorer of this build, or None (``score=False``, or by default when the similarity model is missing)."""
    if request.score is False:
        return None
    try:
        similarity = Similarity(request.similarity or default_similarity(lm), device=lm.device)
    except CnnvisError as exc:
        if request.score:
            raise
        if log is not None:
            log(f"no interpretability scores: {exc}")
        return None
    return Scorer(similarity, ScoreSettings(seed=int(request.seed)), (request.objective, request.presets[0]),
                  lm.preprocessing.channels, (request.image_request().kinds(), request.canvas, request.size,
                                              request.overrides()))


def _settings_entry(lm, request: GalleryRequest, plan: Plan, image_set: ImageSet, scorer=None) -> dict:
    first = plan.jobs[0]
    primary = [j.variant for j in plan.jobs if j.kind == Variant()]
    return {"score": scorer.describe if scorer is not None else None,
            "preset": "+".join(request.presets), "objective": request.objective,
            "steps": max(j.settings.steps for j in plan.jobs),  # at most; per layer below
            "steps_by_layer": {j.layer: j.settings.steps for j in plan.jobs if j.kind == Variant()},
            "size": "×".join(map(str, image_size(lm, first.settings))), "seed": int(request.seed),
            "images": len(image_set.paths) if image_set.paths else ("sample" if image_set.enabled else 0),
            "variants": list(dict.fromkeys(primary + [n for j in plan.jobs for n in (j.names or (j.variant,))])),
            "early_stop": first.settings.early_stop}


def _layer_entry(lm, folder: str, layer: dict) -> dict:
    entry = {k: layer[k] for k in ("name", "type", "channels", "output_shape", "filters")}
    if layer.get("linked"):
        entry["linked"] = True
    where = f"kernels/{layer_file(layer['name'])}"
    for key, name in (("kernel_grid", "filters.png"), ("kernel_grid_shared", "filters-layer.png")):
        rel = f"{where}/{name}"
        entry[key] = rel if os.path.isfile(os.path.join(folder, rel)) else None
    for key, suffix in (("histogram", "histogram"), ("channel_chart", "channels")):
        rel = f"stats/{layer_file(layer['name'])}-{suffix}.png"
        entry[key] = rel if os.path.isfile(os.path.join(folder, rel)) else None
    entry["kernels"] = {str(f): f"{where}/filter-{f:04d}.png" for f in layer["filters"]
                        if os.path.isfile(os.path.join(folder, f"{where}/filter-{f:04d}.png"))}
    entry["kernels_shared"] = {str(f): f"{where}/shared-{f:04d}.png" for f in layer["filters"]
                               if os.path.isfile(os.path.join(folder, f"{where}/shared-{f:04d}.png"))}
    rel = dream_file(layer["name"])
    entry["dream"] = rel if os.path.isfile(os.path.join(folder, rel)) else None
    entry["weights"] = kernel_values(lm, folder, layer["name"], layer["filters"])
    return entry
