"""Commands that look inside a model: ``filters``, ``activations``, ``stats``."""

from __future__ import annotations

import json

import click

from .app import main
from .options import (device_option, filters_option, json_option, layer_option, model_options, output_option,
                      progress_bar, quiet_option)
from cnnvis.inspection.activations import compute_activations, save_activations
from cnnvis.core.errors import BadImageError
from cnnvis.inspection.filters import render_filters, save_filters
from cnnvis.core.io import find_images
from cnnvis.model.layers import resolve_layers
from cnnvis.inspection.stats import compute_stats, save_stats


def _progress_bar(total: int, quiet: bool, label: str):
    """A click progress bar on stderr when it is a terminal (so --json output stays clean); else none."""
    return progress_bar(total, quiet, label, show_eta=True, show_pos=True)


@main.command(epilog="\b\nExamples:\n  cnnvis filters lenet-digits -l conv1 -l conv2\n"
              "  cnnvis filters efficientnet-lite0 -l conv_stem -o out/filters\n"
              "  cnnvis filters vgg16 --weights none -l features.28 --filters 0-15 --scale layer")
@model_options
@layer_option(required=True, help="convolution layer(s) whose kernels to show; repeatable.")
@filters_option()
@click.option("--scale", type=click.Choice(["filter", "layer"]), default="filter", show_default=True,
              help="normalise each filter on its own, or the whole layer with one scale so magnitudes compare.")
@click.option("--zoom", type=click.IntRange(min=1), default=None, metavar="K",
              help="enlarge each weight to KxK pixels (default: about 96 px per filter).")
@output_option(default="cnnvis-out/filters")
@device_option
def filters(model, layers, filters, scale, zoom, output, device):
    """Show the kernels of convolution layers as images.

    Kernels with 3 input channels (the first layer of an RGB model) become colour images,
    0.5 + w / (2 max|w|): grey is zero. Other kernels become a grid per filter of their
    input-channel slices in a diverging colormap centred on zero (blue < 0 < red).

    Writes, per layer, DIR/<layer>/filters.png (the whole layer), filter-NNNN.png per
    filter, and weight.npy (exactly the layer's weight).
    """
    lm = model.load()
    for layer in resolve_layers(lm, layers):
        result = render_filters(lm, layer, filters, scale)
        paths = save_filters(result, output, zoom)
        click.echo(f"{layer}: {len(result.indices)} filters ({result.mode}, {result.weight.shape[1]} input channels, "
                   f"{result.weight.shape[2]}x{result.weight.shape[3]}) -> {paths['grid']}")


@main.command(epilog="\b\nExamples:\n  cnnvis activations lenet-digits digit.png -l conv1 -l conv2\n"
              "  cnnvis activations efficientnet-lite0 cat.jpg -l 'blocks.*.project_conv' -o out/acts\n"
              "  cnnvis activations mynets:make_net photo.png -l conv1 --size 64")
@model_options
@click.argument("image", type=click.Path(dir_okay=False))
@layer_option(required=True)
@click.option("--scale", type=click.Choice(["channel", "layer"]), default="channel", show_default=True,
              help="stretch each channel's panel on its own, or share one range across the layer.")
@output_option(default="cnnvis-out/activations")
@device_option
def activations(model, image, layers, scale, output, device):
    """Show one image's feature maps at the given layers.

    The image is resized, cropped and converted (grey/RGB) as the model expects. Writes
    DIR/input.png (the input as the model saw it) and per layer DIR/<layer>.png (a panel
    per channel; a bar chart for layers without spatial output) and DIR/<layer>.npy (the raw
    output without the batch dimension).
    """
    lm = model.load()
    x, outputs = compute_activations(lm, image, layers)
    paths = save_activations(x, outputs, output, scale)
    for name, act in outputs.items():
        shape = "x".join(str(s) for s in act.shape)
        click.echo(f"{name}: {shape}, min {act.min():.4g}, max {act.max():.4g} -> {paths['layers'][name]['png']}")


@main.command(epilog="\b\nExamples:\n  cnnvis stats lenet-digits digits/ -l conv1 -l conv2 --json\n"
              "  cnnvis stats efficientnet-lite0 imagenet-val/ -l 'type:Conv2d' --limit 500 -o out/stats\n"
              "  cnnvis stats resnet18 a.jpg b.jpg c.jpg -l layer4 --top-k 3 --skip-bad")
@model_options
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@layer_option(required=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="use at most N images (in sorted order).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--top-k", type=click.IntRange(min=0), default=8, show_default=True, help="top-activating inputs kept per channel.")
@click.option("--skip-bad", is_flag=True, help="skip files that are not images (and report them) instead of stopping.")
@json_option
@output_option()
@quiet_option
@device_option
def stats(model, inputs, layers, limit, batch_size, top_k, skip_bad, as_json, output, quiet, device):
    """Per-channel activation statistics over a population of images.

    INPUTS are image files and folders (searched recursively; an ImageFolder tree works).
    Per layer and channel, over every image and position: mean, std (ddof 0), min, max,
    fraction_active (share > 0), count (images) and the top-k inputs by spatial mean.
    One batch is in memory at a time.

    --json prints {"<layer>": {"count", "mean", "std", "min", "max", "fraction_active",
    "top"}} to stdout; -o DIR writes DIR/stats.json and per layer a histogram and a
    per-channel chart.
    """
    if not as_json and not output:
        raise click.UsageError("say where the statistics go: --json (stdout) and/or -o DIR")
    lm = model.load()
    try:
        total = len(find_images(inputs, skip_bad=skip_bad))
        total = min(total, limit) if limit else total
        bar = _progress_bar(total, quiet, "images")
        last = [0]

        def progress(done, _total):
            if bar is not None:
                bar.update(done - last[0])
                last[0] = done

        try:
            if bar is not None:
                bar.__enter__()
            result = compute_stats(lm, inputs, layers, batch_size=batch_size, limit=limit, top_k=top_k,
                                   skip_bad=skip_bad, progress=progress)
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    except BadImageError as exc:  # this command has a way past bad files
        raise exc.with_advice("remove it or use --skip-bad") from None
    for path, why in result.skipped:
        click.echo(f"skipped: {why}", err=True)
    if output:
        paths = save_stats(result, output)
        click.echo(f"wrote {paths['json']} and {2 * len(result.layers)} plots", err=as_json)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
