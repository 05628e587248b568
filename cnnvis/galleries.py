"""Build a gallery folder: the work plan of ``cnnvis gallery`` and :func:`build_gallery`.

A gallery is a set of *units* ``(layer, filter)``. For each unit cnnvis computes what it can —
maximum-response image(s) (one per preset), the kernel, activation statistics and the
top-activating images with the unit's saliency on each (when an image set is given) — and
records it in ``records/<layer>/<filter>.json``. A unit is finished when its record matches
the current settings and its files exist, so a re-run computes only what is missing (``force``
redoes everything). Files are written atomically, a batch at a time.

Sharding: each layer's filters are cut into fixed chunks of ``batch_size`` (the unit of one
optimisation batch); chunk ``k`` (counted over all layers) belongs to shard ``k mod n``. Every
shard optimises exactly the same batches as an unsharded run, so several processes or
machines writing into one folder produce the same files. After its work a shard merges every
record on disk into ``manifest.json`` and renders the site (:mod:`cnnvis.gallery.render`).

Folder layout::

    manifest.json                     what the renderer reads (model, settings, layers, units)
    records/<layer>/<filter>.json     one per finished unit
    maximize/<layer>/<preset>/NNNN.png
    kernels/<layer>/filter-NNNN.png, filters.png, weight.npy
    stats/stats.json, stats/<layer>-histogram.png, …   (with images)
    inputs/<id>.png, saliency/<layer>/<filter>-<k>.png  (with images)
    index.html, layers/<layer>.html, units/<layer>/<filter>.html, static/
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union


from cnnvis.errors import InputError
from cnnvis.gallery.render import page_name
from cnnvis.io import read_json, safe_name, save_json, save_png

DEFAULT_FILTERS = 16
DEFAULT_BATCH = 8
#: Restarts from fresh (stronger) noise for a filter that is dead for the first start: the
#: robust preset starts near grey, which leaves many deep channels at exactly zero.
DEFAULT_RETRIES = 3
PRESET_CHOICES = ("robust", "plain", "both")
OBJECTIVES = ("channel-l2", "channel-mean", "neuron")

Progress = Optional[Callable[[int, int], None]]


def parse_shard(spec: Union[str, Tuple[int, int], None]) -> Tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> ``(i, n)``; ``None`` -> ``RANK``/``WORLD_SIZE`` under torchrun, else (0, 1).

    Example:
        >>> parse_shard("1/4"), parse_shard(None)
        ((1, 4), (0, 1))
    """
    if spec is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is not None and world is not None:
            return parse_shard(f"{rank}/{world}")
        return (0, 1)
    if isinstance(spec, tuple):
        i, n = spec
    else:
        try:
            i, n = (int(p) for p in str(spec).split("/"))
        except ValueError:
            raise InputError(f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {i}/{n}: need 0 <= i < n")
    return (i, n)


def choose_filters(spec, channels: int) -> List[int]:
    """A gallery's filters: a count N (the first N), or a spec like ``0-7,12`` / ``all``."""
    from cnnvis.layers import parse_filter_spec

    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        n = int(spec)
        if n < 1:
            raise InputError(f"--filters {spec}: give a positive count, a spec like 0-7,12, or all")
        return list(range(min(n, channels)))
    return parse_filter_spec(spec, channels)


@dataclass(frozen=True)
class GallerySummary:
    out_dir: str
    units: int  # units in the gallery
    computed: int  # units (re)computed by this call
    skipped: int  # this shard's units that were already finished
    shard: Tuple[int, int]
    pages: int  # pages rewritten
    seconds: float


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _exists(out_dir: str, rel: Optional[str]) -> bool:
    return bool(rel) and os.path.isfile(os.path.join(out_dir, rel))


class _Plan:
    """Everything one build decides before computing: layers, units, chunks, fingerprints."""

    def __init__(self, lm, out_dir, layers, filters, presets, overrides, images, seed, shard, batch_size, top_k,
                 objective="channel-l2"):
        from cnnvis.layers import list_layers, resolve_layers, stage_layers
        from cnnvis.synthesis import make_settings, plan

        self.lm, self.out_dir, self.seed, self.top_k = lm, out_dir, seed, top_k
        names = resolve_layers(lm, layers) if layers else stage_layers(lm)
        if not names:
            raise InputError(f"{lm.name} has no convolution layers to show; pass layers with -l")
        info = {row.name: row for row in list_layers(lm)}
        self.settings = {p: make_settings(p, **overrides) for p in presets}
        self.layers: List[dict] = []
        self.targets: Dict[Tuple[str, str], object] = {}
        for name in names:
            row = info[name]
            if row.output_shape is None or len(row.output_shape) != 3:
                raise InputError(f"layer {name!r} has no spatial output ({row.type}); a gallery shows convolutional layers")
            chosen = choose_filters(filters, row.channels)
            for p, s in self.settings.items():
                self.targets[(name, p)] = plan(lm, name, chosen, objective, s)
            self.layers.append({"name": name, "type": row.type, "channels": row.channels,
                                "output_shape": list(row.output_shape), "filters": chosen})
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {batch_size}")
        self.chunks: List[Tuple[str, List[int]]] = []
        for layer in self.layers:
            f = layer["filters"]
            self.chunks += [(layer["name"], f[k : k + self.batch_size]) for k in range(0, len(f), self.batch_size)]
        self.shard = shard
        self.mine = [c for k, c in enumerate(self.chunks) if k % shard[1] == shard[0]]
        self.images = sorted(images) if images else []
        from cnnvis.runs import fingerprint

        self.maximize_fp = {key: fingerprint(lm, t, self.settings[key[1]], seed) for key, t in self.targets.items()}
        self.analysis_fp = _hash([lm.name, lm.weights, self.images, [os.path.getsize(p) for p in self.images], top_k])

    def record_path(self, layer: str, f: int) -> str:
        return os.path.join(self.out_dir, "records", page_name(layer), f"{f}.json")

    def needs(self, rec: dict, layer: str) -> Dict[str, bool]:
        """Which parts of a unit (its record so far, ``{}`` if none) still need computing."""
        todo = {}
        for p in self.settings:
            have = (rec.get("images") or {}).get(p) or {}
            todo[p] = not (have.get("fingerprint") == self.maximize_fp[(layer, p)] and _exists(self.out_dir, have.get("image")))
        todo["analysis"] = bool(self.images) and rec.get("analysis_fingerprint") != self.analysis_fp
        return todo


def build_gallery(
    model,
    out_dir: str,
    *,
    layers: Optional[Sequence[str]] = None,
    filters: Union[int, str] = DEFAULT_FILTERS,
    preset: str = "robust",
    objective: str = "channel-l2",
    steps: Optional[int] = None,
    size=None,
    images: Optional[Sequence[str]] = None,
    seed: int = 0,
    shard=None,
    force: bool = False,
    batch_size: int = DEFAULT_BATCH,
    retries: int = DEFAULT_RETRIES,
    top_k: int = 4,
    render: bool = True,
    progress: Progress = None,
) -> GallerySummary:
    """Compute what is missing for this shard's units, record it, merge every record and render.

    Args:
        model: a :class:`cnnvis.LoadedModel` or a model spec.
        layers: layer specs; default one representative layer per resolution stage
            (:func:`cnnvis.layers.stage_layers`).
        filters: the first N filters of each layer, or a spec (``0-7,12``, ``all``).
        preset: ``robust``, ``plain`` or ``both``; ``steps``/``size`` override the preset.
        objective: ``channel-l2`` (the textbook ``||h||_2``), ``channel-mean`` or ``neuron``.
        retries: restarts of a filter that is dead for its starting noise (see ``cnnvis maximize``).
        images: image files/folders for statistics, top-activating images and saliency.
        shard: ``"i/n"``; default from ``RANK``/``WORLD_SIZE`` under torchrun, else the whole gallery.
        progress: ``progress(done, total)`` in units of this shard; ``done`` moves in fractions of a
            unit while a batch optimises.
    """
    from cnnvis.models import load_model

    t0 = time.perf_counter()
    lm = load_model(model)
    if preset not in PRESET_CHOICES:
        raise InputError(f"--preset must be one of {', '.join(PRESET_CHOICES)}, got {preset!r}")
    presets = ("robust", "plain") if preset == "both" else (preset,)
    image_files = None
    if images:
        from cnnvis.io import find_images

        image_files = find_images(list(images))
    overrides = {"steps": steps, "size": size, "retries": retries}
    if objective not in OBJECTIVES:
        raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)} for a gallery, got {objective!r}")
    plan = _Plan(lm, out_dir, layers, filters, presets, overrides, image_files, seed, parse_shard(shard), batch_size,
                 top_k, objective)
    os.makedirs(out_dir, exist_ok=True)
    records = {(layer, f): {} if force else read_json(plan.record_path(layer, f), default=None) or {}
               for layer, chunk in plan.mine for f in chunk}
    todo = {unit: plan.needs(rec, unit[0]) for unit, rec in records.items()}
    pending = [u for u, parts in todo.items() if any(parts.values())]
    total = len(todo)
    done = total - len(pending)
    if progress is not None:
        progress(done, total)

    stats = _analysis(plan, force) if plan.images and any(p["analysis"] for p in todo.values()) else None
    _layer_files(plan, force)
    computed = 0
    for layer, chunk in plan.mine:
        units = [f for f in chunk if any(todo[(layer, f)].values())]
        if not units:
            continue
        chunk_records = {f: records[(layer, f)] for f in units}
        runs = [p for p in presets if any(todo[(layer, f)][p] for f in units)]
        for k, p in enumerate(runs):
            wanted = [f for f in units if todo[(layer, f)][p]]

            def within(step, steps, k=k, base=done):  # fractions of this chunk's units, for a smooth bar
                if progress is not None:
                    progress(base + len(units) * (k + step / max(steps, 1)) / (len(runs) + 1), total)

            _maximize_chunk(plan, layer, p, chunk, wanted, chunk_records, within)
        for f in units:
            rec = chunk_records[f]
            rec.update({"layer": layer, "filter": f})
            if todo[(layer, f)]["analysis"] and stats is not None:
                rec.update(_unit_analysis(plan, stats, layer, f))
            rec["dead"] = any((rec.get("images") or {}).get(p, {}).get("dead") for p in presets)
            rec["retries"] = max([(rec.get("images") or {}).get(p, {}).get("attempts", 1) - 1 for p in presets] + [0])
            save_json(rec, plan.record_path(layer, f))
            computed += 1
            done += 1
            if progress is not None:
                progress(done, total)
    pages = merge_and_render(plan, presets) if render else 0
    return GallerySummary(out_dir, sum(len(l["filters"]) for l in plan.layers), computed, total - len(pending),
                          plan.shard, pages, time.perf_counter() - t0)


