"""``cnnvis gallery``: a static HTML site of a model's layers and filters (a thin layer over cnnvis.galleries)."""

from __future__ import annotations

import os

import click

from cnnvis.objectives import UNIT_OBJECTIVES

from . import main
from .maximize_cmd import _batch_size
from .options import device_option, layer_option, model_options, quiet_option, seed_option

EXAMPLES = """\b
Examples:
  cnnvis gallery lenet-digits                                  # about a minute; open cnnvis-gallery/lenet-digits/index.html
  cnnvis gallery efficientnet-lite0                            # the default: 16 filters of 5 stage layers, robust preset
  cnnvis gallery vgg16 -l features.0 -l features.10 --filters 0-31 --images photos/ -o vgg16-gallery
  cnnvis gallery resnet18 --preset both --steps 128 --size 96
  cnnvis gallery efficientnet-lite0 --shard 0/2 & cnnvis gallery efficientnet-lite0 --shard 1/2   # two processes
"""


@main.command(epilog=EXAMPLES)
@model_options
@layer_option(help="layers to show (names, globs, type:NAME); default: the first convolution of each resolution stage.")
@click.option("--filters", default="16", show_default=True, metavar="N|SPEC",
              help="the first N filters of each layer, or a spec like 0-31, 3,7,9 or all.")
@click.option("--preset", type=click.Choice(["robust", "plain", "both"]), default="robust", show_default=True,
              help="how maximum-response images are made (see cnnvis maximize -h); both shows the two side by side.")
@click.option("--objective", type=click.Choice(list(UNIT_OBJECTIVES)), default="channel-l2",
              show_default=True, help="what each image maximises: ||h||_2 of the filter's map (the textbook), its "
              "mean (the positive response only), or the centre unit.")
@click.option("--steps", type=click.IntRange(min=0), help="optimisation steps [robust 512, plain 256].")
@click.option("--images", multiple=True, type=click.Path(exists=True), metavar="DIR",
              help="image files/folders: adds activation statistics, top-activating images and their saliency.")
@click.option("--top-k", default=4, show_default=True, type=click.IntRange(min=1), help="top-activating images per unit.")
@click.option("--batch-size", default="auto", show_default=True, callback=_batch_size, metavar="B|auto",
              help="filters optimised together (also the unit of sharding); auto is 8 on a CPU.")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(min=0), metavar="K",
              help="restart a filter that is dead for its starting noise up to K times from fresh noise.")
@click.option("--shard", metavar="i/n", help="compute only share i of n (0-based); default from RANK/WORLD_SIZE under torchrun.")
@click.option("--force", is_flag=True, help="recompute units already finished.")
@click.option("-o", "--output", type=click.Path(file_okay=False), metavar="DIR",
              help="output folder  [default: cnnvis-gallery/<model>]")
@seed_option
@device_option
@quiet_option
def gallery(model, layers, filters, preset, objective, steps, images, top_k, batch_size, retries, shard, force, output, seed, device,
            quiet):
    """Build a static HTML gallery of MODEL: layers -> a grid of filters per layer -> a page per filter.

    Each unit (layer, filter) gets its maximum-response image(s), its kernel, and with
    --images its activation statistics and top-activating images with the unit's saliency on
    each. Re-running computes only what is missing (Ctrl-C is safe: files are written whole),
    and several --shard runs can write into one folder. The site opens from the file system:
    no server, no network.

    --size sets the size the network sees (default: the model's input size for statistics;
    128 for the robust preset's images).
    """
    from cnnvis.galleries import GalleryRequest, build_gallery
    from cnnvis.io import safe_name

    lm = model.load()
    output = output or os.path.join("cnnvis-gallery", safe_name(lm.name))
    bar = None
    state = {"done": 0}

    def progress(done, total):
        nonlocal bar
        if quiet or total == 0:
            return
        if bar is None:  # hundredths of a unit, so the bar and its ETA move while a batch optimises
            bar = click.progressbar(length=total * 100, label=f"{total} units", show_eta=True,
                                    file=click.get_text_stream("stderr"))
            bar.__enter__()
        position = int(done * 100)
        bar.update(max(0, position - state["done"]))
        state["done"] = max(state["done"], position)

    try:
        request = GalleryRequest(layers=tuple(layers) or None, filters=filters, preset=preset, objective=objective,
                                 steps=steps, size=model.size, images=tuple(images), seed=seed, shard=shard,
                                 force=force, batch_size=batch_size, retries=retries, top_k=top_k)
        summary = build_gallery(lm, output, request, progress=progress)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    i, n = summary.shard
    where = f" (shard {i}/{n})" if n > 1 else ""
    click.echo(f"{summary.units} units{where}: {summary.computed} computed, {summary.skipped} already finished, "
               f"{summary.pages} pages written in {summary.seconds:.0f} s -> {os.path.join(output, 'index.html')}")
