"""Units to pictures: selection, batching, natural starts, records and :func:`maximize`.

other filters share its batch (up to floating-point differences between batch sizes).

Example:
    >>> import cnnvis
    >>> from cnnvis.synthesis import maximize
    >>> lm = cnnvis.load_model("lenet-digits")
    >>> out = maximize(lm, "conv1", "0-1", steps=8, seed=0)
    >>> tuple(out.images.shape), [r["filter"] for r in out.records]
    ((2, 1, 32, 32), [0, 1])
    >>> all(r["objective_final"] > r["objective_initial"] for r in out.records)
    True
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch

from cnnvis._version import __version__
from cnnvis.core.errors import CnnvisError, InputError
from cnnvis.synthesis.health import unit_health
from cnnvis.core.progress import Progress
from cnnvis.core.display import grid_html, grid_png
from cnnvis.model.layers import parse_filter_spec, resolve_layers
from cnnvis.model.loading import load_model
from cnnvis.synthesis.objectives import ChannelRelu, Diverse, make_objective, Objective, OUTPUT
from cnnvis.model.probing import layer_before, pre_activation, probe, unit_output
from cnnvis.atlas.store import variant_name
from cnnvis.synthesis.ascent import Synthesis, synthesize
from cnnvis.synthesis.settings import Settings, field_settings, image_size, make_settings, unit_seed


@dataclass(frozen=True)
class Selection:
    """The units one layer contributes to a run: the layer, the objective kind, the layer's channel
    count and the chosen units (channels, or class indices for ``class``)."""

    layer: str
    objective: str
    channels: int
    filters: Tuple[int, ...]
    class_names: Tuple[Optional[str], ...] = ()
    reads: Optional[str] = None  # the module the objective reads, when not ``layer``: the unit's response
    before: Optional[str] = None  # the unit's response before its activation (what a negative picture lowers)
    previous: Optional[str] = None  # the output the layer reads (where diverse pictures are pushed apart)

    def objective_for(self, units: Sequence[int], variant: Optional["Variant"] = None, scale: float = 0.0) -> Objective:
        """The objective of these units: one batch element per unit, or ``variant.copies`` per unit
        (element-major: the copies of a unit are neighbours), with the variant's sign and diversity."""
        variant = variant or Variant()
        k = variant.copies
        rows = [int(u) for u in units for _ in range(k)]
        where = self.reads or self.layer
        if variant.negative and self.objective == "channel-relu":  # below the activation's floor: before it
            base: Objective = ChannelRelu(self.before or where, rows, negative=True)
        elif self.objective == "channel-relu":
            base = ChannelRelu(where, rows, through=self.before)
        else:
            base = make_objective(self.objective, where, rows)
            base = -base if variant.negative else base
        if k > 1:
            groups = [i for i in range(len(units)) for _ in range(k)]
            base = Diverse(base, variant.diversity_layer or self.previous or where, groups, variant.diversity_weight,
                           scale, DIVERSITY_KEEP)
        return base


#: A diverse picture whose objective falls below this share of its group's best stops being pushed apart
#: (chosen by measurement, with the default weight 1; see docs/techniques.md).
DIVERSITY_KEEP = 0.75