def _maximize_chunk(plan: _Plan, layer: str, preset: str, chunk: List[int], wanted: List[int], records: dict,
                    progress: Progress = None) -> None:
    """Optimise the whole chunk (the same batch as any other run), write only the wanted units."""
    from cnnvis.synthesis import make_record, run_target

    target = plan.targets[(layer, preset)]
    settings = plan.settings[preset]
    for filters, results, seconds in run_target(plan.lm, target, settings, seed=plan.seed, batch_size=len(chunk),
                                                filters=chunk, progress=progress):
        for f, result in zip(filters, results):
            if f not in wanted:
                continue
            rel = f"maximize/{page_name(layer)}/{preset}/{f:04d}.png"
            save_png(result.image, os.path.join(plan.out_dir, rel), keep_identical=True)
            rec = make_record(plan.lm, target, f, result, settings, seed=plan.seed, seconds=seconds / len(filters),
                              batch_size=len(filters))
            rec["image"] = rel
            rec["fingerprint"] = plan.maximize_fp[(layer, preset)]
            records[f].setdefault("images", {})[preset] = rec


def _layer_files(plan: _Plan, force: bool) -> None:
    """Kernel images of every layer that has kernels; deterministic, so shards agree."""
    from cnnvis.errors import CnnvisError
    from cnnvis.filters import render_filters, save_filters

    for layer in plan.layers:
        folder = os.path.join(plan.out_dir, "kernels", page_name(layer["name"]))
        wanted = ["filters.png"] + [f"filter-{f:04d}.png" for f in layer["filters"]]
        if not force and all(os.path.isfile(os.path.join(folder, name)) for name in wanted):
            continue
        try:
            result = render_filters(plan.lm, layer["name"], ",".join(map(str, layer["filters"])))
        except CnnvisError:
            continue  # a layer without kernels simply has none to show
        save_filters(result, os.path.join(plan.out_dir, "kernels"), folder=page_name(layer["name"]))


