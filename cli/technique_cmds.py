"""Techniques on a photograph: ``accentuate``, ``dream``, ``caricature`` (thin layers over cnnvis.synthesis.techniques)."""

from __future__ import annotations

import click

from cnnvis.synthesis.objectives import UNIT_OBJECTIVES

from .app import main
from .options import (ascent_options, device_option, force_option, layer_option, model_options, output_option,
                      quiet_option, seed_option)
from cnnvis.core.errors import InputError
from cnnvis.synthesis.techniques import PARAMS, run_technique, technique_defaults

#: each technique's defaults, as the library has them (the help shows them; they are written only there)
_A, _D, _C = (technique_defaults(t) for t in ("accentuate", "dream", "caricature"))


def _layer(layers) -> str:
    if len(layers) != 1:
        raise InputError(f"give exactly one layer with -l (got {len(layers)})")
    return layers[0]


#: The end of the three commands' help: where a photo's result goes.
_PHOTO_FILES = """
    IMAGE is resized, cropped and converted as the model expects. Writes DIR/<layer>/<variant>/NNNN.png
    and its record in DIR/manifest.json; the variant names the technique and a hash of the photo, so
    photos never overwrite each other. Re-running with the same model, photo, settings and seed does
    nothing (--force recomputes).
"""


def _common(f):
    """--force, --seed, --device and -q, shared by the three commands, and the end of their help."""
    f.__doc__ = f.__doc__.rstrip() + "\n" + _PHOTO_FILES
    f = quiet_option(f)
    f = device_option(f)
    f = seed_option(f)
    f = force_option("recompute even when DIR already holds this result.")(f)
    return f


def _run(model, technique: str, image: str, layer: str, output: str, quiet: bool, *, unit=None, seed=0,
         force=False, describe=None, **options):
    """Run ``technique`` into ``output`` with a progress bar, and print one line."""
    import os

    from .options import progress_bar

    lm = model.load()
    bar = progress_bar(1000, quiet, technique)
    state = {"done": 0}

    def progress(done, total):
        if bar is None:
            return
        position = int(1000 * done / max(total, 1))
        bar.update(max(0, position - state["done"]))
        state["done"] = max(state["done"], position)

    if bar is not None:
        bar.__enter__()
    try:
        saved = run_technique(lm, technique, image, layer, output, unit=unit, seed=seed, force=force,
                              progress=progress, **{k: v for k, v in options.items() if v is not None})
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    path = os.path.relpath(saved.path) if not os.path.isabs(output) else saved.path
    if saved.skipped:
        click.echo(f"already finished: {path} (same model, photo, settings and seed; --force recomputes)")
    else:
        rec = saved.record
        click.echo(f"wrote {path} ({describe(rec)}; {rec['seconds']:.1f} s)")


@main.command(epilog="\b\nExamples:\n"
              "  cnnvis accentuate efficientnet-lite0 cat.jpg -l blocks.10 --filter 96\n"
              "  cnnvis accentuate efficientnet-lite0 cat.jpg -l fc --filter 292      # the 'tiger' logit\n"
              "  cnnvis accentuate efficientnet-lite0 cat.jpg -l blocks.10 --filter 96 --layer-reg blocks.5 "
              "--reg-weight 2\n"
              "  cnnvis accentuate lenet-digits seven.png -l conv2 --filter 3 --param pixel -o out/acc")
@model_options
@click.argument("image", type=click.Path(dir_okay=False))
@layer_option(required=True, help="the unit's layer (one; a logit layer such as fc works too).")
@click.option("--filter", "unit", type=click.IntRange(min=0), required=True, metavar="D",
              help="the unit: channel D of the layer.")
@click.option("--layer-reg", metavar="LAYER2",
              help="the layer whose activations stay close to the photo's [one resolution stage below the unit's layer].")
@click.option("--reg-weight", type=click.FloatRange(min=0), metavar="A",
              help=f"scales the automatically balanced weight of the closeness term [{_A['reg_weight']:g}; 0 turns it off].")
@click.option("--objective", type=click.Choice(list(UNIT_OBJECTIVES)),
              help="the unit's response [channel-mean; neuron: the centre position].")
@click.option("--param", type=click.Choice(list(PARAMS)),
              help="fourier: a Fourier image initialised at the photo [default]; pixel: raw pixels.")
@ascent_options(f"Adam steps [{_A['steps']}].", f"Adam learning rate [{_A['lr']}].")
@_common
@output_option(default="cnnvis-out/accentuate")
def accentuate(model, image, layers, unit, layer_reg, reg_weight, objective, param, steps, lr, force, seed, device,
               quiet, output):
    """Accentuate one unit in a photograph (Hamblin et al. 2024): what in IMAGE does the unit want more of?

    Starting from IMAGE, raise the response of channel D of LAYER while keeping the activations of
    --layer-reg close to the photo's: maximise f(x) - A*lam*D(x), where D is the mean over positions
    of the distance between activation vectors and lam makes the two gradients equal (L1 norm) at
    the first step. Each step sees a mild random jitter, scale and rotation.

    \b
    The line printed gives the response before -> after and how far the image moved
    (RMS pixel change in [0, 1] units).

    """
    def describe(rec):
        return (f"response {rec['objective_initial']:.4g} -> {rec['objective_final']:.4g}, kept {rec['layer_reg']} "
                f"close: pixel RMS change {rec['pixel_distance']:.3f}")

    _run(model, "accentuate", image, _layer(layers), output, quiet, unit=unit, seed=seed, force=force,
         describe=describe, layer_reg=layer_reg, reg_weight=reg_weight, objective=objective, param=param,
         steps=steps, lr=lr)