@dataclass(frozen=True)
class Variant:
    """How a unit's pictures differ beyond the objective and the settings.

    ``negative``: the unit switched off as strongly as possible (``channel-relu``: the positive part
    of ``-h``; other objectives: minimised). ``diversity`` K > 1: K pictures per unit, optimised
    together with lucid's diversity term (see :class:`cnnvis.synthesis.objectives.Diverse`), each recorded
    with its index. ``normalised``: read the unit after its batch norm (as ``channel-relu`` does).
    """

    negative: bool = False
    diversity: int = 1
    diversity_weight: float = 1.0
    diversity_layer: Optional[str] = None
    normalised: bool = False

    def __post_init__(self):
        if int(self.diversity) < 1:
            raise InputError(f"--diversity must be 1 or more, got {self.diversity}")
        if not math.isfinite(self.diversity_weight) or self.diversity_weight < 0:
            raise InputError(f"--diversity-weight must be a finite number >= 0, got {self.diversity_weight}")

    @classmethod
    def of(cls, variant: Optional["Variant"], options: dict) -> "Variant":
        """``variant``, or one made of this class's fields taken out of ``options`` (never both)."""
        given = {f: options.pop(f) for f in ("negative", "diversity", "diversity_weight") if f in options}
        if variant is not None and given:
            raise InputError(f"give either variant= or {', '.join(sorted(given))}, not both")
        return variant if variant is not None else cls(**given)

    @property
    def copies(self) -> int:
        return max(1, int(self.diversity))

    def names(self, objective: str, preset: str) -> List[str]:
        """The record variant of each copy (one name unless diversity)."""
        return [variant_name(objective, preset, negative=self.negative, diversity=self.copies, index=k)
                for k in range(self.copies)]

    def seed_parts(self, copy: int) -> tuple:
        """What sets this variant's seeds apart from the plain picture's (nothing for the plain one)."""
        parts: tuple = ("negative",) if self.negative else ()
        return parts + (("diverse", self.copies, copy) if self.copies > 1 else ())


def select_units(lm, layer: Optional[str], filters="all", objective: str = "channel-l2",
                 settings: Optional[Settings] = None, *, normalised: bool = False) -> Selection:
    """Check a request against the model and list its units: resolves the layer, checks that the
    filters exist (the error names the layer's channel count) and that the objective fits.

    For ``objective="class"`` the filters are class indices or names (``[18, "magpie"]``) of the
    model's output (or of ``layer``'s output when given).
    """
    settings = settings or make_settings()
    kind = str(objective).lower().replace("_", "-")
    make_objective(kind, layer or OUTPUT, 0)  # validates the name
    if layer:
        names = resolve_layers(lm, [layer])
        if len(names) != 1:
            raise InputError(f"layer {layer!r} matches {len(names)} layers ({', '.join(names[:4])}, …); give one")
        layer = names[0]
    elif kind in ("class", "class-logit"):
        layer = OUTPUT
    else:
        raise InputError(f"objective {kind} needs a layer: pass -l LAYER")
    found = probe(lm, image_size(lm, settings))
    out = found.shape(layer)
    where = "the model's output" if layer == OUTPUT else f"layer {layer}"
    if out is None:
        raise InputError(f"{where} did not run in the forward pass (or produces no tensor); pick another layer")
    if len(out) < 1:
        raise InputError(f"{where} has no channel dimension (output shape {out}); pick another layer")
    channels = out[0]
    if kind == "channel-l2" and len(out) < 3:
        raise InputError(
            f"channel-l2 maximises the L2 norm of a channel's activation map, but {where} has no spatial "
            f"output (shape {'x'.join(map(str, out))} per image): use --objective neuron or channel-mean, "
            f"or a convolutional layer"
        )
    names: Tuple[Optional[str], ...] = ()
    if kind in ("class", "class-logit"):
        chosen = _class_indices(lm, filters, channels)
        if layer == OUTPUT:
            names = tuple(lm.class_name(i) for i in chosen)
        kind = "class"
    else:
        try:
            chosen = parse_filter_spec(filters, channels)
        except InputError as exc:
            raise InputError(str(exc).replace("this layer", where)) from None
        if channels and not chosen:
            raise InputError(f"no filters chosen; {where} has {channels} channels (0..{channels - 1})")
    reads = before = previous = None
    if layer != OUTPUT:
        previous = layer_before(found, layer)
    if (kind == "channel-relu" or normalised) and layer != OUTPUT:
        reads, before = unit_output(found, layer), pre_activation(found, layer)
        reads = None if reads == layer else reads
        before = None if before == (reads or layer) else before
    return Selection(layer, kind, channels, tuple(chosen), names, reads, before, previous)


def _class_indices(lm, filters, channels: int) -> List[int]:
    if isinstance(filters, (list, tuple)):
        chosen = [lm.class_index(f) for f in filters]
        bad = [i for i in chosen if not 0 <= i < channels]
        if bad:
            raise InputError(f"class {bad[0]} is out of range: the model has {channels} outputs (0..{channels - 1})")
        return list(dict.fromkeys(chosen))
    return parse_filter_spec(filters, channels)