def _analysis(plan: _Plan, force: bool):
    """Statistics of every gallery layer over the image set (computed once, kept in stats/)."""
    from cnnvis.activations import compute_stats, save_stats

    meta_path = os.path.join(plan.out_dir, "stats", "meta.json")
    meta = read_json(meta_path, default={}) or {}
    stats = compute_stats(plan.lm, plan.images, [l["name"] for l in plan.layers], top_k=plan.top_k)
    if force or meta.get("fingerprint") != plan.analysis_fp or not os.path.isfile(os.path.join(plan.out_dir, "stats", "stats.json")):
        save_stats(stats, os.path.join(plan.out_dir, "stats"))
        save_json({"fingerprint": plan.analysis_fp, "images": plan.images}, meta_path)
    return stats


def _input_id(path: str) -> str:
    return hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]


def _unit_analysis(plan: _Plan, stats, layer: str, f: int) -> dict:
    """Statistics of one channel, and its top images with this unit's saliency on each."""
    from cnnvis.gradients import saliency

    s = stats.layers[layer]
    entry = {
        "stats": {"mean": float(s.mean[f]), "std": float(s.std[f]), "min": float(s.min[f]), "max": float(s.max[f]),
                  "fraction_active": float(s.fraction_active[f]), "count": s.count},
        "analysis_fingerprint": plan.analysis_fp,
        "top": [],
    }
    for k, (path, score) in enumerate(zip(s.top_items[f], s.top_scores[f])):
        attribution = saliency(plan.lm, path, unit=f"{layer}:{f}", method="saliency")
        image_rel = f"inputs/{_input_id(path)}.png"
        save_png(attribution.image, os.path.join(plan.out_dir, image_rel), keep_identical=True)
        sal_rel = f"saliency/{page_name(layer)}/{f}-{k}.png"
        save_png(attribution.overlay(), os.path.join(plan.out_dir, sal_rel), keep_identical=True)
        entry["top"].append({"image": image_rel, "saliency": sal_rel, "score": float(score), "name": os.path.basename(path)})
    return entry


