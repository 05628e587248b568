"""``cnnvis gallery``: a static HTML site of a model's layers and units (a thin layer over cnnvis.atlas.galleries)."""

from __future__ import annotations

import os
import sys
import time

import click

from cnnvis.synthesis.objectives import UNIT_OBJECTIVES

from .app import main
from .options import (ascent_options, batch_options, device_option, diversity_options, early_stop_option, force_option,
                      layer_option, model_options, parallel_options, quiet_option, seed_option)
from cnnvis.core.errors import BadImageError
from cnnvis.atlas.galleries import DEFAULT_STEPS, GalleryRequest, LARGE_STEPS
from cnnvis.gallery.site import build_gallery
from cnnvis.core.io import safe_name

EXAMPLES = """\b
Examples:
  cnnvis gallery lenet-digits                       # a minute; open cnnvis-gallery/lenet-digits/index.html
  cnnvis gallery efficientnet-lite0                 # the main job: 16 units of 6 layers, examples, circuits
  cnnvis gallery efficientnet-lite0 --negative --neuron --diversity 4   # the whole Distill appendix per unit
  cnnvis gallery efficientnet-lite0 --score         # both interpretability scores on every unit page
  cnnvis gallery vgg16 -l features.0 -l features.10 --filters 0-31 --images photos/ -o vgg16-gallery
  cnnvis gallery resnet18 --weights none --preset both --steps 128 --size 96
  cnnvis gallery efficientnet-lite0 --shard 0/2 & cnnvis gallery efficientnet-lite0 --shard 1/2   # two processes
"""


def _reporter(quiet: bool):
    """A progress bar on a terminal; elsewhere (a log file, CI) one line per finished layer and phase."""
    stream = sys.stderr
    tty = stream.isatty()
    state = {"bar": None, "done": 0, "start": time.perf_counter()}

    def progress(done, total):
        if quiet or not tty or not total:
            return
        if state["bar"] is None:  # hundredths of a picture, so the bar and its ETA move while a batch optimises
            state["bar"] = click.progressbar(length=int(total * 100), label=f"{int(total)} pictures and examples",
                                             show_eta=True, file=stream)
            state["bar"].__enter__()
            state["start"] = time.perf_counter()
        position = int(done * 100)
        state["bar"].update(max(0, position - state["done"]))
        state["done"] = max(state["done"], position)

    def log(line):
        if quiet:
            return
        if tty and state["bar"] is not None:
            return  # the bar says it
        click.echo(line, err=True)

    def close():
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)

    return progress, log, close


@main.command(epilog=EXAMPLES)
@model_options
@layer_option(help="layers to show (names, globs, type:NAME); default: the first convolution of each resolution "
              "stage and the last convolution.")
@click.option("--filters", default="16", show_default=True, metavar="N|SPEC",
              help="the first N filters of each layer, or a spec like 0-31, 3,7,9 or all.")
@click.option("--preset", type=click.Choice(["robust", "maco", "plain", "both"]), default="robust", show_default=True,
              help="how pictures are made (see cnnvis maximize -h); both shows robust and plain side by side.")
@click.option("--objective", type=click.Choice(list(UNIT_OBJECTIVES)), default="channel-relu", show_default=True,
              help="what each picture maximises: channel-relu, the positive response after the layer's batch norm "
              "(what the next layer sees); channel-l2, ||h||_2 of the map (the textbook); channel-mean; neuron.")
@ascent_options(f"optimisation steps at most (each picture stops when its objective stops rising); one number for "
                f"every picture. [default: {DEFAULT_STEPS}, and {LARGE_STEPS} for pictures of 224×224 pixels or more, "
                f"whose steps cost most; strongest inputs half]", "step size, overriding the preset's.")
@click.option("--canvas", type=click.Choice(["layer", "input"]), default="layer", show_default=True,
              help="layer: each layer's pictures a few receptive fields wide (a first layer's at the scale of its "
              "kernel); input: every picture at the model's input size. --size overrides both.")
@click.option("--negative", is_flag=True, help="add each unit's negative picture (the unit switched off).")
@click.option("--neuron", is_flag=True, help="add each unit's neuron picture (its centre position).")
@diversity_options(0, "add K diverse pictures per unit (lucid's diversity term; 4 as in the Distill appendix).",
                   "strength of the diversity term.")
