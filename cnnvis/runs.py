"""Work plans that write files: which units exist, which are finished, run the rest, record them.

The output folder holds ``manifest.json`` (``{"version": 1, "records": [...]}``, one record per
image) plus the images. A record is finished when its settings fingerprint matches and its PNG
exists; re-running skips finished records unless ``force``. PNGs, grids and the manifest are
written atomically after every batch, so an interrupted run leaves no half-written file and
the next run resumes where it stopped.

Layout for ``maximize`` (relative to the folder; ``<layer>`` made file-safe)::

    <layer>/<objective>-<preset>/0007.png     one image per filter
    <layer>/<objective>-<preset>/grid.png     every image of that layer, filter order; dead ones crossed out
    manifest.json

Example:
    >>> import cnnvis, tempfile, os
    >>> from cnnvis.runs import run_maximize
    >>> out = tempfile.mkdtemp()
    >>> summary = run_maximize(cnnvis.load_model("lenet-digits"), ["conv1"], "0-1", out_dir=out, steps=4)
    >>> summary.written, sorted(os.listdir(os.path.join(out, "conv1", "channel-l2-plain")))
    (2, ['0000.png', '0001.png', 'grid.png'])
    >>> run_maximize(cnnvis.load_model("lenet-digits"), ["conv1"], "0-1", out_dir=out, steps=4).skipped
    2
    >>> import shutil; shutil.rmtree(out)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

from cnnvis.io import make_grid, read_json, save_json, save_png, safe_name
from cnnvis.objectives import OUTPUT
from cnnvis.synthesis import Progress, Settings, Target, make_record, make_settings, plan, run_target

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def unit_folder(layer: str, objective: str, preset: str) -> str:
    """The folder (relative to the output folder) of one layer's images for one objective and preset."""
    return f"{safe_name('output' if layer == OUTPUT else layer)}/{objective}-{preset}"


def image_path(layer: str, objective: str, preset: str, filter_index: int) -> str:
    return f"{unit_folder(layer, objective, preset)}/{int(filter_index):04d}.png"


def grid_path(layer: str, objective: str, preset: str) -> str:
    return f"{unit_folder(layer, objective, preset)}/grid.png"


def record_key(record: dict) -> Tuple[str, str, str, int]:
    """What identifies a record in a manifest: (layer, objective, preset, filter)."""
    return (record["layer"], record["objective"], record["preset"], int(record["filter"]))


def read_manifest(out_dir: str) -> dict:
    """The folder's manifest, or an empty one."""
    manifest = read_json(os.path.join(out_dir, MANIFEST), default=None) or {}
    manifest.setdefault("version", MANIFEST_VERSION)
    manifest.setdefault("records", [])
    return manifest


