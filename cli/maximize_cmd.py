"""``cnnvis maximize``: maximum-response images of filters (a thin layer over cnnvis.atlas.runs)."""

from __future__ import annotations

import os
import sys
import time

import click

from cnnvis.synthesis.objectives import OBJECTIVES

from .app import main
from .options import (ascent_options, batch_options, device_option, diversity_options, early_stop_option,
                      filters_option, force_option, layer_option, model_options, output_option, parallel_options,
                      quiet_option, seed_option)
from cnnvis.core.errors import InputError
from cnnvis.core.progress import duration
from cnnvis.model.probing import probe
from cnnvis.atlas.runs import execute_workers, ImageRequest, parse_workers, plan_images
from cnnvis.atlas.store import Store
from cnnvis.synthesis.settings import make_settings, PRESETS
from cnnvis.synthesis.units import Variant

EXAMPLES = """\b
Examples:
  cnnvis maximize lenet-digits -l conv2 -o out/lenet          # textbook gradient ascent, every filter
  cnnvis maximize efficientnet-lite0 -l blocks.3.0 --filters 0-15 --preset robust -o out/effnet
  cnnvis maximize vgg16 --weights none -l features.10 --filters 0-7 --preset robust --steps 64
  cnnvis maximize efficientnet-lite0 --objective class --class magpie --preset robust -o out/magpie
  cnnvis maximize mypkg.nets:make_net --size 64 -l conv2 --objective neuron --no-clamp
  cnnvis maximize efficientnet-lite0 -l blocks.10 --filters 3 --preset maco --objective channel-relu --diversity 4
"""


@main.command(epilog=EXAMPLES)
@model_options
@layer_option(help="layer(s) whose filters to maximise (names, globs, type:NAME); not needed for --objective class.")
@filters_option(default="all")
@click.option("--objective", type=click.Choice(list(OBJECTIVES)),
              default="channel-l2", show_default=True,
              help="channel-l2: ||h_l,d(x)||_2 of the filter's activation map (the textbook); channel-mean; "
              "channel-relu: the mean positive response after the layer's batch norm (what a ReLU passes on); "
              "neuron: the centre unit; class: a logit (see --class).")
@click.option("--class", "classes", multiple=True, metavar="NAME|IDX",
              help="with --objective class: a class name or index; repeatable (default: --filters as indices).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="plain", show_default=True,
              help="plain: the textbook ascent on pixels; robust: lucid's Fourier image, colour decorrelation, "
              "random jitter/scale/rotation, Adam; maco: phase-only Fourier image with a natural magnitude "
              "spectrum and random crops (Fel et al. 2023). All at the model's input size unless --size.")
@ascent_options("optimisation steps [" + ", ".join(f"{p} {make_settings(p).steps}" for p in PRESETS) + "].",
                "step size γ [plain, robust 0.05; maco 0.1].")
@batch_options("filters optimised together; auto fits the device's free memory.",
               "restart a dead filter (zero activation and gradient at the start) from fresh noise up to K times.")
@parallel_options("compute only share i of n (0-based; fixed chunks of --batch-size filters); default from "
                  "RANK/WORLD_SIZE under torchrun.")
@diversity_options(1, "K distinct pictures per filter, optimised together with lucid's diversity term (1: none).",
                   "strength of the diversity term, in units of the layer's typical response.")
@click.option("--negative", is_flag=True, help="the filter switched off: minimise it (channel-relu: maximise its "
              "negative part).")
@early_stop_option("run every step, even after a picture's objective has stopped rising (the plateau rule: "
                   "docs/maximize.md).")
