"""The one work plan for synthesised images: units x variants -> fixed chunks -> run -> store.

``cnnvis maximize``, ``cnnvis gallery`` (and :func:`cnnvis.build_gallery`), ``--shard`` and
``torchrun`` all go through :func:`plan_images` and :func:`execute`:

1. **plan** — resolve the layers, list each layer's units, and make one *job* per (layer,
   variant) with its :class:`~cnnvis.synthesis.Settings` and content fingerprint
   (:mod:`cnnvis.atlas.store`);
2. **chunks** — cut every job's units into fixed chunks of ``batch_size`` (the unit of one
   optimisation batch; on a CPU a chunk of large pictures runs as smaller batches of the same
   pictures, :func:`cnnvis.synthesis.units.cpu_batch`); chunk ``k`` (counted over all jobs) belongs
   to shard ``k mod n``, so every shard, worker or resumed run optimises exactly the batches one
   whole run would, and their PNGs are byte-identical on CPU for the same torch thread count per
   process (local workers run one thread each: the files of one single-thread process);
3. **run** — a chunk with any unfinished image is optimised whole; its new images and records go
   to the store (one short database transaction); a job's grid is drawn once its last chunk here is
   stored, and ``manifest.json`` is exported when the run ends. Local workers
   (:func:`execute_pool`) take the shard's chunks of one or more plans from one queue, the costliest
   first.

Folder layout (relative to the output folder; ``<layer>`` made file-safe and distinct)::

    <layer>/<variant>/0007.png     one image per unit; <variant> is <objective>-<preset>[-…]
    <layer>/<variant>/grid.png     the layer's images of that variant in unit order; dead ones crossed out
    records.sqlite                 the records (cnnvis.atlas.store)
    manifest.json                  their export: {"version": 2, "model": …, "records": [one per image]}

Example:
    >>> import cnnvis, tempfile, os
    >>> out = tempfile.mkdtemp()
    >>> summary = run_maximize(cnnvis.load_model("lenet-digits"), ["conv1"], "0-1", out_dir=out, steps=4)
    >>> summary.written, sorted(os.listdir(os.path.join(out, "conv1", "channel-l2-plain")))
    (2, ['0000.png', '0001.png', 'grid.png'])
    >>> run_maximize(cnnvis.load_model("lenet-digits"), ["conv1"], "0-1", out_dir=out, steps=4).skipped
    2
    >>> import shutil; shutil.rmtree(out)
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from cnnvis.core.errors import CnnvisError, InputError
from cnnvis.synthesis.objectives import OUTPUT
from cnnvis.core.memory import release_freed_memory
from cnnvis.core.progress import Progress
from cnnvis.synthesis.settings import Settings, field_settings, image_size, make_settings
from cnnvis.synthesis.units import CPU_BATCH, cpu_batch, DIVERSITY_KEEP, Selection, Variant, make_record, run_units, select_units
from cnnvis.core.io import load_picture, make_grid, save_png
from cnnvis.model.layers import resolve_layers
from cnnvis.model.loading import load_model
from cnnvis.atlas.store import fingerprint, grid_path, model_fingerprint, record_key, Store, variant_name

#: Restarts from fresh (stronger) noise for a unit that is dead for its first start: the robust
#: preset starts near grey, which leaves many deep channels at exactly zero.
DEFAULT_RETRIES = Settings.retries
#: ``batch_size="auto"``: this many units per chunk (on CUDA, chunks of one job run together in
#: batches that fit the free memory).
DEFAULT_BATCH = "auto"

#: ``renderer(folder, manifest)`` writes a gallery folder's pages from its manifest and returns their paths
#: (:func:`cnnvis.gallery.render.render_site`); the atlas is handed one and never imports the site
Renderer = Callable[[str, dict], Sequence[str]]


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
    return (int(i), int(n))


def chunk_size(batch_size: Union[int, str, None]) -> int:
    """The fixed number of units per chunk: ``batch_size``, or :data:`CPU_BATCH` for ``auto``."""
    return _count_or_auto(batch_size, "--batch-size", CPU_BATCH)


def _count_or_auto(value, label: str, auto: int) -> int:
    """A positive count given by the user, or ``auto`` (None) -> ``auto``."""
    if value in (None, "auto"):
        return auto
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a positive number or auto, got {value!r}") from None
    if n < 1:
        raise InputError(f"{label} must be at least 1, got {value}")
    return n


#: The smallest cost of a picture-step, in pixels: a step's fixed work (the bookkeeping, the calls) does not
#: shrink with the picture (LeNet, one thread, a batch of 8: 0.23, 0.51, 0.45, 1.31, 5.0 ms per picture-step at
#: 16, 28, 32, 64, 128 px), so tiny pictures do not look free to the time left.
STEP_PIXELS = 32 * 32


@dataclass(frozen=True)
class ImageRequest:
    """What to synthesise: the part ``cnnvis maximize`` and ``cnnvis gallery`` share.

    ``layers`` are layer specs (an empty tuple means the model's output, for ``class``);
    ``filters`` a spec (``all``, ``0-7``, a list); ``presets`` one or more presets, each a variant
    of ``objective`` made with ``variant`` (sign, diversity); ``extra`` more (objective, preset,
    variant) pictures per unit (the gallery's negative, neuron and diverse ones); ``overrides``
    any :class:`Settings` field (``steps``, ``lr``, ``size``, …; ``None`` values are ignored).
    """

    layers: Tuple[str, ...] = ()
    filters: object = "all"
    objective: str = "channel-l2"
    presets: Tuple[str, ...] = ("plain",)
    seed: int = 0
    batch_size: Union[int, str] = DEFAULT_BATCH
    retries: int = DEFAULT_RETRIES
    shard: Union[str, Tuple[int, int], None] = None
    force: bool = False
    overrides: Dict[str, object] = field(default_factory=dict)
    variant: Variant = Variant()
    extra: Tuple[Tuple[str, str, Variant], ...] = ()
    sizes: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # per-layer sizes, unless overrides has one
    layer_steps: Dict[str, int] = field(default_factory=dict)  # per-layer steps, unless overrides has them
    grids: bool = True  # a grid PNG per layer and variant (the gallery's pages show the pictures themselves)

    @classmethod
    def of(cls, layers: Sequence[str] = (), filters="all", *, preset: str = "plain", **options) -> "ImageRequest":
        """A request from keywords: this class's fields (one ``preset``), the rest :class:`Settings` overrides."""
        own = {f.name for f in fields(cls)} - {"layers", "filters", "presets", "overrides"}
        given = {k: v for k, v in options.items() if k in own}
        if "seed" in given:
            given["seed"] = int(given["seed"])
        if "retries" in given:
            given["retries"] = int(given["retries"])
        overrides = {k: v for k, v in options.items() if k not in own}
        return cls(tuple(layers or ()), filters, presets=(preset,), overrides=overrides, **given)

    def settings(self, preset: str, layer: Optional[str] = None) -> Settings:
        overrides = dict(self.overrides)
        if layer in self.sizes and overrides.get("size") is None:
            overrides["size"] = self.sizes[layer]
        if layer in self.layer_steps and overrides.get("steps") is None:
            overrides["steps"] = self.layer_steps[layer]
        return make_settings(preset, retries=self.retries, **overrides)

    def kinds(self) -> List[Tuple[str, str, Variant]]:
        """Every (objective, preset, variant) to make for each unit, main ones first."""
        main = [(self.objective, p, self.variant) for p in self.presets]
        return main + [k for k in self.extra if k not in main]


@dataclass(frozen=True)
class Job:
    """One (layer, variant): what to optimise, how, and the fingerprint its records must carry.

    ``names`` are the record variants of the job's pictures of a unit (one, or one per diverse copy).
    """

    selection: Selection
    settings: Settings
    variant: str
    fingerprint: str
    kind: Variant = Variant()
    names: Tuple[str, ...] = ()

    @property
    def layer(self) -> str:
        return "output" if self.selection.layer == OUTPUT else self.selection.layer

    def keys(self, unit: int) -> List[tuple]:
        return [(self.layer, int(unit), name) for name in (self.names or (self.variant,))]


@dataclass(frozen=True)
class Chunk:
    """A fixed batch of one job's units."""

    job: Job
    units: Tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    lm: object
    store: Store
    request: ImageRequest
    jobs: Tuple[Job, ...]
    chunks: Tuple[Chunk, ...]  # every chunk of the run, in order
    shard: Tuple[int, int]
    model_fp: str  # the model's fingerprint (cnnvis.atlas.store.model_fingerprint), as in every job's fingerprint
    only: Optional[Tuple[int, ...]] = None  # these chunks (indices into ``chunks``) of the shard's, as a local worker runs one

    @property
    def mine(self) -> Tuple[Chunk, ...]:
        """This shard's chunks."""
        return tuple(c for _k, c in self.mine_indexed())

    def mine_indexed(self) -> List[Tuple[int, Chunk]]:
        """This shard's chunks with their indices in ``chunks``."""
        i, n = self.shard
        return [(k, c) for k, c in enumerate(self.chunks) if k % n == i and (self.only is None or k in self.only)]

    def unfinished(self, chunk: Chunk) -> List[int]:
        """The chunk's units with any picture still to make."""
        return [u for u in chunk.units
                if not all(self.store.finished(key, chunk.job.fingerprint) for key in chunk.job.keys(u))]

    @property
    def todo(self) -> int:
        """Pictures still to compute in this shard."""
        return self.remaining()[0]

    @property
    def cost(self) -> float:
        """What the pictures still to compute cost, in 224-px, 256-step pictures."""
        return self.remaining()[1]

    def remaining(self) -> Tuple[int, float]:
        """(pictures still to compute in this shard, what they cost in 224-px, 256-step pictures: a
        picture's cost grows with its pixels and its steps; what an honest time-left weighs), in one look
        at the store."""
        work = [self.work(c) for c in self.mine]
        return sum(n for n, _ in work), sum(cost for _, cost in work)

    def work(self, chunk: Chunk) -> Tuple[int, float]:
        """(pictures of ``chunk`` still to compute, what they cost in 224-px, 256-step pictures)."""
        n = len(self.unfinished(chunk)) * chunk.job.kind.copies
        h, w = image_size(self.lm, chunk.job.settings)
        return n, n * max(h * w, STEP_PIXELS) * max(1, chunk.job.settings.steps) / (224 * 224 * 256)

    @property
    def images(self) -> int:
        """Pictures of this shard."""
        return sum(len(c.units) * c.job.kind.copies for c in self.mine)


@dataclass(frozen=True)
class RunSummary:
    out_dir: str
    written: int  # images computed and written by this call
    skipped: int  # this shard's images that were already finished
    dead: int
    nonfinite: int
    records: Tuple[dict, ...]  # the records written by this call
    grids: Tuple[str, ...]
    seconds: float = 0.0
    flat: int = 0  # images of units whose kernel or response is negligible
    off: int = 0  # positive images of off-units (they answer most to a silent input; see cnnvis.synthesis.health)


def job_fingerprint(lm, model_fp: str, selection: Selection, settings: Settings, variant: str, seed: int,
                    extra=None) -> str:
    """Everything that decides an image's pixels: the model's content, layer, variant, every
    setting, the size, the seed and the normalisation."""
    pre = lm.preprocessing
    described = settings.to_dict()
    described["size"] = list(image_size(lm, settings))  # the same picture whether the size was given or implied
    parts = [model_fp, selection.layer, variant, selection.objective, described,
             list(image_size(lm, settings)), int(seed), list(pre.mean), list(pre.std), pre.channels]
    if selection.reads or selection.before:  # the module the objective reads: the unit's response
        parts.append(["reads", selection.reads, selection.before])
    if extra and any(e not in (None, False, 1.0) for e in extra):  # plain pictures keep their old fingerprint
        parts.append(selection.reads)
        parts.append(list(extra))
    return fingerprint(*parts)


def plan_images(lm, request: ImageRequest, store: Store, *, layers: Optional[Sequence[str]] = None,
                units: Optional[Dict[str, Sequence[int]]] = None) -> Plan:
    """Resolve ``request`` against the model and the store.

    ``layers`` (resolved names) and ``units`` (layer -> unit list) let a caller that has already
    decided them (the gallery) pass them in; otherwise they come from the request.
    """
    shard = parse_shard(request.shard)
    size = chunk_size(request.batch_size)
    if layers is None:
        layers = resolve_layers(lm, list(request.layers)) if request.layers else [None]
    model_fp = model_fingerprint(lm)
    jobs, chunks = [], []
    for name in layers:
        for objective, preset, kind in request.kinds():
            settings = request.settings(preset, name)
            wanted = units.get(name) if units is not None and name in units else request.filters
            selection = select_units(lm, name, wanted, objective, settings, normalised=kind.normalised)
            settings = field_settings(lm, selection.layer, settings,
                                      keep=[k for k, v in request.overrides.items() if v is not None and k != "steps"])
            names = tuple(kind.names(selection.objective, settings.preset))
            variant = variant_name(selection.objective, settings.preset, negative=kind.negative,
                                   diversity=kind.copies, index=0).rsplit("-", 1)[0] if kind.copies > 1 else names[0]
            diverse = ["keep", DIVERSITY_KEEP, "previous", selection.previous] if kind.copies > 1 else []
            fp = job_fingerprint(lm, model_fp, selection, settings, variant, request.seed,
                                 [kind.diversity_weight, kind.diversity_layer, kind.normalised] + diverse)
            job = Job(selection, settings, variant, fp, kind, names)
            jobs.append(job)
            f = list(selection.filters)
            chunks += [Chunk(job, tuple(f[k : k + size])) for k in range(0, len(f), size)]
    return Plan(lm, store, request, tuple(jobs), tuple(chunks), shard, model_fp)


def _crossed(image: torch.Tensor) -> torch.Tensor:
    """An image (C x H x W) as RGB with a red cross over it: how a dead unit shows in a grid."""
    rgb = image.expand(3, -1, -1).clone() if image.shape[0] == 1 else image.clone()
    h, w = rgb.shape[-2:]
    for k in range(max(h, w)):
        y, x = k * h // max(h, w), k * w // max(h, w)
        for xx in (x, w - 1 - x):
            rgb[:, y, xx] = torch.tensor([1.0, 0.0, 0.0])
    return rgb


def write_grid(folder: str, records: Sequence[dict], layer: str, variant: str) -> Optional[str]:
    """The grid PNG of one layer's images of one variant (every record of them, by unit); its path."""
    mine = sorted((r for r in records if record_key(r)[0] == layer and record_key(r)[2] == variant),
                  key=lambda r: int(r["filter"]))
    tiles = []
    for r in mine:
        path = os.path.join(folder, r.get("image") or "")
        if r.get("image") and os.path.isfile(path):
            image = load_picture(path)
            tiles.append(_crossed(image) if r.get("dead") or r.get("status") == "flat" else image)
    if not tiles or len({tuple(t.shape[-2:]) for t in tiles}) > 1:
        return None
    rel = grid_path(layer, variant)
    save_png(make_grid(tiles, pad=2), os.path.join(folder, rel), keep_identical=True)
    return rel


def _draw_grids(store: Store, job: Job) -> None:
    """Redraw a job's grid PNGs under the folder lock, from every writer's records."""
    store.commit(after=lambda manifest: [write_grid(store.folder, manifest["records"], job.layer, name)
                                         for name in job.names or (job.variant,)])


def model_entry(lm, model_fp: Optional[str] = None) -> dict:
    """The manifest's ``model`` section."""
    h, w = lm.preprocessing.input_size()
    entry = {"name": lm.name, "weights": lm.weights, "input": f"{lm.preprocessing.channels}×{h}×{w}"}
    if model_fp:
        entry["fingerprint"] = model_fp
    return entry


def _batches(plan: Plan) -> List[Tuple[Job, List[int], List[int]]]:
    """This shard's work as (job, units to optimise together, units to write).

    A chunk with any unfinished image is optimised whole (the same batch as any other run). With
    ``batch_size="auto"`` on CUDA, the chunks of one job are optimised together in batches that
    fit the free memory instead (GPU results are not bit-reproducible anyway).
    """
    work = []
    for chunk in plan.mine:
        wanted = plan.unfinished(chunk)
        if wanted:
            work.append((chunk.job, list(chunk.units), wanted))
    if plan.request.batch_size in (None, "auto") and getattr(plan.lm.device, "type", "cpu") == "cuda":
        grouped: Dict[int, Tuple[Job, List[int], List[int]]] = {}
        for job, _units, wanted in work:
            entry = grouped.setdefault(id(job), (job, [], []))
            entry[1].extend(wanted)
            entry[2].extend(wanted)
        work = list(grouped.values())
    return work


def _variant_fields(job: Job, copy: int) -> dict:
    """What a record says about its variant beyond the objective and preset."""
    kind, fields = job.kind, {}
    if kind.negative:
        fields["negative"] = True
        if job.selection.objective == "channel-relu" and job.selection.before:
            fields["objective_layer"] = job.selection.before  # switched off below its activation's floor
    if kind.copies > 1:
        fields.update(diversity=kind.copies, diversity_index=copy, diversity_weight=kind.diversity_weight,
                      diversity_group=job.variant)
    return fields


def execute(plan: Plan, *, progress: Progress = None, finish=None, on_job=None, export: bool = True) -> RunSummary:
    """Run this shard's unfinished chunks; after each, store its images and records and redraw grids.

    ``progress(done, total)`` counts images (fractions move while a batch optimises).
    ``finish(manifest)`` runs at the end under the folder lock, on the manifest as every writer
    has left it so far (the gallery renders its pages there, so the last writer's pages show
    every record). ``on_job(job, records)`` is called when this shard's last chunk of a job is
    stored, with the job's new records. ``export=False``: no ``manifest.json`` at the end (a local
    worker running one chunk; its pool exports once).
    """
    t0 = time.perf_counter()
    store, lm = plan.store, plan.lm
    work = _batches(plan)
    total = float(sum(len(w[2]) * w[0].kind.copies for w in work))
    done = 0.0
    written, fresh, grids = 0, [], []
    model_fp = plan.model_fp
    if progress is not None:
        progress(0.0, total)
    if work:
        store.prepare()
    last = {id(job): k for k, (job, _u, _w) in enumerate(work)}
    per_job: Dict[int, List[dict]] = {}
    try:
        for index, (job, units, wanted) in enumerate(work):
            pictures_wanted = len(wanted) * job.kind.copies

            def tick(d, t, base=done, share=pictures_wanted):
                if progress is not None:
                    progress(base + share * d / max(t, 1), total)

            auto_cuda = plan.request.batch_size in (None, "auto") and lm.device.type == "cuda"
            batch = len(units) if lm.device.type != "cpu" else cpu_batch(image_size(lm, job.settings), len(units),
                                                                         job.kind.copies)
            new = []
            names = job.names or (job.variant,)
            for chunk, results, seconds in run_units(lm, job.selection, job.settings, seed=plan.request.seed,
                                                     batch_size="auto" if auto_cuda else batch, units=units,
                                                     progress=tick, variant=job.kind):
                pictures = [(u, k) for u in chunk for k in range(len(names))]
                for (unit, k), result in zip(pictures, results):
                    if unit not in wanted:
                        continue
                    rec = make_record(lm, job.selection, unit, result, job.settings, seed=plan.request.seed,
                                      seconds=seconds / len(results), batch_size=len(results), variant=names[k])
                    rec.update(_variant_fields(job, k))
                    rec["image"] = store.save_image(result.image, job.layer, unit, names[k])
                    rec["fingerprint"] = job.fingerprint
                    new.append(rec)

            # the model that made the newest records, said once per run (the model does not change within it)
            store.commit(new, update=(lambda m: m.__setitem__("model", model_entry(lm, model_fp))) if index == 0 else None)
            if last[id(job)] == index and plan.request.grids:  # the job's last chunk here: its grids, from every writer's records
                _draw_grids(store, job)
            fresh += new
            written += len(new)
            release_freed_memory()  # the next chunk's buffers differ (another layer, size or batch)
            done += pictures_wanted
            per_job.setdefault(id(job), []).extend(new)
            if progress is not None:
                progress(done, total)
            if on_job is not None and last[id(job)] == index:
                on_job(job, per_job[id(job)])
    except BaseException:  # interrupted or failed: what was stored is exported, so manifest.json shows it
        if written and export:
            with contextlib.suppress(Exception):
                store.commit(export=True)
        raise
    for job in plan.jobs:
        for name in job.names or (job.variant,):
            rel = grid_path(job.layer, name)
            if store.exists(rel) and rel not in grids:
                grids.append(rel)
    if export and (work or (not os.path.isfile(store.manifest_path) and store.writable())):  # the run's end: the export
        store.commit([], update=lambda m: m.setdefault("model", model_entry(lm, model_fp)),
                     after=finish if work else None, export=True)
    return RunSummary(
        out_dir=store.folder,
        written=written,
        skipped=plan.images - int(total),
        dead=sum(bool(r["dead"]) for r in fresh),
        nonfinite=sum(r["status"] == "nonfinite" for r in fresh),
        flat=sum(r["status"] == "flat" for r in fresh),
        off=sum(r.get("unit_kind") == "off" and not r.get("negative") for r in fresh),
        records=tuple(fresh),
        grids=tuple(grids),
        seconds=time.perf_counter() - t0,
    )


def default_workers(lm) -> int:
    """Local worker processes that measure fastest here: one single-thread process per CPU core on a
    CPU (two single-thread processes beat one two-thread process by about 1.1x on 2 cores, see
    docs/performance.md), one process on a GPU."""
    if getattr(lm.device, "type", "cpu") != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, torch.get_num_threads() or 1, 8))


