"""Which units do the pictures explain? The Machine Interpretability Score (MIS) side by side.

For a model (default efficientnet-lite0) and its gallery layers (the first ``--filters`` units of each),
one table per source of references, per layer:

* ``natural``   — the median natural-reference MIS (references from the gallery's image set);
* ``cnnvis``    — the median synthetic-reference MIS with cnnvis's default pictures (the gallery's preset,
  objective and canvas; a positive and a negative picture per unit), and the share of units whose
  pictures explain them at least as well as natural images do (synthetic MIS >= natural MIS);
* ``lucent``    — the same with torch-lucent's pictures of the same units (its ``render_vis`` defaults: the
  channel mean, a 128 px Fourier image, its transforms; the negative picture maximises minus the
  channel mean), on the first ``--lucent-filters`` units of each layer (lucent takes 10-30 s a picture);
* ``random``    — the natural-reference MIS of a random-weight copy of the model (``--weights none``), which
  should sit near chance (0.5) if the score measures what the network learned.

All scores use the same image set, similarity model (efficientnet-lite1), tasks (K = 9, N = 20, quantile
0.2, alpha 0.16) and seed, so the queries of a unit are the same in every row.

    python benchmarks/bench_score.py                            # cnnvis's pictures made in --pictures (reused)
    python benchmarks/bench_score.py --images DIR --lucent-filters 0   # another image set
    /work/bench-venv/bin/python benchmarks/bench_score.py --lucent-filters 4   # with lucent (its own venv,
                                                                # see benchmarks/bench_quality.py)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnnvis  # noqa: E402
from cnnvis.atlas.examples import collect_examples, ImageSet  # noqa: E402
from cnnvis.atlas.galleries import gallery_layers, GalleryRequest  # noqa: E402
from cnnvis.atlas.interpret import make_pictures  # noqa: E402
from cnnvis.atlas.scores import load_pictures, median, score_layer, ScoreSettings, unit_pictures  # noqa: E402
from cnnvis.atlas.similarity import default_similarity, Similarity  # noqa: E402
from cnnvis.synthesis.settings import unit_seed  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--layers", nargs="+", default=None, help="default: the gallery's layers")
    ap.add_argument("--filters", type=int, default=16, help="the first N units of each layer")
    ap.add_argument("--pictures", default="bench-score-pictures", help="folder of cnnvis's pictures (made if missing)")
    ap.add_argument("--lucent-filters", type=int, default=4, help="units per layer drawn by lucent (0: no lucent)")
    ap.add_argument("--lucent-steps", type=int, default=512, help="lucent's steps (its default threshold)")
    ap.add_argument("--lucent-cache", default="bench-score-lucent.pt", help="lucent's pictures, kept and reused")
    ap.add_argument("--random", action=argparse.BooleanOptionalAction, default=True,
                    help="score a random-weight copy of the model too")
    ap.add_argument("--images", nargs="+", default=None,
                    help="image files/folders instead of the bundled photographs' crops (a diverse set: see "
                         "docs/interpretability.md)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_out", default=None, help="write every unit's scores here")
    return ap.parse_args(argv)


def lucent_pictures(lm, layer: str, filters: List[int], args, cache: dict) -> Dict[int, Dict[str, List[torch.Tensor]]]:
    """lucent's positive and negative pictures of ``filters`` (one ``render_vis`` call each)."""
    from lucent.optvis import objectives, param, render, transform

    out = {}
    transforms = list(transform.standard_transforms) + [lm.preprocessing.normalize]
    for f in filters:
        pics = {}
        for kind, sign in (("positive", 1.0), ("negative", -1.0)):
            key = f"{lm.name}|{layer}|{f}|{kind}|{args.lucent_steps}|{args.seed}"
            if key not in cache:
                model = copy.deepcopy(lm.model).eval()  # render_vis leaves a hook on every module
                seed = unit_seed(args.seed, layer, "lucent", f, kind) % 2**31
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)
                objective = objectives.channel(layer.replace(".", "_"), f) * sign
                t = time.perf_counter()
                image = render.render_vis(model, objective, param_f=lambda: param.image(128), transforms=transforms,
                                          preprocess=False, thresholds=(args.lucent_steps,), show_image=False,
                                          progress=False)[-1][0]
                cache[key] = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
                print(f"  lucent {layer} {f} {kind}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
                torch.save(cache, args.lucent_cache)
            pics[kind] = [cache[key]]
        out[f] = pics
    return out


def share(pairs) -> Optional[float]:
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    return sum(b >= a for a, b in pairs) / len(pairs) if pairs else None


def fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    lm = cnnvis.load_model(args.model)
    layers = args.layers or gallery_layers(lm)
    units = {layer: list(range(min(args.filters, lm_channels(lm, layer)))) for layer in layers}
    settings = ScoreSettings(seed=args.seed)
    sim = Similarity(default_similarity(lm))
    images, names = ImageSet(lm, args.images or ()).load()
    print(f"{lm.name}: {sum(map(len, units.values()))} units of {len(layers)} layers, {len(images)} images, "
          f"similarity {sim.name}", flush=True)

    store, made = make_pictures(lm, layers, units, args.pictures, seed=args.seed, workers="auto")
    print(f"cnnvis pictures: {made} made, the others reused from {args.pictures} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    request = GalleryRequest(layers=tuple(layers))
    found = unit_pictures(store.read().get("records") or [], request.objective, request.presets[0])
    examples = collect_examples(lm, layers, images, names=names, k=1)

    use_lucent = args.lucent_filters > 0
    if use_lucent:
        try:
            import lucent  # noqa: F401
        except ImportError:
            print("torch-lucent is not installed here: no lucent row (see benchmarks/bench_quality.py)", flush=True)
            use_lucent = False
    cache = torch.load(args.lucent_cache, weights_only=True) if use_lucent and os.path.exists(args.lucent_cache) else {}

    rows: Dict[str, Dict[str, dict]] = {}
    per_unit = []
    for layer in layers:
        mine = units[layer]
        pics = {f: load_pictures(args.pictures, found.get((layer, f), {}), lm.preprocessing.channels) for f in mine}
        ours = score_layer(examples[layer], mine, sim, settings, pictures=pics)
        row = {"natural": [ours[f].natural.mis for f in mine], "cnnvis": [ours[f].synthetic.mis for f in mine]}
        if use_lucent:
            few = mine[: args.lucent_filters]
            theirs = score_layer(examples[layer], few, sim, settings, pictures=lucent_pictures(lm, layer, few, args, cache))
            row["lucent"] = [theirs[f].synthetic.mis for f in few]
            row["natural@lucent"] = row["natural"][: len(few)]
            row["cnnvis@lucent"] = row["cnnvis"][: len(few)]
        rows[layer] = row
        for f in mine:
            per_unit.append({"layer": layer, "filter": f, **{k: v for k, v in ours[f].to_dict().items()
                                                            if k in ("natural", "synthetic")}})
        print(f"scored {layer} ({time.perf_counter() - t0:.0f} s)", flush=True)

    if args.random:
        rnd = cnnvis.load_model(args.model, weights="none")
        ex_rnd = collect_examples(rnd, layers, images, names=names, k=1)
        for layer in layers:
            scored = score_layer(ex_rnd[layer], units[layer], sim, settings)
            rows[layer]["random"] = [scored[f].natural.mis for f in units[layer]]
            rows[layer]["random_undefined"] = sum(scored[f].natural.mis is None for f in units[layer])

    print()
    head = f"{'layer':<26} {'natural':>8} {'cnnvis':>8} {'>=nat':>6}"
    if use_lucent:
        head += f" | {'n':>2} {'natural':>8} {'cnnvis':>8} {'lucent':>8} {'cnv>=nat':>8} {'luc>=nat':>8}"
    if args.random:
        head += f" | {'random':>8}"
    print("median MIS per layer (0.5 = chance); >=nat: share of units whose pictures explain them at least as well "
          "as natural images")
    print(head)
    every: Dict[str, list] = {}
    for layer, row in rows.items():
        for key, values in row.items():
            if isinstance(values, list):
                every.setdefault(key, []).extend(values)
        line = (f"{layer:<26} {fmt(median(row['natural'])):>8} {fmt(median(row['cnnvis'])):>8} "
                f"{fmt(share(zip(row['natural'], row['cnnvis'])), 2):>6}")
        if use_lucent:
            line += (f" | {len(row['lucent']):>2} {fmt(median(row['natural@lucent'])):>8} "
                     f"{fmt(median(row['cnnvis@lucent'])):>8} {fmt(median(row['lucent'])):>8} "
                     f"{fmt(share(zip(row['natural@lucent'], row['cnnvis@lucent'])), 2):>8} "
                     f"{fmt(share(zip(row['natural@lucent'], row['lucent'])), 2):>8}")
        if args.random:
            undefined = row["random_undefined"]
            line += f" | {fmt(median(row['random'])):>8}" + (f" ({undefined} undefined)" if undefined else "")
        print(line)
    line = (f"{'all':<26} {fmt(median(every['natural'])):>8} {fmt(median(every['cnnvis'])):>8} "
            f"{fmt(share(zip(every['natural'], every['cnnvis'])), 2):>6}")
    if use_lucent:
        line += (f" | {len(every['lucent']):>2} {fmt(median(every['natural@lucent'])):>8} "
                 f"{fmt(median(every['cnnvis@lucent'])):>8} {fmt(median(every['lucent'])):>8} "
                 f"{fmt(share(zip(every['natural@lucent'], every['cnnvis@lucent'])), 2):>8} "
                 f"{fmt(share(zip(every['natural@lucent'], every['lucent'])), 2):>8}")
    if args.random:
        line += f" | {fmt(median(every['random'])):>8}"
    print(line)
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"rows": rows, "units": per_unit}, f, indent=1)
    return 0


def lm_channels(lm, layer: str) -> int:
    return next(r.channels for r in cnnvis.list_layers(lm) if r.name == layer)


if __name__ == "__main__":
    sys.exit(main())
