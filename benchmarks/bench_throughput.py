"""Pictures per minute of the gallery's defaults against the previous defaults, with their quality.

Runs, in one process and one session, the same units of efficientnet-lite0 (the gallery's default
layers, the first ``--filters`` filters of each) twice:

* **previous defaults** — the gallery before this version: robust preset, ``channel-l2``, 512
  steps, 128 px, no early stop, one process (batches of 8);
* **new defaults** — what ``cnnvis gallery`` does now: its preset and objective, each layer at its
  own canvas, early stop, local workers (``--workers``, default: one per core), through the one
  pipeline (:func:`cnnvis.atlas.runs.execute_workers`) into a temporary folder.

and prints pictures per minute (wall clock) and the quality of both sets of pictures, measured as
``benchmarks/bench_quality.py`` does (positive response after the unit's batch norm against the
best of ``--crops`` natural crops; degenerate pictures; selectivity), side by side.

Usage::

    python benchmarks/bench_throughput.py [--filters 4] [--crops 500] [--workers auto] [--layers ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch

import cnnvis

HERE = os.path.dirname(os.path.abspath(__file__))


def _bench_quality():
    spec = importlib.util.spec_from_file_location("bench_quality", os.path.join(HERE, "bench_quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--layers", nargs="+", default=None, help="default: the gallery's default layers")
    ap.add_argument("--filters", type=int, default=4)
    ap.add_argument("--crops", type=int, default=500)
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--skip-previous", action="store_true", help="only the new defaults (quick)")
    return ap.parse_args(argv)


def previous_defaults(lm, layers, filters):
    """The previous gallery defaults, one process: {layer: (images, records)} and wall seconds."""
    out, t0 = {}, time.perf_counter()
    for layer in layers:
        m = cnnvis.maximize(lm, layer, list(filters), preset="robust", objective="channel-l2", steps=512, size=128,
                            early_stop=False, retries=3, batch_size=8)
        out[layer] = (m.images.float(), [dict(r) for r in m.records])
    return out, time.perf_counter() - t0


def new_defaults(lm, layers, filters, workers):
    """The gallery's defaults through the one pipeline: {layer: (images, records)} and wall seconds."""
    from cnnvis.atlas.galleries import GalleryRequest
    from cnnvis.core.io import load_image
    from cnnvis.atlas.runs import execute_workers, parse_workers, plan_images
    from cnnvis.atlas.store import Store

    request = GalleryRequest(layers=tuple(layers), filters=",".join(map(str, filters)), workers=workers)
    folder = tempfile.mkdtemp(prefix="cnnvis-throughput-")
    plan = plan_images(lm, request.image_request(request.sizes(lm, layers)), Store(folder), layers=list(layers),
                       units={layer: list(filters) for layer in layers})
    t0 = time.perf_counter()
    summary = execute_workers(plan, parse_workers(workers, lm))
    seconds = time.perf_counter() - t0
    out = {}
    for layer in layers:
        records = sorted((r for r in summary.records if r["layer"] == layer), key=lambda r: r["filter"])
        # each picture at the size it was drawn (the layer's canvas), as bench_quality evaluates it:
        # the model's preprocessing without its resize
        own_size = replace(lm.preprocessing, size=None)
        images = torch.stack([own_size.prepare(load_image(os.path.join(folder, r["image"]))) for r in records])
        out[layer] = (images, records)
    return out, seconds, plan.jobs[0].settings


def evaluate(bq, lm, results, crops):
    rows = []
    baselines = bq.Baselines(lm, list(results), crops, 0, "positive")
    for layer, (images, records) in results.items():
        dead = [r["status"] in ("dead", "flat") for r in records]
        filters = [r["filter"] for r in records]
        size = tuple(images.shape[-2:])
        rows += bq.evaluate_layer(lm, layer, filters, images, images, baselines.get(size)[layer], dead, "positive")
    return rows


def summary(rows, pictures, seconds):
    live = [r for r in rows if r["live"]]
    ratios = [r["act_ratio"] for r in live]
    return {"pictures": pictures, "seconds": seconds, "per_minute": 60 * pictures / seconds, "live": len(live),
            "above_1": sum(x > 1 for x in ratios), "median": statistics.median(ratios) if ratios else float("nan"),
            "degenerate": sum(r["degenerate"] for r in live), "selective": sum(r["selective"] for r in live)}


def main(argv=None) -> int:
    args = parse_args(argv)
    bq = _bench_quality()
    lm = cnnvis.load_model(args.model)
    from cnnvis.atlas.galleries import gallery_layers

    layers = args.layers or gallery_layers(lm)
    filters = list(range(args.filters))
    n = len(layers) * len(filters)
    print(f"{args.model}: {len(layers)} layers x {len(filters)} filters = {n} pictures; {os.cpu_count()} CPU(s), "
          f"{torch.get_num_threads()} torch threads", flush=True)
    new, new_seconds, settings = new_defaults(lm, layers, filters, args.workers)
    print(f"new defaults: {new_seconds:.0f} s ({settings.preset}, {settings.steps} steps at most)", flush=True)
    results = {"new defaults": summary(evaluate(bq, lm, new, args.crops), n, new_seconds)}
    stopped = [r.get("stopped_at") for _, recs in new.values() for r in recs]
    early = [s for s in stopped if s is not None]
    if not args.skip_previous:
        old, old_seconds = previous_defaults(lm, layers, filters)
        print(f"previous defaults: {old_seconds:.0f} s", flush=True)
        results["previous defaults"] = summary(evaluate(bq, lm, old, args.crops), n, old_seconds)
    print()
    print("| defaults | pictures | seconds | pictures / minute | live | act_ratio > 1 | median act_ratio | "
          "degenerate | selective |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, s in results.items():
        print(f"| {name} | {s['pictures']} | {s['seconds']:.0f} | {s['per_minute']:.1f} | {s['live']} | "
              f"{s['above_1']}/{s['live']} | {s['median']:.2f} | {s['degenerate']}/{s['live']} | "
              f"{s['selective']}/{s['live']} |")
    if "previous defaults" in results:
        old, new_ = results["previous defaults"], results["new defaults"]
        print(f"\nspeed-up: {new_['per_minute'] / old['per_minute']:.2f}x pictures per minute; "
              f"median act_ratio {new_['median']:.2f} against {old['median']:.2f}")
    print(f"early stop: {len(early)} of {len(stopped)} pictures stopped on a plateau"
          + (f" (median step {statistics.median(early):.0f} of {settings.steps})" if early else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