@main.command(epilog="\b\nExamples:\n"
              "  cnnvis dream efficientnet-lite0 cat.jpg -l blocks.10\n"
              "  cnnvis dream efficientnet-lite0 cat.jpg -l blocks.5 --octaves 5 --octave-scale 1.3 --steps 20\n"
              "  cnnvis dream efficientnet-lite0 cat.jpg -l blocks.10 --size 320 -o out/dream\n"
              "  cnnvis dream lenet-digits seven.png -l conv2 --octaves 2")
@model_options
@click.argument("image", type=click.Path(dir_okay=False))
@layer_option(required=True, help="the layer to amplify (one, with spatial output).")
@click.option("--octaves", type=click.IntRange(min=1),
              help=f"scales, each --octave-scale smaller than the last [{_D['octaves']}].")
@click.option("--octave-scale", type=click.FloatRange(min=1, min_open=True), metavar="S",
              help=f"size ratio between octaves [{_D['octave_scale']}].")
@ascent_options(f"steps per octave [{_D['steps']}].", "mean pixel change per step, in [0, 1] units (the gradient is "
                f"divided by its mean |g|) [{_D['lr']}].")
@click.option("--jitter", type=click.IntRange(min=0), help=f"largest random roll in pixels per step [{_D['jitter']}].")
@_common
@output_option(default="cnnvis-out/dream")
def dream(model, image, layers, octaves, octave_scale, steps, lr, jitter, force, seed, device, quiet, output):
    """DeepDream: amplify everything LAYER responds to in IMAGE, over octaves.

    The classic recipe (Mordvintsev et al. 2015): gradient ascent on ||h_layer(x)||_2 from the
    photo, smallest octave first; each step rolls the image by a random offset, steps along the
    gradient divided by its mean absolute value and clips to [0, 1]; the detail an octave added is
    carried up to the next. Octaves too small for the network to reach LAYER are left out.

    """
    def describe(rec):
        sizes = ", ".join(f"{h}x{w}" for h, w in rec["octave_sizes"])
        return (f"||{rec['layer']}|| {rec['objective_initial']:.4g} -> {rec['objective_final']:.4g} "
                f"(x{rec['response_ratio']:.2f}), octaves {sizes}")

    _run(model, "dream", image, _layer(layers), output, quiet, seed=seed, force=force, describe=describe,
         octaves=octaves, octave_scale=octave_scale, steps=steps, lr=lr, jitter=jitter)



@main.command(epilog="\b\nExamples:\n"
              "  cnnvis caricature efficientnet-lite0 cat.jpg -l blocks.10\n"
              "  cnnvis caricature efficientnet-lite0 cat.jpg -l blocks.15 --steps 192 -o out/car\n"
              "  cnnvis caricature lenet-digits seven.png -l conv2 --cossim-pow 2")
@model_options
@click.argument("image", type=click.Path(dir_okay=False))
@layer_option(required=True, help="the layer whose view of the photo to render (one).")
@click.option("--cossim-pow", type=click.FloatRange(min=0), metavar="P",
              help=f"weight of direction over magnitude: dot x cos^P [{_C['cossim_pow']:g}].")
@click.option("--param", type=click.Choice(list(PARAMS)), help="fourier (lucid's image) [default] or pixel.")
@ascent_options(f"Adam steps [{_C['steps']}].", f"Adam learning rate [{_C['lr']}].")
@_common
@output_option(default="cnnvis-out/caricature")
def caricature(model, image, layers, cossim_pow, param, steps, lr, force, seed, device, quiet, output):
    """Caricature: what LAYER "sees" in IMAGE, synthesised from noise.

    Maximises (h(x) . h(photo)) / ||h(photo)||^2 * max(cos, 0.1)^P over the layer's whole activation
    tensor, so every position has its own target (lucid's recipe), with lucid's Fourier image and
    random jitter/scale/rotation applied identically to the photo. The photo itself scores 1.

    \b
    The line printed gives the cosine between the layer's activations for the result and
    for the photo.

    """
    def describe(rec):
        return (f"cosine with the photo at {rec['layer']} {rec['cosine_initial']:.3f} -> {rec['cosine_final']:.3f}, "
                f"score {rec['objective_final']:.3g}")

    _run(model, "caricature", image, _layer(layers), output, quiet, seed=seed, force=force, describe=describe,
         cossim_pow=cossim_pow, param=param, steps=steps, lr=lr)