def parse_workers(value, lm) -> int:
    """``--workers``: a positive number or ``auto`` (:func:`default_workers`)."""
    return _count_or_auto(value, "--workers", default_workers(lm) if value in (None, "auto") else 1)


def execute_workers(plan: Plan, workers: int, *, progress: Progress = None, finish=None, on_job=None) -> RunSummary:
    """:func:`execute` spread over ``workers`` local processes (:func:`execute_pool` with one plan; with one
    worker, without ``fork`` or with one chunk to run, :func:`execute` in this process)."""
    import multiprocessing as mp

    if int(workers) <= 1 or "fork" not in mp.get_all_start_methods():
        return execute(plan, progress=progress, finish=finish, on_job=on_job)
    (summary,) = execute_pool([plan], workers, progress=progress, on_job=on_job)
    if finish is not None and summary.written:
        plan.store.commit([], after=finish, export=True)
    return summary


def _pool_items(plans: Sequence[Plan]) -> List[Tuple[int, int, int, float]]:
    """This shard's unfinished chunks of every plan as (plan, chunk index, pictures, cost), the costliest
    first (:meth:`Plan.work`); ties keep plan order."""
    items = [(p, k) + plan.work(chunk) for p, plan in enumerate(plans) for k, chunk in plan.mine_indexed()]
    return sorted((it for it in items if it[2]), key=lambda it: -it[3])