@click.option("--no-normalize-grad", is_flag=True, help="plain: step along the raw gradient (no RMS normalisation).")
@click.option("--no-clamp", is_flag=True, help="plain: do not clamp the image to [0, 1] after each step.")
@force_option("recompute images already finished in DIR/manifest.json.")
@seed_option
@device_option
@output_option(default="maximize")
@quiet_option
def maximize(model, layers, filters, objective, classes, preset, steps, lr, batch_size, retries, workers, shard, diversity,
             diversity_weight, negative, no_early_stop, no_normalize_grad, no_clamp, force, seed, device, output, quiet):
    """Synthesise images that maximise the response of chosen filters of MODEL.

    Writes one PNG per filter, a grid PNG per layer, and DIR/manifest.json with one record per
    image (settings, seed, objective before/after, loss curve, time, versions). Same seed, settings and
    torch thread count on CPU give byte-identical PNGs. Re-running into DIR skips finished images.
    A filter whose activation and gradient are zero for the starting noise is recorded as dead
    (crossed out in the grid); --retries restarts it from fresh noise.

    --size sets the image size (default: the model's input size for plain, 128 for robust);
    the image optimised is the size the network sees.

    MODEL is a zoo name (lenet-digits, efficientnet-lite0, efficientnet-lite1), a torchvision name (vgg16,
    resnet18, …), or package.module:callable returning an nn.Module.
    """
    if objective != "class" and not layers:
        raise InputError(f"--objective {objective} needs a layer: pass -l LAYER (run 'cnnvis layers {model.spec}')")
    if classes and objective != "class":
        raise InputError("--class goes with --objective class")
    lm = model.load()
    overrides = dict(steps=steps, lr=lr, size=model.size)
    if no_normalize_grad:
        overrides["normalize_grad"] = False
    if no_clamp:
        overrides["clamp"] = False
    if no_early_stop:
        overrides["early_stop"] = False
    chosen = list(classes) if classes else filters
    request = ImageRequest(tuple(layers), chosen, objective, (preset,), seed, batch_size, retries, shard, force,
                           {k: v for k, v in overrides.items() if v is not None},
                           Variant(negative=negative, diversity=diversity, diversity_weight=diversity_weight))
    store = Store(output, force=force)
    work = plan_images(lm, request, store)
    if objective == "class" and not quiet:
        where = probe(lm, work.jobs[0].settings.size).output_from if work.jobs else "tensor"
        if where != "tensor":
            click.echo(f"output: model(x){where}", err=True)
    todo = work.todo
    n = parse_workers(workers, lm)
    if quiet or todo == 0:
        summary = execute_workers(work, n)
    elif not sys.stderr.isatty():  # a log file, CI: one line per finished layer and variant, with the time left
        state = {"position": 0.0, "total": float(todo), "start": time.perf_counter()}

        def track(done, total):
            state["position"], state["total"] = max(state["position"], done), total or state["total"]

        def line(job, records):
            elapsed = time.perf_counter() - state["start"]
            left = state["total"] - state["position"]
            eta = f"; about {duration(elapsed * left / state['position'])} left" if 0 < state["position"] and left > 0 else ""
            click.echo(f"{job.layer}: {len(records)} {job.variant} picture{'s' if len(records) != 1 else ''} "
                       f"({elapsed:.0f} s{eta})", err=True)

        summary = execute_workers(work, n, progress=track, on_job=line)
    else:
        with click.progressbar(length=todo * 100, label=f"maximize {todo} filters", show_eta=True,
                               item_show_func=lambda _: None, file=sys.stderr) as bar:
            state = {"done": 0}

            def progress(done, _total):
                position = int(done * 100)
                bar.update(max(0, position - state["done"]))
                state["done"] = max(state["done"], position)
                bar.label = f"maximize {int(done)}/{todo} filters"

            summary = execute_workers(work, n, progress=progress)
    parts = [f"{summary.written} image(s) written", f"{summary.skipped} already finished"]
    if summary.dead:
        parts.append(f"{summary.dead} dead (see --retries)")
    if summary.flat:
        parts.append(f"{summary.flat} flat (negligible kernel or response; see the records' reason)")
    if summary.off:
        parts.append(f"{summary.off} off-unit(s) (they answer most to a silent input: draw what switches them off "
                     f"with --negative)")
    if summary.nonfinite:
        parts.append(f"{summary.nonfinite} stopped on NaN/inf")
    if not quiet:
        click.echo(f"{', '.join(parts)}; manifest: {os.path.join(output, 'manifest.json')}")
