"""Build a gallery folder: what ``cnnvis gallery`` and :func:`build_gallery` add to the one pipeline.

A gallery is a set of *units* ``(layer, filter)``. Their synthesised images go through the same
plan, chunks and store as ``cnnvis maximize`` (:mod:`cnnvis.runs`), so a gallery folder is a
superset of a maximize folder and ``cnnvis gallery`` renders a folder that ``cnnvis maximize``
filled. What is gallery-specific lives here:

* the default layers (one per resolution stage) and filters (the first 16);
* each layer's kernels (``kernels/<layer>/``);
* with an image set: activation statistics (``stats/``) and each unit's top-activating images
  with the unit's saliency on each (``inputs/``, ``saliency/``), reused while the images'
  contents and the model's weights are unchanged;
* the manifest's ``gallery`` section (settings, layers, per-unit analysis), merged under the
  folder lock like the records, and the rendered site (:mod:`cnnvis.gallery.render`).

Folder layout::

    manifest.json                      records (one per image) + "model" + "gallery"
    <layer>/<variant>/NNNN.png, grid.png   the images, as cnnvis maximize writes them
    kernels/<layer>/filter-NNNN.png, filters.png, weight.npy
    stats/stats.json, stats/<layer>-histogram.png, …   (with images)
    inputs/<id>.png, saliency/<layer>/<filter>-<k>.png  (with images)
    index.html, layers/<layer>.html, units/<layer>/<filter>.html, static/
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple, Union

from cnnvis.errors import InputError
from cnnvis.files import layer_file
from cnnvis.objectives import UNIT_OBJECTIVES
from cnnvis.progress import Progress
from cnnvis.runs import DEFAULT_BATCH, DEFAULT_RETRIES, ImageRequest, execute, parse_shard, plan_images
from cnnvis.store import Store, files_fingerprint, fingerprint, model_fingerprint

DEFAULT_FILTERS = 16
PRESET_CHOICES = ("robust", "plain", "both")

__all__ = ["GalleryRequest", "GallerySummary", "build_gallery", "choose_filters", "parse_shard"]


@dataclass(frozen=True)
class GalleryRequest:
    """Everything a gallery build decides (what ``cnnvis gallery``'s options fill in).

    Args:
        layers: layer specs; default one representative layer per resolution stage
            (:func:`cnnvis.layers.stage_layers`).
        filters: the first N filters of each layer, or a spec (``0-7,12``, ``all``).
        preset: ``robust``, ``plain`` or ``both``; ``steps``/``size``/``lr`` override the preset.
        objective: ``channel-l2`` (the textbook ``||h||_2``), ``channel-mean`` or ``neuron``.
        images: image files/folders for statistics, top-activating images and saliency.
        top_k: top-activating images per unit.
        retries: restarts of a unit that is dead for its starting noise.
        shard: ``"i/n"``; default from ``RANK``/``WORLD_SIZE`` under torchrun, else everything.
        batch_size: units per optimisation batch (also the unit of sharding), or ``auto``.
        render: write the HTML pages.
    """

    layers: Optional[Tuple[str, ...]] = None
    filters: Union[int, str] = DEFAULT_FILTERS
    preset: str = "robust"
    objective: str = "channel-l2"
    steps: Optional[int] = None
    size: object = None
    lr: Optional[float] = None
    images: Tuple[str, ...] = ()
    top_k: int = 4
    seed: int = 0
    shard: Union[str, Tuple[int, int], None] = None
    force: bool = False
    batch_size: Union[int, str] = DEFAULT_BATCH
    retries: int = DEFAULT_RETRIES
    render: bool = True

    def __post_init__(self):
        if self.preset not in PRESET_CHOICES:
            raise InputError(f"--preset must be one of {', '.join(PRESET_CHOICES)}, got {self.preset!r}")
        if self.objective not in UNIT_OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(UNIT_OBJECTIVES)} for a gallery, got {self.objective!r}")
        if int(self.top_k) < 1:
            raise InputError(f"--top-k must be at least 1, got {self.top_k}")

    @property
    def presets(self) -> Tuple[str, ...]:
        return ("robust", "plain") if self.preset == "both" else (self.preset,)

    def image_request(self) -> ImageRequest:
        overrides = {k: v for k, v in (("steps", self.steps), ("size", self.size), ("lr", self.lr)) if v is not None}
        return ImageRequest(self.layers or (), self.filters, self.objective, self.presets, int(self.seed),
                            self.batch_size, int(self.retries), self.shard, bool(self.force), overrides)


@dataclass(frozen=True)
class GallerySummary:
    out_dir: str
    units: int  # units in the gallery
    computed: int  # units that got a new image or analysis from this call
    skipped: int  # this shard's units that were already finished
    shard: Tuple[int, int]
    pages: int  # pages rewritten
    seconds: float
    images_written: int = 0


def choose_filters(spec, channels: int) -> List[int]:
    """A gallery's filters: a count N (the first N), or a spec like ``0-7,12`` / ``all``.

    Example:
        >>> choose_filters(16, 6), choose_filters("0-2,5", 6), choose_filters("4", 6)
        ([0, 1, 2, 3, 4, 5], [0, 1, 2, 5], [0, 1, 2, 3])
    """
    from cnnvis.layers import parse_filter_spec

    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        n = int(spec)
        if n < 1:
            raise InputError(f"--filters {spec}: give a positive count, a spec like 0-7,12, or all")
        return list(range(min(n, channels)))
    return parse_filter_spec(spec, channels)


def _gallery_layers(lm, request: GalleryRequest) -> List[dict]:
    """The layers to show, each with its type, shape and chosen filters."""
    from cnnvis.layers import list_layers, resolve_layers, stage_layers

    names = resolve_layers(lm, list(request.layers)) if request.layers else stage_layers(lm)
    if not names:
        raise InputError(f"{lm.name} has no convolution layers to show; pass layers with -l")
    info = {row.name: row for row in list_layers(lm)}
    layers = []
    for name in names:
        row = info[name]
        if row.output_shape is None or len(row.output_shape) != 3:
            raise InputError(f"layer {name!r} has no spatial output ({row.type}); a gallery shows convolutional layers")
        layers.append({"name": name, "type": row.type, "channels": row.channels,
                       "output_shape": list(row.output_shape), "filters": choose_filters(request.filters, row.channels)})
    return layers


def build_gallery(model, out_dir: str, request: Optional[GalleryRequest] = None, *, progress: Progress = None,
                  **options) -> GallerySummary:
    """Compute what is missing for this shard's units, store it, and render the site.

    ``request`` is a :class:`GalleryRequest`, or give its fields as keywords
    (``build_gallery(lm, "site", layers=["conv1"], filters=8, images=["digits/"])``).
    ``model`` is a spec, an ``nn.Module`` or a ``LoadedModel``. ``progress(done, total)`` counts
    this shard's units; ``done`` moves in fractions of a unit while a batch optimises.
    """
    from cnnvis.models import load_model

    t0 = time.perf_counter()
    if request is None:
        known = {f.name for f in fields(GalleryRequest)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown gallery option(s): {', '.join(sorted(unknown))}")
        if options.get("layers") is not None:
            options["layers"] = tuple(options["layers"])
        options["images"] = tuple(options.get("images") or ())
        request = GalleryRequest(**options)
    elif options:
        raise TypeError("give a GalleryRequest or keyword options, not both")
    lm = load_model(model)
    layers = _gallery_layers(lm, request)
    image_files = []
    if request.images:
        from cnnvis.io import find_images

        image_files = find_images(list(request.images))
    store = Store(out_dir, force=request.force)
    plan = plan_images(lm, request.image_request(), store, layers=[l["name"] for l in layers],
                       units={l["name"]: l["filters"] for l in layers})
    store.prepare()
    model_fp = model_fingerprint(lm)
    analysis_fp = fingerprint(model_fp, files_fingerprint(image_files), request.top_k) if image_files else None

    my_units = _shard_units(plan)
    section = store.read().get("gallery") or {}
    old_units = section.get("units") or {}
    needs_analysis = [u for u in my_units if analysis_fp and (request.force or (old_units.get(_unit_key(*u)) or {})
                                                             .get("analysis_fingerprint") != analysis_fp)]
    image_todo = {(c.job.layer, u) for c in plan.mine for u in plan.unfinished(c)}
    pending = sorted(image_todo | set(needs_analysis))
    total = float(len(my_units))
    done_before = total - len(pending)

    def image_progress(done, images_total):
        if progress is not None and images_total:
            units_with_images = len({u for u in pending if u in image_todo})
            share = units_with_images * (0.9 if needs_analysis else 1.0)
            progress(done_before + share * done / images_total, total)

    if progress is not None:
        progress(done_before, total)
    _layer_files(lm, store.folder, layers, request.force)
    summary = execute(plan, progress=image_progress)
    analysis = {}
    if needs_analysis:
        stats = _statistics(lm, store.folder, image_files, layers, analysis_fp, request)
        for k, (layer, f) in enumerate(needs_analysis):
            analysis[_unit_key(layer, f)] = _unit_analysis(lm, store.folder, stats, layer, f, analysis_fp)
            if progress is not None:
                progress(total - len(needs_analysis) + k + 1, total)

    settings = _settings_entry(lm, request, plan)
    pages = [0]

    def update(manifest):
        gallery = manifest.setdefault("gallery", {})
        gallery["settings"] = settings
        by_name = {l["name"]: l for l in gallery.get("layers") or []}
        for layer in layers:
            by_name[layer["name"]] = _layer_entry(store.folder, layer, bool(image_files))
        order = [l["name"] for l in layers] + [n for n in by_name if n not in {l["name"] for l in layers}]
        gallery["layers"] = [by_name[n] for n in order]
        units = gallery.setdefault("units", {})
        units.update(analysis)
        if "model" not in manifest:
            from cnnvis.runs import model_entry

            manifest["model"] = model_entry(lm, model_fp)

    def render(manifest):
        if request.render:
            from cnnvis.gallery.render import render_site

            pages[0] = len(render_site(store.folder, manifest))

    if store.writable() or pending:
        store.commit([], update=update, after=render)
    if progress is not None:
        progress(total, total)
    computed = len({(r["layer"], r["filter"]) for r in summary.records} | set(analysis_units(analysis)))
    return GallerySummary(store.folder, sum(len(l["filters"]) for l in layers), computed, int(done_before),
                          plan.shard, pages[0], time.perf_counter() - t0, summary.written)


def analysis_units(analysis: dict) -> List[Tuple[str, int]]:
    return [(v["layer"], int(v["filter"])) for v in analysis.values()]


def _unit_key(layer: str, f: int) -> str:
    return f"{layer}/{int(f)}"


def _shard_units(plan) -> List[Tuple[str, int]]:
    """The units this shard owns: those of its chunks of each layer's first variant."""
    first = {}
    for job in plan.jobs:
        first.setdefault(job.layer, job.variant)
    return sorted({(c.job.layer, u) for c in plan.mine if first[c.job.layer] == c.job.variant for u in c.units})


def _settings_entry(lm, request: GalleryRequest, plan) -> dict:
    from cnnvis.synthesis import image_size

    first = plan.jobs[0]
    return {"preset": "+".join(request.presets), "objective": request.objective, "steps": first.settings.steps,
            "size": "×".join(map(str, image_size(lm, first.settings))), "seed": int(request.seed),
            "images": len(request.images), "variants": list(dict.fromkeys(j.variant for j in plan.jobs))}


def _layer_entry(folder: str, layer: dict, with_images: bool) -> dict:
    entry = {k: layer[k] for k in ("name", "type", "channels", "output_shape", "filters")}
    grid = f"kernels/{layer_file(layer['name'])}/filters.png"
    entry["kernel_grid"] = grid if os.path.isfile(os.path.join(folder, grid)) else None
    for key, suffix in (("histogram", "histogram"), ("channel_chart", "channels")):
        rel = f"stats/{layer_file(layer['name'])}-{suffix}.png"
        entry[key] = rel if with_images and os.path.isfile(os.path.join(folder, rel)) else None
    entry["kernels"] = {str(f): f"kernels/{layer_file(layer['name'])}/filter-{f:04d}.png" for f in layer["filters"]
                        if os.path.isfile(os.path.join(folder, f"kernels/{layer_file(layer['name'])}/filter-{f:04d}.png"))}
    return entry


def _layer_files(lm, folder: str, layers: List[dict], force: bool) -> None:
    """Kernel images of every layer that has kernels; deterministic, so shards agree."""
    from cnnvis.errors import CnnvisError
    from cnnvis.filters import render_filters, save_filters

    for layer in layers:
        where = os.path.join(folder, "kernels", layer_file(layer["name"]))
        wanted = ["filters.png"] + [f"filter-{f:04d}.png" for f in layer["filters"]]
        if not force and all(os.path.isfile(os.path.join(where, name)) for name in wanted):
            continue
        try:
            result = render_filters(lm, layer["name"], ",".join(map(str, layer["filters"])))
        except CnnvisError:
            continue  # a layer without kernels simply has none to show
        save_filters(result, os.path.join(folder, "kernels"), folder=layer_file(layer["name"]))


def _statistics(lm, folder: str, images: Sequence[str], layers: List[dict], analysis_fp: str, request):
    """Statistics of every gallery layer over the image set (kept in stats/ with their fingerprint)."""
    from cnnvis.stats import compute_stats, save_stats
    from cnnvis.io import read_json, save_json

    meta_path = os.path.join(folder, "stats", "meta.json")
    meta = read_json(meta_path, default={}) or {}
    stats = compute_stats(lm, list(images), [l["name"] for l in layers], top_k=request.top_k)
    if request.force or meta.get("fingerprint") != analysis_fp or not os.path.isfile(os.path.join(folder, "stats", "stats.json")):
        save_stats(stats, os.path.join(folder, "stats"))
        save_json({"fingerprint": analysis_fp, "images": list(images)}, meta_path)
    return stats


def _input_id(path: str) -> str:
    return hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]