class _PoolTally:
    """The parent's view of a pool's work: progress weighed by cost, a job's line once all of its chunks
    here are stored (whichever worker stored them), a plan's summary once all of its chunks are."""

    def __init__(self, plans, items, progress, on_job, on_plan):
        self.plans, self.items, self.progress, self.on_job, self.on_plan = plans, items, progress, on_job, on_plan
        self.total = float(sum(it[3] for it in items)) or 1.0
        self.fraction: Dict[int, float] = {}
        self.spent = 0.0  # the cost of the work done, chunks' fractions weighed by their costs
        self.complete = 0  # chunks done
        self.left: Dict[Tuple[int, int], int] = {}  # (plan, job id) -> chunks not yet stored
        self.plan_left = [0] * len(plans)
        self.records: Dict[Tuple[int, int], List[dict]] = {}
        self.parts: List[List[RunSummary]] = [[] for _ in plans]
        for p, k, _n, _c in items:
            key = (p, id(plans[p].chunks[k].job))
            self.left[key] = self.left.get(key, 0) + 1
            self.plan_left[p] += 1

    def report(self, n: int, fraction: float) -> None:
        before = self.fraction.get(n, 0.0)
        self.fraction[n] = min(1.0, max(before, fraction))
        self.spent += self.items[n][3] * (self.fraction[n] - before)  # a running sum: each report costs the same
        self.complete += self.fraction[n] == 1.0 and before < 1.0
        if self.complete == len(self.items):
            self.spent = self.total  # exactly, whatever the rounding of the sum
        if self.progress is not None:
            self.progress(min(self.spent, self.total), self.total)

    def done(self, n: int, summary: RunSummary) -> None:
        p, k, _n, _c = self.items[n]
        plan = self.plans[p]
        job = plan.chunks[k].job
        self.report(n, 1.0)
        self.parts[p].append(summary)
        key = (p, id(job))
        self.records.setdefault(key, []).extend(summary.records)
        self.left[key] -= 1
        if not self.left[key] and plan.request.grids:  # the job's grids once, from every writer's records
            _draw_grids(plan.store, job)
        if not self.left[key] and self.on_job is not None:
            self.on_job(job, self.records[key])
        self.plan_left[p] -= 1
        if not self.plan_left[p] and self.on_plan is not None:
            self.on_plan(p, self.summary(p))

    def summary(self, p: int) -> RunSummary:
        plan, parts = self.plans[p], self.parts[p]
        order = {key: i for i, key in enumerate(key for c in plan.chunks for u in c.units for key in c.job.keys(u))}
        records = sorted((r for s in parts for r in s.records), key=lambda r: order.get(record_key(r), len(order)))
        computed = sum(n for q, _k, n, _c in self.items if q == p)
        grids = [grid_path(j.layer, name) for j in plan.jobs for name in j.names or (j.variant,)
                 if plan.request.grids and plan.store.exists(grid_path(j.layer, name))]
        return RunSummary(out_dir=plan.store.folder, written=sum(s.written for s in parts),
                          skipped=plan.images - computed, dead=sum(s.dead for s in parts),
                          nonfinite=sum(s.nonfinite for s in parts), records=tuple(records),
                          grids=tuple(dict.fromkeys(grids)), seconds=sum(s.seconds for s in parts),
                          flat=sum(s.flat for s in parts), off=sum(s.off for s in parts))