#: Filters per batch on a CPU (and the fixed chunk that shards deal out): batching does not make an
#: image cheaper on a CPU (see PERF-NOTES), so memory and latency decide.
CPU_BATCH = 8
#: Pixels of the pictures a CPU batch optimises at once: four 224-px pictures. A batch's activations and
#: gradients grow with its pixels (about 0.2 GB per 224-px picture through efficientnet-lite0's middle),
#: so a chunk of 224-px pictures runs as two batches of four (as fast, and the same pictures: every picture
#: has its own seeds; some CPUs round a last bit differently for another batch size); smaller pictures run
#: the whole chunk at once.
CPU_BATCH_PIXELS = 4 * 224 * 224


def cpu_batch(size, units: int, copies: int = 1) -> int:
    """Units of ``size`` (height, width) pictures, ``copies`` each, that one CPU batch optimises at once:
    at most ``units``, at most :data:`CPU_BATCH_PIXELS` pixels, at least one unit.

    Example:
        >>> cpu_batch((224, 224), 8), cpu_batch((144, 144), 8), cpu_batch((224, 224), 8, copies=4)
        (4, 8, 1)
    """
    h, w = (int(v) for v in size)
    return max(1, min(int(units), CPU_BATCH_PIXELS // max(1, h * w * int(copies))))


def auto_batch_size(lm, selection: Selection, settings: Settings, *, seed: int = 0) -> int:
    """How many filters to optimise at once: on CUDA what fits 80% of the free memory (measured
    with a one-step run of two images), on a CPU :data:`CPU_BATCH`."""
    n = len(selection.filters)
    device = lm.device
    if device.type != "cuda" or n <= 2:
        return max(1, min(n, CPU_BATCH))
    probe_settings = replace(settings, steps=1, retries=0)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    synthesize(lm, selection.objective_for(selection.filters[:2]), [seed, seed + 1], probe_settings)
    per_image = max(1, (torch.cuda.max_memory_allocated(device) - base) // 2)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(n, 1024, (0.8 * free) // per_image)))


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, MemoryError) or (oom and isinstance(exc, oom)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def seeds_for(seed: int, selection: Selection, units: Sequence[int], variant: Optional[Variant] = None) -> List[int]:
    """Each picture's own seed: from the run's seed, the layer, the objective, the unit (and the
    variant's copy), so an image does not depend on which other units share its batch."""
    variant = variant or Variant()
    return [unit_seed(seed, selection.layer, selection.objective, f, *variant.seed_parts(k))
            for f in units for k in range(variant.copies)]


def run_units(
    lm,
    selection: Selection,
    settings: Settings,
    *,
    seed: int = 0,
    batch_size: Union[int, str] = "auto",
    units: Optional[Sequence[int]] = None,
    progress: Progress = None,
    variant: Optional[Variant] = None,
) -> Iterator[Tuple[List[int], List[Synthesis], float]]:
    """Optimise ``units`` (default: all of the selection's) batch by batch.

    Yields ``(units, results, seconds)`` as each batch finishes; ``results`` has ``variant.copies``
    pictures per unit, element-major. A batch that runs out of memory is retried in halves (the
    copies of a unit stay together). ``progress(done, total)`` counts unit-steps.
    """
    variant = variant or Variant()
    todo = list(selection.filters if units is None else units)
    if not todo:
        return
    if batch_size in (None, "auto"):
        batch_size = auto_batch_size(lm, selection, settings, seed=seed)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise InputError(f"--batch-size must be a positive number or auto, got {batch_size}")
    steps = max(settings.steps, 1)
    total = len(todo) * steps
    done = 0

    def one(chunk):
        nonlocal done
        floor = 1e-3 * unit_health(lm, selection, image_size(lm, settings)).scale if variant.copies > 1 else 0.0
        objective = selection.objective_for(chunk, variant, floor)
        start = done
        tick = None if progress is None else (lambda step, n: progress(start + len(chunk) * step * steps / max(n, 1), total))
        t0 = time.perf_counter()
        try:
            results = synthesize(lm, objective, seeds_for(seed, selection, chunk, variant), settings, progress=tick)
            health = unit_health(lm, selection, image_size(lm, settings))
            results = [health.judge(u, r) for u, r in zip([u for u in chunk for _ in range(variant.copies)], results)]
        except Exception as exc:
            if not _is_oom(exc):
                raise
            if len(chunk) == 1:
                if variant.copies > 1:
                    raise CnnvisError(
                        f"out of memory with one filter's {variant.copies} diverse pictures in one batch (the diversity "
                        f"term compares them, so they run together); try a smaller --diversity or --size") from None
                raise CnnvisError("out of memory with one filter at a time; try a smaller --size") from None
            if lm.device.type == "cuda":
                torch.cuda.empty_cache()
            half = (len(chunk) + 1) // 2
            yield from one(chunk[:half])
            yield from one(chunk[half:])
            return
        done = start + len(chunk) * steps
        yield list(chunk), results, time.perf_counter() - t0

    for k in range(0, len(todo), batch_size):
        yield from one(todo[k : k + batch_size])


def _torchvision_version() -> Optional[str]:
    """torchvision's ``__version__`` (local build tag included, e.g. ``0.29.1+cu130``), read from its
    ``version.py`` without importing it: the import loads its compiled operators, about 170 MB a process."""
    import importlib.util
    import re

    module = sys.modules.get("torchvision")
    if module is not None:
        return module.__version__
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        try:
            with open(os.path.join(folder, "version.py"), encoding="utf-8") as f:
                found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
        except OSError:
            continue
        if found:
            return found.group(1)
    import torchvision  # an unusual layout: ask the package itself

    return torchvision.__version__


def library_versions() -> dict:
    """Versions that decide the pixels: cnnvis, torch, torchvision, numpy, Pillow, Python."""
    import platform

    import numpy
    import PIL

    return {
        "cnnvis": __version__,
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def make_record(lm, selection: Selection, unit: int, result: Synthesis, settings: Settings, *, seed: int,
                seconds: float, batch_size: int, variant: Optional[str] = None) -> dict:
    """The record of one image (the store adds ``image`` and ``fingerprint``)."""
    h, w = image_size(lm, settings)
    rec = {
        "layer": "output" if selection.layer == OUTPUT else selection.layer,
        "filter": int(unit),
        "variant": variant or variant_name(selection.objective, settings.preset),
        "objective": selection.objective,
        "objective_layer": selection.reads or ("output" if selection.layer == OUTPUT else selection.layer),
        "preset": settings.preset,
        "status": result.status,
        "reason": result.reason,
        "dead": result.dead,
        "attempts": result.attempts,
        "natural_start": result.natural_start,
        "stopped_at": result.stopped_at,
        "stop_reason": result.stop_reason,
        "objective_initial": result.objective_initial,
        "objective_final": result.objective_final,
        "loss_curve": [float(f"{v:.5g}") for v in result.curve],  # 5 digits: the manifest stays small
        "seed": int(seed),
        "unit_seed": result.seed,
        "steps": settings.steps,
        "lr": settings.lr,
        "size": [h, w],
        "settings": settings.to_dict(),
        "channels": lm.preprocessing.channels,
        "layer_channels": selection.channels,
        "model": lm.name,
        "weights": lm.weights,
        "device": str(lm.device),
        "batch_size": int(batch_size),
        "seconds": round(float(seconds), 4),
        "versions": library_versions(),
    }
    if result.unit_kind:
        rec["unit_kind"] = result.unit_kind
    if result.unit_note:
        rec["unit_note"] = result.unit_note
    if selection.objective == "class":
        names = dict(zip(selection.filters, selection.class_names)) if selection.class_names else {}
        rec["class_name"] = names.get(unit)
    return rec


@dataclass(frozen=True)
class Maximization:
    """What :func:`maximize` returns: the pictures (C x H x W in [0, 1]) and one record per picture.

    In a notebook it shows itself: ``_repr_png_`` is the grid of pictures, ``_repr_html_`` the
    grid with each picture's unit (and variant) under it.
    """

    selection: Selection
    settings: Settings
    results: Tuple[Synthesis, ...]
    records: Tuple[dict, ...] = field(default=())

    @property
    def images(self) -> torch.Tensor:
        return torch.stack([r.image for r in self.results])

    def labels(self) -> List[str]:
        """A caption per picture: the unit (class name), the copy for diverse pictures, the status."""
        out = []
        for rec in self.records:
            label = f"{rec['layer']} · {rec['filter']}"
            if rec.get("class_name"):
                label += f" ({rec['class_name']})"
            if rec.get("diversity"):
                label += f" #{rec['diversity_index']}"
            if rec.get("negative"):
                label += " negative"
            if rec.get("status") not in (None, "ok"):
                label += f" [{rec['status']}]"
            out.append(label)
        return out

    def _repr_png_(self) -> bytes:
        return grid_png(list(self.images))

    def _repr_html_(self) -> str:
        return grid_html(list(self.images), self.labels())


def maximize(
    model,
    layer: Optional[str] = None,
    filters="all",
    *,
    objective: str = "channel-l2",
    preset: str = "plain",
    seed: int = 0,
    batch_size: Union[int, str] = "auto",
    progress: Progress = None,
    variant: Optional[Variant] = None,
    **overrides,
) -> Maximization:
    """Maximum-response images of ``filters`` of ``layer``; returns images and records, writes nothing.

    Args:
        model: a model spec, an ``nn.Module`` or a :class:`cnnvis.LoadedModel`.
        layer: the layer (dotted name); optional for ``objective="class"`` (the model's output).
        filters: ``"all"``, ``"0-7"``, ``"3,5"``, a list; class indices or names for ``class``.
        objective: ``channel-l2`` (``||h_l,d(x)||_2``), ``channel-mean``, ``channel-relu`` (the
            positive response after the layer's batch norm), ``neuron`` (the centre unit) or
            ``class``. For composed objectives call :func:`synthesize` directly.
        preset: ``plain``, ``robust`` or ``maco``; ``overrides`` set any :class:`Settings` field
            (``steps``, ``lr``, ``size``, ``retries``, ``normalize_grad``, ``clamp``, …). On a layer
            whose receptive field is a few pixels, robust and maco optimise every pixel directly
            (:func:`field_settings`).
        variant: which pictures of each filter (:class:`Variant`); or give its fields as keywords:
            ``negative=True`` the filter switched off instead, ``diversity=K`` K pictures per filter
            with lucid's diversity term, ``diversity_weight`` its strength.
        batch_size: filters per batch, or ``auto``.
        progress: ``progress(done, total)`` in filter-steps.

    Example:
        >>> import cnnvis
        >>> out = maximize("lenet-digits", "conv1", "0-1", steps=4, diversity=2)
        >>> tuple(out.images.shape), out.labels()
        ((4, 1, 32, 32), ['conv1 · 0 #0', 'conv1 · 0 #1', 'conv1 · 1 #0', 'conv1 · 1 #1'])
    """
    lm = load_model(model)
    variant = Variant.of(variant, overrides)
    settings = make_settings(preset, **overrides)
    selection = select_units(lm, layer, filters, objective, settings)
    settings = field_settings(lm, selection.layer, settings, keep=[k for k, v in overrides.items() if v is not None])
    names = variant.names(selection.objective, settings.preset)
    results, records = [], []
    for chunk, batch, seconds in run_units(lm, selection, settings, seed=seed, batch_size=batch_size,
                                           progress=progress, variant=variant):
        pictures = [(f, k) for f in chunk for k in range(variant.copies)]
        for (f, k), r in zip(pictures, batch):
            results.append(r)
            rec = make_record(lm, selection, f, r, settings, seed=seed, seconds=seconds / len(batch),
                              batch_size=len(batch), variant=names[k])
            if variant.negative:
                rec["negative"] = True
            if variant.copies > 1:
                rec.update(diversity=variant.copies, diversity_index=k, diversity_weight=variant.diversity_weight)
            records.append(rec)
    return Maximization(selection, settings, tuple(results), tuple(records))
