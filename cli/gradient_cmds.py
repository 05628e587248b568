"""Commands on input gradients: ``saliency`` and ``receptive-field``."""

from __future__ import annotations

import json
import os

import click


from .app import main
from .options import device_option, finite_float, json_option, layer_option, model_options, output_option, seed_option
from cnnvis.attribution.gradients import METHODS, saliency as attribute, save_saliency
from cnnvis.core.io import save_json
from cnnvis.attribution.receptive import measure_effective, merge_effective, receptive_fields, save_effective_fields


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _pair(v) -> str:
    if v is None:
        return "-"
    return _num(v[0]) if v[0] == v[1] else f"{_num(v[0])}x{_num(v[1])}"


@main.command(epilog="\b\nExamples:\n  cnnvis saliency lenet-digits digit.png\n"
              "  cnnvis saliency resnet18 cat.jpg --target 'tabby cat' --method smoothgrad --samples 50\n"
              "  cnnvis saliency vgg16 cat.jpg --unit features.28:5 --method guided-backprop -o out/sal\n"
              "  cnnvis saliency resnet18 cat.jpg --unit layer3.0.conv1:7:4:4 --method integrated-gradients "
              "--baseline mean\n"
              "  cnnvis saliency mynets:make_net photo.png --size 64 --json")
@model_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--target", metavar="CLASS", help="class index or name to explain; default the predicted class.")
@click.option("--unit", metavar="LAYER:CHANNEL[:Y:X]",
              help="explain an internal unit instead: a channel's total activation, or one position of it.")
@click.option("--method", type=click.Choice(METHODS), default="saliency", show_default=True, help="captum method.")
@click.option("--samples", type=click.IntRange(min=1), default=25, show_default=True,
              help="smoothgrad: number of noisy copies.")
@click.option("--noise", type=finite_float(min=0), default=0.15, show_default=True,
              help="smoothgrad: noise standard deviation, in units of the [0, 1] input range.")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="integrated-gradients: integration steps.")
@click.option("--baseline", default="black", show_default=True, metavar="B",
              help="integrated-gradients: black, white, mean (the normalisation mean), or a grey level in [0, 1].")
@click.option("--signed", is_flag=True, help="saliency, smoothgrad: keep the gradient's sign (captum abs=False).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, metavar="N",
              help="noisy copies / integration steps per forward pass.")
@output_option(default="cnnvis-out/saliency")
@device_option
@seed_option
@json_option
def saliency(model, image, target, unit, method, samples, noise, steps, baseline, signed, batch_size, output,
             device, seed, as_json):
    """Attribute a class score or an internal unit of MODEL to the pixels of IMAGE.

    The derivative is taken with respect to the image in [0, 1] as the model sees it (resized,
    cropped, grey or RGB); normalisation runs inside the model. --unit LAYER:CHANNEL explains the
    channel's activation summed over positions (the derivative of the response of a filter with
    respect to the input), LAYER:CHANNEL:Y:X one spatial unit.

    saliency and smoothgrad give |gradient| (captum's convention) unless --signed. guided-backprop
    needs the model's ReLUs to be nn.ReLU modules and refuses otherwise.

    Writes DIR/<image>.<method>.<target>.npy (the raw attribution, C x H x W like the prepared
    image), .png (heatmap of |attribution| summed over channels), .overlay.png (heatmap over the
    image) and .json (target, method, parameters, score, prediction).

    MODEL is a zoo name (lenet-digits, efficientnet-lite0, efficientnet-lite1), a torchvision name (vgg16,
    resnet18, …), package.module:callable returning an nn.Module, or a TorchScript file.
    """
    if target is not None and unit is not None:
        raise click.UsageError("give --target or --unit, not both")
    lm = model.load()
    result = attribute(lm, image, target=target, unit=unit, method=method, samples=samples, noise=noise,
                       steps=steps, baseline=baseline, abs=not signed, seed=seed, batch_size=batch_size)
    stem = os.path.splitext(os.path.basename(image))[0]
    record = {"model": lm.name, "weights": lm.weights, "image": os.path.abspath(image)}
    paths = save_saliency(result, output, stem, record)
    if as_json:
        with open(paths["json"]) as f:
            click.echo(f.read(), nl=False)
        return
    c, h, w = result.image.shape
    click.echo(f"{lm.name}  weights: {lm.weights}  input: {c}x{h}x{w}")
    if result.output not in ("tensor", "unused"):
        click.echo(f"output: model(x){result.output} (the part of the model's output that holds the class scores)")
    if result.predicted is not None:
        name = f" ({result.predicted_name})" if result.predicted_name else ""
        click.echo(f"predicted: class {result.predicted}{name}")
    if result.target.kind == "class":
        click.echo(f"target: {result.target}, score {result.score:.4g}")
    else:
        what = "one position" if result.target.unit.y is not None else "channel summed over positions"
        click.echo(f"target: {result.target} ({what}), value {result.score:.4g}")
    settings = ", ".join(f"{k} {v}" for k, v in result.params.items())
    click.echo(f"method: {method}" + (f" ({settings})" if settings else ""))
    click.echo(f"wrote {paths['npy']} (raw attribution, {c}x{h}x{w})")
    for kind in ("heatmap", "overlay", "json"):
        click.echo(f"      {paths[kind]}")


