"""Where the time of one optimisation step goes, measured with ``torch.profiler``.

For a model, a layer and a preset (default: efficientnet-lite0 at the gallery's defaults: robust, channel-relu, the layer's canvas), runs a
few warm-up steps and then ``--steps`` profiled steps of one batch, and prints the share of CPU
time of each part of a step:

* the image parameterisation (the Fourier or MACO image: FFTs, colour, sigmoid);
* the random transforms (affine resampling, MACO's crops and noise);
* the forward pass to the layer, split into depthwise, pointwise (1x1) and other convolutions,
  batch norm and activations, and the rest;
* the backward pass to the input, split the same way (autograd's ``*Backward*`` nodes);
* the optimiser step and the bookkeeping (Adam, masks, copies).

Usage::

    python benchmarks/profile_step.py [--model efficientnet-lite0] [--layer blocks.11.depthwise_conv]
        [--preset robust|maco|plain] [--no-affine-bn] [--objective channel-relu] [--batch 8] [--steps 10] [--size auto|N] [--threads N]
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import cnnvis
from cnnvis.synthesis.ascent import _Ascent, affine_batchnorm, channels_last
from cnnvis.synthesis.settings import canvas_size, make_settings
from cnnvis.synthesis.units import Variant, select_units, seeds_for


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--layer", default="blocks.11.depthwise_conv")
    ap.add_argument("--preset", default="robust")
    ap.add_argument("--objective", default="channel-relu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", default="auto", help="auto: the gallery's canvas for the layer")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-affine-bn", action="store_true",
                    help="the general batch-norm kernel, as before cnnvis computed eval-mode batch norm as x * scale + shift")
    return ap.parse_args(argv)


def category(name: str, conv_kinds: dict) -> str:
    """The part of a step an op belongs to (by its name)."""
    n = name.lower()
    backward = "backward" in n
    side = "backward" if backward else "forward"
    if "fft" in n:
        return "parameterisation (FFT)"
    if "grid_sampler" in n or "affine_grid" in n:
        return "random transforms"
    if "convolution" in n or "conv2d" in n or "mkldnn_conv" in n:
        return f"{side}: convolutions"
    if "batch_norm" in n or "native_batch_norm" in n or "addcmul" in n:  # addcmul: the affine batch norm
        return f"{side}: batch norm"
    if "hardtanh" in n or "relu" in n or "clamp" in n:
        return f"{side}: activations"
    if "adam" in n or "_foreach" in n:
        return "optimiser"
    return f"{side}: other ops" if backward else "other ops (forward, image, bookkeeping)"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = cnnvis.load_model(args.model)
    size = canvas_size(lm, args.layer) if args.size == "auto" else (int(args.size), int(args.size))
    settings = make_settings(args.preset, size=size, steps=args.steps + 3, early_stop=False)
    selection = select_units(lm, args.layer, list(range(args.batch)), args.objective, settings)
    objective = selection.objective_for(selection.filters, Variant())
    seeds = seeds_for(0, selection, selection.filters)
    model = lm.model
    from cnnvis.model.hooks import frozen, record
    from cnnvis.model.probing import call_model

    layers = list(objective.layers)
    use_cl = settings.channels_last and lm.preprocessing.channels > 1
    with frozen(model), channels_last(model, use_cl), affine_batchnorm(model, not args.no_affine_bn), \
            record(model, layers, stop=True) as rec:
        def evaluate(images, which=objective):
            with record_function("forward to the layer"):
                call_model(lm, images.contiguous(memory_format=torch.channels_last) if use_cl else images, rec.run)
                return which(dict(rec.outputs)).reshape(images.shape[0])

        ascent = _Ascent(lm, objective, seeds, settings, evaluate)
        ascent.start()
        for step in range(3):
            ascent.step(step)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for step in range(3, 3 + args.steps):
                ascent.step(step)
        wall = (time.perf_counter() - t0) / args.steps
    totals = collections.Counter()
    for event in prof.key_averages():
        if event.key.startswith("forward to the layer") or event.key.startswith("ProfilerStep"):
            continue
        totals[category(event.key, {})] += event.self_cpu_time_total
    total = sum(totals.values()) or 1
    print(f"{args.model} {args.layer}, {args.preset}:{args.objective}, {size[0]}x{size[1]} px, batch {args.batch}, "
          f"{'general' if args.no_affine_bn else 'affine'} batch norm, {torch.get_num_threads()} thread(s): {wall:.3f} s per step, {wall / args.batch * 1000:.1f} ms per image-step")
    print()
    print("| part of a step | share of CPU time |")
    print("| --- | --- |")
    for name, t in totals.most_common():
        print(f"| {name} | {100 * t / total:.1f}% |")
    print()
    print("Top operators (self CPU):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