def fingerprint(lm, target: Target, settings: Settings, seed: int) -> str:
    """A short hash of everything that decides a record's pixels (model, weights, settings, seed)."""
    from cnnvis.synthesis import image_size

    text = json.dumps(
        [lm.name, lm.weights, target.layer, target.objective, settings.to_dict(), list(image_size(lm, settings)),
         int(seed), list(lm.preprocessing.mean), list(lm.preprocessing.std)],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Job:
    """One layer of a plan: the target, its fingerprint, and which filters still need work."""

    target: Target
    fingerprint: str
    todo: Tuple[int, ...]
    skipped: Tuple[int, ...]


@dataclass(frozen=True)
class MaximizePlan:
    lm: object
    settings: Settings
    seed: int
    out_dir: str
    jobs: Tuple[Job, ...]

    @property
    def total_steps(self) -> int:
        """Filter-steps still to run (the unit of ``progress``)."""
        return sum(len(j.todo) for j in self.jobs) * max(self.settings.steps, 1)


@dataclass(frozen=True)
class RunSummary:
    out_dir: str
    written: int
    skipped: int
    dead: int
    nonfinite: int
    records: Tuple[dict, ...]
    grids: Tuple[str, ...]


def plan_maximize(
    lm,
    layers: Sequence[str],
    filters="all",
    *,
    out_dir: str,
    objective: str = "channel-l2",
    preset: str = "plain",
    seed: int = 0,
    force: bool = False,
    **overrides,
) -> MaximizePlan:
    """Resolve the layers and filters, check them, and find the finished records in ``out_dir``."""
    from cnnvis.layers import resolve_layers

    settings = make_settings(preset, **overrides)
    names = resolve_layers(lm, list(layers)) if layers else [None]
    manifest = read_manifest(out_dir)
    existing = {record_key(r): r for r in manifest["records"]}
    jobs = []
    for name in names:
        target = plan(lm, name, filters, objective, settings)
        fp = fingerprint(lm, target, settings, seed)
        todo, skipped = [], []
        for f in target.filters:
            layer = "output" if target.layer == OUTPUT else target.layer
            old = existing.get((layer, target.objective, settings.preset, f))
            finished = (
                old is not None and old.get("fingerprint") == fp
                and os.path.isfile(os.path.join(out_dir, old.get("image", "")))
            )
            (skipped if finished and not force else todo).append(f)
        jobs.append(Job(target, fp, tuple(todo), tuple(skipped)))
    return MaximizePlan(lm, settings, int(seed), os.fspath(out_dir), tuple(jobs))


def _crossed(image: torch.Tensor) -> torch.Tensor:
    """An image (C x H x W) as RGB with a red cross over it: how a dead filter shows in a grid."""
    rgb = image.expand(3, -1, -1).clone() if image.shape[0] == 1 else image.clone()
    h, w = rgb.shape[-2:]
    for k in range(max(h, w)):
        y, x = k * h // max(h, w), k * w // max(h, w)
        for xx in (x, w - 1 - x):
            rgb[:, y, xx] = torch.tensor([1.0, 0.0, 0.0])
    return rgb


def _load_png(path: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(a)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def write_grid(out_dir: str, records: Sequence[dict], layer: str, objective: str, preset: str) -> Optional[str]:
    """The grid PNG of one layer (every record of it in the manifest, by filter); its relative path."""
    mine = sorted(
        (r for r in records if (r["layer"], r["objective"], r["preset"]) == (layer, objective, preset)),
        key=lambda r: int(r["filter"]),
    )
    tiles = []
    for r in mine:
        path = os.path.join(out_dir, r["image"])
        if os.path.isfile(path):
            image = _load_png(path)
            tiles.append(_crossed(image) if r.get("dead") else image)
    if not tiles:
        return None
    rel = grid_path(layer, objective, preset)
    save_png(make_grid(tiles, pad=2), os.path.join(out_dir, rel))
    return rel


def execute(plan_: MaximizePlan, *, batch_size: Union[int, str] = "auto", progress: Progress = None) -> RunSummary:
    """Run a plan's missing units; after each batch write its PNGs, the layer's grid and the manifest."""
    out_dir, settings, lm = plan_.out_dir, plan_.settings, plan_.lm
    os.makedirs(out_dir, exist_ok=True)
    manifest = read_manifest(out_dir)
    records: List[dict] = manifest["records"]
    where = {record_key(r): i for i, r in enumerate(records)}
    total, done_before = plan_.total_steps, 0
    written, fresh, grids = 0, [], []

    def tick(done, _total):
        if progress is not None:
            progress(done_before + done, total)

    for job in plan_.jobs:
        target = job.target
        layer = "output" if target.layer == OUTPUT else target.layer
        for chunk, results, seconds in run_target(
            lm, target, settings, seed=plan_.seed, batch_size=batch_size, filters=job.todo, progress=tick
        ):
            for f, result in zip(chunk, results):
                rec = make_record(lm, target, f, result, settings, seed=plan_.seed, seconds=seconds / len(chunk),
                                  batch_size=len(chunk))
                rec["image"] = image_path(target.layer, target.objective, settings.preset, f)
                rec["fingerprint"] = job.fingerprint
                save_png(result.image, os.path.join(out_dir, rec["image"]))
                key = record_key(rec)
                if key in where:
                    records[where[key]] = rec
                else:
                    where[key] = len(records)
                    records.append(rec)
                fresh.append(rec)
                written += 1
            write_grid(out_dir, records, layer, target.objective, settings.preset)
            save_json(manifest, os.path.join(out_dir, MANIFEST))
        done_before += len(job.todo) * max(settings.steps, 1)
        grid = grid_path(target.layer, target.objective, settings.preset)
        if not os.path.isfile(os.path.join(out_dir, grid)):
            write_grid(out_dir, records, layer, target.objective, settings.preset)
        grids.append(grid)
    if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        save_json(manifest, os.path.join(out_dir, MANIFEST))
    return RunSummary(
        out_dir=out_dir,
        written=written,
        skipped=sum(len(j.skipped) for j in plan_.jobs),
        dead=sum(r["dead"] for r in fresh),
        nonfinite=sum(r["status"] == "nonfinite" for r in fresh),
        records=tuple(fresh),
        grids=tuple(grids),
    )


def run_maximize(
    lm,
    layers: Sequence[str],
    filters="all",
    *,
    batch_size: Union[int, str] = "auto",
    progress: Progress = None,
    **options,
) -> RunSummary:
    """Plan and execute ``maximize`` into ``out_dir`` (what the ``cnnvis maximize`` command does).

    ``options``: ``out_dir`` (required), ``objective``, ``preset``, ``seed``, ``force`` and any
    :class:`cnnvis.synthesis.Settings` field, as for :func:`plan_maximize`.
    """
    return execute(plan_maximize(lm, layers, filters, **options), batch_size=batch_size, progress=progress)