@main.command("receptive-field",
              epilog="\b\nExamples:\n  cnnvis receptive-field vgg16 --weights none -l 'type:Conv2d'\n"
              "  cnnvis receptive-field resnet18 --weights none -l 'layer*.1.conv2' --effective\n"
              "  cnnvis receptive-field lenet-digits --effective --samples 32 -o out/rf\n"
              "  cnnvis receptive-field googlenet --weights none --json")
@model_options
@layer_option(help="only these layers (names, globs, type:NAME); default every layer that runs.")
@click.option("--effective", is_flag=True,
              help="also measure the effective field: the centre unit's input gradient over random inputs.")
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True, help="random inputs for --effective.")
@output_option()
@device_option
@seed_option
@json_option
def receptive_field(model, layers, effective, samples, output, device, seed, as_json):
    """Receptive field of each layer of MODEL: theoretical, and with --effective measured.

    \b
    size   input pixels one unit can see (conv/pool arithmetic: kernel, stride,
           padding, dilation), following the real graph: residual adds and
           concatenations take the widest branch
    jump   input pixels between neighbouring units (the effective stride)
    start  centre of unit (0, 0) in input pixel coordinates (pixel i at i)
    global the layer sees the whole input (after flatten, Linear, global pooling)

    --effective measures the side of the square, around the centre unit, that holds 95%
    of its input-gradient mass averaged over --samples random inputs (with the weights as
    loaded): far smaller than the theoretical size, and growing with depth. -o DIR writes
    DIR/erf-<layer>.png (the gradient map, theoretical field in white, 95% square in cyan),
    erf-<layer>.npy and receptive-field.json; it implies --effective.
    """
    lm = model.load()
    rows = receptive_fields(lm, list(layers) or None, size=model.size)
    if effective or output:
        measured = measure_effective(lm, [r for r in rows if r.has_centre], samples=samples, seed=seed)
        rows = merge_effective(rows, measured)
        if output:
            images = save_effective_fields(measured, output)
    dicts = [r.to_dict() for r in rows]
    if output:
        for d in dicts:
            if d["name"] in images:
                d["image"] = os.path.basename(images[d["name"]])
        save_json({"model": lm.name, "weights": lm.weights, "samples": samples, "seed": seed, "layers": dicts},
                  os.path.join(output, "receptive-field.json"))
    if as_json:
        click.echo(json.dumps(dicts, indent=2))
        return
    h, w = rows[0].input_size if rows else lm.preprocessing.input_size()
    click.echo(f"{lm.name}  weights: {lm.weights}  input: {lm.preprocessing.channels}x{h}x{w}")
    header = ["name", "type", "output", "size", "jump", "start"] + (["effective"] if effective or output else [])
    table = []
    for r in rows:
        size = f"{_pair(r.size)} global" if r.is_global else _pair(r.size)
        line = [r.name, r.type, "x".join(map(str, r.output_shape)), size, _pair(r.jump), _pair(r.start)]
        if len(header) > 6:
            line.append("-" if r.effective is None else _num(r.effective))
        table.append(line)
    widths = [max([len(hd)] + [len(t[i]) for t in table]) for i, hd in enumerate(header)]
    fmt = "  ".join(f"{{:{'>' if i >= 3 else '<'}{wd}}}" for i, wd in enumerate(widths))
    click.echo(fmt.format(*header))
    for t in table:
        click.echo(fmt.format(*t))
    if output:
        click.echo(f"wrote {os.path.join(output, 'receptive-field.json')} and {len(images)} erf-<layer>.png images")