def execute_pool(plans: Sequence[Plan], workers: int, *, progress: Progress = None, on_job=None,
                 on_plan=None, alongside: Optional[Callable[[], None]] = None) -> List[RunSummary]:
    """Run the unfinished chunks of several plans (this shard's of each) on ``workers`` local processes
    that take them one at a time from one queue, the costliest first; one summary per plan.

    Each worker runs one torch thread and each chunk is the batch a single whole run would optimise
    with the same seeds, so the files are those of a single-thread run, whichever worker draws what
    and in whatever order. One queue for all the plans means no core waits at the end of a phase (a
    gallery's own pictures, its off-units, its classes, its strongest inputs) for the other's last chunk.
    ``progress(done, total)`` is weighed by the chunks' costs; ``on_job(job, records)`` runs in this
    process once a job's chunks here are all stored, ``on_plan(index, summary)`` once a plan's are;
    ``manifest.json`` is exported once at the end. An error in a worker is raised here. Without ``fork``
    (Windows, macOS' default), with one worker or one chunk, the plans run one after the other in this
    process.

    ``alongside()`` is other work of this process that needs none of the pictures (a gallery's dataset
    pass and examples). With a pool it runs here, at the last worker's share of the torch threads, in
    place of that worker, which starts taking chunks once it returns, while a thread collects the
    results: two cores run two single-thread streams instead of a pool and then a two-thread tail (a
    two-thread pass does not take half the time of a one-thread one). An error in it is raised once the
    pool's work is stored; a worker's error, once it has returned. Without a pool it runs first.
    """
    import multiprocessing as mp

    plans = list(plans)
    items = _pool_items(plans)
    workers = max(1, min(int(workers), len(items)))
    t0 = time.perf_counter()
    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        if alongside is not None:
            alongside()
        summaries = []
        total = float(sum(it[3] for it in items)) or 1.0
        for p, plan in enumerate(plans):
            base = sum(it[3] for it in items if it[0] < p)
            mine = sum(it[3] for it in items if it[0] == p)
            tick = None if progress is None else (
                lambda d, t, base=base, mine=mine: progress(base + mine * min(1.0, d / t if t else 1.0), total))
            summaries.append(execute(plan, progress=tick, on_job=on_job))
            if on_plan is not None and any(it[0] == p for it in items):
                on_plan(p, summaries[-1])
        return summaries
    tally = _PoolTally(plans, items, progress, on_job, on_plan)
    if progress is not None:
        progress(0.0, tally.total)
    ctx = mp.get_context("fork")
    tasks, results = ctx.Queue(), ctx.Queue()
    for n in range(len(items)):
        tasks.put(n)
    for _ in range(workers):
        tasks.put(None)
    threads = max(1, torch.get_num_threads() // workers)
    go = ctx.Event()  # the last worker waits for it while ``alongside`` runs here
    if alongside is None:
        go.set()
    procs = [ctx.Process(target=_pool_worker, args=(plans, items, tasks, results, threads,
                                                    go if n == workers - 1 else None), daemon=True)
             for n in range(workers)]
    release_freed_memory()  # a forked worker counts every page it shares with this process
    for proc in procs:
        proc.start()
    collector, before, failed = _Collector(tally, results, procs, len(items)), torch.get_num_threads(), None
    try:
        if alongside is None:
            collector.run()
        else:  # the results on a thread; the work here, where Ctrl-C arrives
            collector.start()
            torch.set_num_threads(threads)  # this process's share: the waiting worker's
            try:
                alongside()
            except Exception as exc:  # raised once the pictures are stored: they are not lost
                failed = exc
            finally:
                go.set()
                torch.set_num_threads(before)
            collector.join()
    finally:
        collector.stop()
        # Ctrl-C or a kill reaches only this process when it is not sent to the whole group:
        # the workers stop at once then, as they do on an error; the records they committed stay.
        complete = collector.error is None and collector.finished == len(items)
        for proc in procs:
            if complete and proc.is_alive():
                proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        if collector.stored or not complete:  # what was stored is exported, also after an error
            with contextlib.suppress(Exception):
                plans[0].store.commit([], export=True)
    if collector.error is not None:
        raise collector.error
    if failed is not None:
        raise failed
    out = [tally.summary(p) for p in range(len(plans))]
    return [replace(s, seconds=time.perf_counter() - t0) for s in out]


class _Collector:
    """The parent's side of a pool: the workers' results into the tally until every chunk is done, an
    error comes or :meth:`stop`; in this thread (:meth:`run`) or on another (:meth:`start`, while this one
    does the work alongside), which keeps an error for the caller in ``error``."""

    def __init__(self, tally: _PoolTally, results, procs, chunks: int):
        import threading

        self.tally, self.results, self.procs, self.chunks = tally, results, procs, chunks
        self.error: Optional[BaseException] = None
        self.finished, self.stored = 0, False
        self.stopped, self.thread = threading.Event(), None

    def run(self) -> None:
        try:
            while self.finished < self.chunks and self.error is None and not self.stopped.is_set():
                try:
                    kind, n, *payload = self.results.get(timeout=1.0)
                except Exception:  # queue.Empty: check the workers are alive
                    dead = [proc for proc in self.procs if not proc.is_alive() and proc.exitcode != 0]
                    if dead and self.results.empty():
                        raise CnnvisError(f"a worker process ended without a result (exit code {dead[0].exitcode})")
                    continue
                if kind == "progress":
                    self.tally.report(n, payload[0])
                elif kind == "done":
                    self.stored = self.stored or bool(payload[0].written)
                    self.tally.done(n, payload[0])
                    self.finished += 1
                elif kind == "error":
                    self.error = payload[0]
        except Exception as exc:
            if self.thread is None:
                raise
            self.error = exc

    def start(self) -> None:
        import threading

        self.thread = threading.Thread(target=self.run, name="cnnvis-pool-results", daemon=True)
        self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def _pool_worker(plans: Sequence[Plan], items, tasks, results, threads: int, go=None) -> None:
    """One local worker of :func:`execute_pool`: chunks from ``tasks`` until it reads None; with ``go``,
    once that event is set."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the worker at once; the parent reports it
    torch.set_num_threads(threads)
    if go is not None:
        go.wait()
    while True:
        n = tasks.get()
        if n is None:
            return
        p, k, _pictures, _cost = items[n]
        plan = plans[p]
        try:  # one chunk, without its grids: the parent draws a job's grids once all its chunks are stored
            summary = execute(replace(plan, only=(k,), request=replace(plan.request, grids=False)), export=False,
                              progress=lambda d, t, n=n: results.put(("progress", n, d / t if t else 1.0)))
            results.put(("done", n, summary))
        except BaseException as exc:  # sent to the parent, which raises it
            try:
                results.put(("error", n, exc))
            except Exception:
                results.put(("error", n, CnnvisError(f"a worker failed: {type(exc).__name__}: {exc}")))
            return


def run_maximize(model, layers: Sequence[str], filters="all", *, out_dir: str, request: Optional[ImageRequest] = None,
                 workers=1, progress: Progress = None, renderer: Optional[Renderer] = None, **options) -> RunSummary:
    """Plan and execute ``maximize`` into ``out_dir`` (what the ``cnnvis maximize`` command does).

    ``model`` is a spec, an ``nn.Module`` or a ``LoadedModel``. ``request`` is an :class:`ImageRequest`,
    or give its fields as keywords (``objective``, ``preset``, ``seed``, ``force``, ``batch_size``,
    ``retries``, ``shard``) together with any :class:`cnnvis.synthesis.settings.Settings` field
    (``steps``, ``lr``, ``size``, ``clamp``, …). ``workers``: local processes sharing the chunks
    (``auto``: :func:`default_workers`). A run into a gallery folder re-renders its pages with
    ``renderer(folder, manifest)`` when one is handed in (``cnnvis.run_maximize`` hands in the site's).
    """
    if request is None:
        request = ImageRequest.of(layers, filters, **options)
    elif options:
        raise InputError(f"give either request= or its fields as keywords, not both ({', '.join(sorted(options))})")
    force = request.force
    lm = load_model(model)
    store = Store(out_dir, force=force)
    plan = plan_images(lm, request, store)

    def finish(manifest):  # a maximize into a gallery folder re-renders it, so the pages show the new records
        if manifest.get("gallery") and renderer is not None:
            renderer(store.folder, manifest)

    return execute_workers(plan, parse_workers(workers, lm), progress=progress, finish=finish)


__all__ = ["ImageRequest", "Plan", "RunSummary", "execute", "execute_pool", "execute_workers", "parse_shard", "plan_images", "Renderer",
           "run_maximize"]
