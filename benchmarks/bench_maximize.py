"""Benchmark ``cnnvis maximize`` (robust preset) against torch-lucent's ``render_vis`` on VGG-16.

Prints, from one run on one machine:
  * seconds per filter per step, cnnvis (8 filters in one batch) vs lucent (its defaults, one filter
    per call, at the same requested size and steps) and the speed-up;
  * cnnvis's achieved GFLOP/s (convolution FLOPs of the truncated forward plus the backward to the
    input) against this machine's rate for one large conv2d measured in the same run;
  * with CUDA: images per second for all 256 filters of conv3_1 at 224 px, batched.

torch-lucent is not a cnnvis dependency: install it in the benchmark's own environment, e.g.
    python3 -m venv /work/bench-venv && /work/bench-venv/bin/pip install torch torchvision torch-lucent==0.1.8
    /work/bench-venv/bin/pip install -e . --no-deps
    /work/bench-venv/bin/python benchmarks/bench_maximize.py --steps 16
Per-step times are what matter, so a few steps suffice (lucent's default is 512).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import cnnvis
from cnnvis.synthesis.objectives import make_objective
from cnnvis.synthesis.ascent import synthesize
from cnnvis.synthesis.settings import make_settings

LAYERS = {"features.10": "conv3_1", "features.24": "conv5_1"}


def conv_flops(model, layer, size):
    """Forward convolution FLOPs per image of the forward pass truncated at ``layer``."""
    total = [0]

    def hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += 2 * k * out.shape[1] * out.shape[2] * out.shape[3]

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad(), cnnvis.record(model, [layer], stop=True) as rec:
            rec.run(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def reference_gflops(device, repeats=5):
    """This machine's rate for one large conv2d (256 -> 256, 3x3, 56x56, batch 8, channels-last)."""
    x = torch.randn(8, 256, 56, 56, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    flops = 2 * 256 * 9 * 256 * 56 * 56 * 8
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            _sync(device)
            t = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            _sync(device)
            times.append(time.perf_counter() - t)
    return flops / statistics.median(times[1:]) / 1e9


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cnnvis(lm, layer, size, steps, filters):
    settings = make_settings("robust", steps=steps, size=size)
    objective = make_objective("channel-l2", layer, list(range(filters)))
    synthesize(lm, objective, list(range(filters)), make_settings("robust", steps=1, size=size))  # warm-up
    _sync(lm.device)
    t = time.perf_counter()
    synthesize(lm, objective, list(range(filters)), settings)
    _sync(lm.device)
    return time.perf_counter() - t


def time_lucent(model, layer, size, steps, filters):
    from lucent.optvis import param, render

    name = layer.replace(".", "_")
    times = []
    for f in range(filters):
        t = time.perf_counter()
        render.render_vis(model, f"{name}:{f}", param_f=lambda: param.image(size), thresholds=(steps,),
                          show_image=False, progress=False)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--lucent-filters", type=int, default=2, help="lucent runs one filter per call; median of these")
    ap.add_argument("--no-lucent", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    device = torch.device(args.device)
    lm = cnnvis.load_model("vgg16", "none", device=device)
    ref = reference_gflops(device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
          f"one large conv2d: {ref:.0f} GFLOP/s; {args.steps} steps, robust preset")
    print(f"{'layer':<18}{'size':>5}{'cnnvis s/filter':>17}{'lucent s/filter':>17}{'speed-up':>10}"
          f"{'GFLOP/s':>9}{'of conv2d':>10}")
    for layer, label in LAYERS.items():
        for size in args.sizes:
            wall = time_cnnvis(lm, layer, size, args.steps, args.filters)
            per_filter = wall / args.filters
            flops = 2 * conv_flops(lm.model, layer, size)
            gflops = flops * args.steps * args.filters / wall / 1e9
            lucent = float("nan") if args.no_lucent or device.type != "cpu" else time_lucent(
                lm.model, layer, size, args.steps, args.lucent_filters)
            print(f"{layer + ' ' + label:<18}{size:>5}{per_filter:>17.2f}{lucent:>17.2f}{lucent / per_filter:>9.1f}x"
                  f"{gflops:>9.0f}{gflops / ref:>9.0%}")
    if device.type == "cuda":
        objective = make_objective("channel-l2", "features.10", list(range(256)))
        settings = make_settings("robust", steps=args.steps, size=224)
        synthesize(lm, objective, list(range(256)), make_settings("robust", steps=1, size=224))
        _sync(device)
        t = time.perf_counter()
        synthesize(lm, objective, list(range(256)), settings)
        _sync(device)
        wall = time.perf_counter() - t
        print(f"GPU: all 256 filters of conv3_1 at 224 px, batched: {256 / wall * args.steps / 512:.2f} images/s "
              f"at 512 steps ({256 * args.steps / wall:.0f} filter-steps/s)")


if __name__ == "__main__":
    main()