def _unit_analysis(lm, folder: str, stats, layer: str, f: int, analysis_fp: str) -> dict:
    """Statistics of one channel, and its top images with this unit's saliency on each."""
    from cnnvis.gradients import saliency
    from cnnvis.io import save_png

    s = stats.layers[layer]
    entry = {
        "layer": layer,
        "filter": int(f),
        "stats": {"mean": float(s.mean[f]), "std": float(s.std[f]), "min": float(s.min[f]), "max": float(s.max[f]),
                  "fraction_active": float(s.fraction_active[f]), "count": s.count},
        "analysis_fingerprint": analysis_fp,
        "top": [],
    }
    for k, (path, score) in enumerate(zip(s.top_items[f], s.top_scores[f])):
        attribution = saliency(lm, path, unit=f"{layer}:{f}", method="saliency")
        image_rel = f"inputs/{_input_id(path)}.png"
        save_png(attribution.image, os.path.join(folder, image_rel), keep_identical=True)
        sal_rel = f"saliency/{layer_file(layer)}/{f}-{k}.png"
        save_png(attribution.overlay(), os.path.join(folder, sal_rel), keep_identical=True)
        entry["top"].append({"image": image_rel, "saliency": sal_rel, "score": float(score), "name": os.path.basename(path)})
    return entry