def merge_and_render(plan: _Plan, presets) -> int:
    """Merge every unit record on disk into ``manifest.json`` and render the site; returns pages changed."""
    from cnnvis.gallery.render import render_site

    units, missing = [], 0
    layers = []
    for layer in plan.layers:
        entry = {k: layer[k] for k in ("name", "type", "channels", "output_shape")}
        grid = f"kernels/{page_name(layer['name'])}/filters.png"
        entry["kernel_grid"] = grid if _exists(plan.out_dir, grid) else None
        for key, suffix in (("histogram", "histogram"), ("channel_chart", "channels")):
            rel = f"stats/{safe_name(layer['name'])}-{suffix}.png"
            entry[key] = rel if plan.images and _exists(plan.out_dir, rel) else None
        layers.append(entry)
        for f in layer["filters"]:
            rec = read_json(plan.record_path(layer["name"], f), default=None)
            if rec is None:
                missing += 1
                continue
            kernel = f"kernels/{page_name(layer['name'])}/filter-{f:04d}.png"
            rec["kernel"] = kernel if _exists(plan.out_dir, kernel) else None
            units.append(rec)
    h, w = plan.lm.preprocessing.input_size()
    first = next(iter(plan.settings.values()))
    from cnnvis.synthesis import image_size

    manifest = {
        "cnnvis_gallery": 1,
        "model": {"name": plan.lm.name, "weights": plan.lm.weights, "input": f"{plan.lm.preprocessing.channels}×{h}×{w}"},
        "settings": {"preset": "+".join(presets), "objective": next(iter(plan.targets.values())).objective,
                     "steps": first.steps, "size": "×".join(map(str, image_size(plan.lm, first))),
                     "seed": plan.seed, "images": len(plan.images)},
        "layers": layers,
        "units": units,
        "missing": missing,
    }
    save_json(manifest, os.path.join(plan.out_dir, "manifest.json"))
    return len(render_site(plan.out_dir, manifest))