@click.option("--images", multiple=True, type=click.Path(exists=True), metavar="DIR",
              help="image files/folders for the dataset examples and statistics [default: crops of the photographs "
              "that scikit-image and scikit-learn ship].")
@click.option("--no-examples", is_flag=True, help="no dataset examples or statistics (with no --images).")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(min=1),
              help="dataset examples per unit at each end (strongest, weakest).")
@click.option("--inputs", default=3, show_default=True, type=click.IntRange(min=0), metavar="K",
              help="strongest inputs per unit on each side (excitatory, inhibitory), each drawn; 0: none.")
@click.option("--classes", default=4, show_default=True, type=click.IntRange(min=0), metavar="K",
              help="class pictures closing the index: the model's top classes on the image set; 0: none.")
@click.option("--skip-bad", is_flag=True, help="skip image files that cannot be read (and say so) instead of stopping.")
@click.option("--score/--no-score", default=None,
              help="each unit's interpretability scores (MIS, see cnnvis score -h). Default: the natural-reference "
              "score when the similarity model is installed (pip install 'cnnvis[score]'), the synthetic one for "
              "units with a negative picture; --score also makes every unit's negative picture and requires the "
              "similarity model.")
@click.option("--similarity", default=None, metavar="MODEL",
              help="the similarity model of the scores [default: efficientnet-lite1, or efficientnet-lite0 for Lite1].")
@batch_options("filters optimised together (also the unit of sharding); auto is 8 on a CPU.",
               "restart a filter that is dead for its starting image up to K times from fresh noise.")
@early_stop_option("run every step, even after a picture's objective stopped rising.")
@parallel_options("compute only share i of n (0-based); default from RANK/WORLD_SIZE under torchrun.")
@force_option("recompute units already finished (and rebuild a damaged manifest).")
@click.option("-o", "--output", type=click.Path(file_okay=False), metavar="DIR",
              help="output folder  [default: cnnvis-gallery/<model>]")
@seed_option
@device_option
@quiet_option
def gallery(model, layers, filters, preset, objective, steps, lr, canvas, negative, neuron, diversity, diversity_weight, images,
            no_examples, top_k, inputs, classes, skip_bad, score, similarity, batch_size, retries, no_early_stop, workers, shard, force, output,
            seed, device, quiet):
    """Build a static HTML gallery of MODEL: layers -> the grid of a layer's pictures -> a page per unit.

    Each unit (layer, filter) gets its picture (what excites it most), and on request its negative,
    neuron and diverse pictures; the ten image crops it answers to most and least, with its saliency
    on each; the units of the previous layer it listens to most, each with its own picture; its
    kernel, statistics and every setting. Re-running computes only what is missing (Ctrl-C is safe:
    files are written whole), and several --shard runs can write into one folder. The site opens
    from the file system: no server, no network.

    --size sets the size the network sees (default: the model's input size).
    """
    lm = model.load()
    output = output or os.path.join("cnnvis-gallery", safe_name(lm.name))
    request = GalleryRequest(layers=tuple(layers) or None, filters=filters, preset=preset, objective=objective,
                             steps=steps, size=model.size, lr=lr, negative=negative, neuron=neuron,
                             diversity=diversity, diversity_weight=diversity_weight, images=tuple(images),
                             examples=not no_examples, top_k=top_k, inputs=inputs, classes=classes, skip_bad=skip_bad,
                             seed=seed, shard=shard, force=force, batch_size=batch_size, retries=retries,
                             early_stop=not no_early_stop, canvas=canvas, workers=workers, score=score,
                             similarity=similarity)
    progress, log, close = _reporter(quiet)
    try:
        summary = build_gallery(lm, output, request, progress=progress, log=log)
    except BadImageError as exc:  # this command has a way past bad files too
        raise exc.with_advice("remove it or use --skip-bad") from None
    finally:
        close()
    for path, why in summary.skipped_files:
        click.echo(f"skipped: {why}", err=True)
    i, n = summary.shard
    where = f" (shard {i}/{n})" if n > 1 else ""
    kinds = "".join([f", {summary.off} off-unit{'s' if summary.off != 1 else ''} (drawn switched off)" if summary.off else "",
                     f", {summary.flat} flat" if summary.flat else ""])
    click.echo(f"{summary.units} units{where}: {summary.computed} computed, {summary.skipped} already finished"
               f"{kinds}, {summary.pages} pages written in {summary.seconds:.0f} s -> {os.path.join(output, 'index.html')}")
