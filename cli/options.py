"""Option decorators shared by the commands, and the request objects they build.

Commands stay small: ``@model_options`` gathers MODEL, --weights, --size, --mean, --std
into one ``model`` argument (a :class:`ModelRequest`) that loads on first use.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Optional

import click
from cnnvis.model.loading import load_model, resolve_device
from cnnvis.model.preprocess import parse_floats

MODEL_HELP = (
    "MODEL is a zoo name (lenet-digits, efficientnet-lite0, efficientnet-lite1), a torchvision name (vgg16, resnet18, …), "
    "package.module:callable returning an nn.Module, or a TorchScript file."
)


class NotNormalised(UserWarning):
    """A user's own model is fed [0, 1] inputs as they are (said once, after the command succeeds)."""


@dataclass
class ModelRequest:
    """What the user asked for on the command line; ``load()`` resolves it once."""

    spec: str
    weights: Optional[str] = None
    size: Optional[str] = None
    mean: Optional[str] = None
    std: Optional[str] = None
    device: Optional[str] = None
    _loaded: object = None

    def load(self):
        if self._loaded is None:
            device = resolve_device(self.device) if self.device else None
            self._loaded = load_model(
                self.spec,
                self.weights,
                size=self.size,
                mean=parse_floats(self.mean, "--mean"),
                std=parse_floats(self.std, "--std"),
                device=device,
            )
            if self._loaded.source in ("callable", "torchscript") and self.mean is None and self.std is None:
                channels = self._loaded.preprocessing.channels
                example = "0.485,0.456,0.406 --std 0.229,0.224,0.225" if channels == 3 else "0.5 --std 0.5"
                warnings.warn(f"{self.spec} gets its inputs in [0, 1] without normalisation (no --mean/--std given); "
                              f"if it was trained on normalised inputs, say how, e.g. --mean {example}",
                              NotNormalised, stacklevel=2)
        return self._loaded


def model_options(f):
    """MODEL argument plus --weights/--size/--mean/--std, passed on as ``model=ModelRequest``."""

    @functools.wraps(f)
    def wrapper(*args, model, weights, size, mean, std, **kwargs):
        device = kwargs.get("device")
        return f(*args, model=ModelRequest(model, weights, size, mean, std, device), **kwargs)

    decorators = [
        click.argument("model", metavar="MODEL"),
        click.option(
            "--weights",
            metavar="W",
            help="DEFAULT (zoo and torchvision default), a torchvision weights name like IMAGENET1K_V1, "
            "a state-dict file, or none (random).",
        ),
        click.option("--size", metavar="N|HxW", help="input size; overrides the model's own."),
        click.option("--mean", metavar="M[,M,M]", help="normalisation mean per channel; overrides the model's."),
        click.option("--std", metavar="S[,S,S]", help="normalisation std per channel; overrides the model's."),
    ]
    for d in reversed(decorators):
        wrapper = d(wrapper)
    return wrapper


def device_option(f):
    return click.option(
        "--device", default="auto", show_default=True, metavar="D", help="auto, cpu, cuda or cuda:N."
    )(f)


def layer_option(required: bool = False, help: str = "layer(s): dotted names, globs like 'features.*', or type:Conv2d; repeatable."):
    return click.option("-l", "--layer", "layers", multiple=True, required=required, metavar="LAYER", help=help)


def filters_option(default: str = "all"):
    return click.option(
        "--filters", default=default, show_default=True, metavar="SPEC",
        help="which filters/channels: all, a range like 0-19, a list like 3,7,9.",
    )


def output_option(default: Optional[str] = None, required: bool = False):
    return click.option(
        "-o", "--output", default=default, required=required, show_default=default is not None,
        type=click.Path(file_okay=False), metavar="DIR", help="output folder.",
    )


def seed_option(f):
    return click.option("--seed", default=0, show_default=True, type=int, help="random seed (deterministic on CPU).")(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="no progress bar.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table.")(f)


class FiniteFloat(click.FloatRange):
    """A float option that refuses ``nan``, ``inf`` and ``-inf`` (a usage error, exit status 2),
    then checks the range like :class:`click.FloatRange`.

    Example:
        >>> FiniteFloat(min=0, min_open=True).convert("0.05", None, None)
        0.05
    """

    name = "float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def finite_float(min=None, max=None, *, min_open: bool = False, max_open: bool = False) -> FiniteFloat:
    """The click type of a finite float option, optionally within a range (``--lr``, ``--noise``)."""
    return FiniteFloat(min=min, max=max, min_open=min_open, max_open=max_open)


def progress_bar(total: int, quiet: bool, label: str, **options):
    """A click progress bar on stderr, or ``None`` when ``quiet`` or when stderr is not a terminal
    (so redirected output holds the result and nothing else: no label line)."""
    if quiet or not _is_terminal(sys.stderr):
        return None
    return click.progressbar(length=total, label=label, file=sys.stderr, **options)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def count_or_auto(ctx, param, value):
    """Click callback of a count that may be ``auto`` (``--batch-size``): a number >= 1, or ``"auto"``."""
    if value is None or str(value).lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or auto") from None
    if n < 1:
        raise click.BadParameter(f"{value} must be at least 1 (or auto)")
    return n


# ----------------------------------------------------------------- option groups shared by the picture commands
# ``maximize``, ``gallery`` and the techniques declare these options here, once: the type, default and metavar
# are the same everywhere; each command says in its own words what the option means for it.


def _group(*decorators):
    """One decorator applying ``decorators`` so that their options appear in ``--help`` in the order given."""
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def ascent_options(steps_help: str, lr_help: str, steps_default: Optional[int] = None):
    """``--steps`` and ``--lr`` of an optimisation (default: the preset's or the technique's own)."""
    shown = dict(default=steps_default, show_default=True) if steps_default is not None else {}
    return _group(click.option("--steps", type=click.IntRange(min=0), help=steps_help, **shown),
                  click.option("--lr", type=finite_float(min=0, min_open=True), help=lr_help))


def batch_options(batch_help: str, retries_help: str):
    """``--batch-size`` (a count or auto) and ``--retries`` of units optimised together."""
    return _group(click.option("--batch-size", default="auto", show_default=True, callback=count_or_auto,
                               metavar="B|auto", help=batch_help),
                  click.option("--retries", default=3, show_default=True, type=click.IntRange(min=0), metavar="K",
                               help=retries_help))


def parallel_options(shard_help: str):
    """``--workers`` (local processes) and ``--shard`` (this process's share)."""
    return _group(click.option("--workers", default="auto", show_default=True, metavar="N|auto",
                               help="local processes sharing the work (the same fixed chunks as --shard; the files "
                               "of one single-thread process); auto: one single-thread process per CPU core, 1 on a GPU."),
                  click.option("--shard", metavar="i/n", help=shard_help))


def diversity_options(default: int, help: str, weight_help: str):
    """``--diversity K`` pictures per unit and ``--diversity-weight``."""
    return _group(click.option("--diversity", default=default, show_default=True, type=click.IntRange(min=default),
                               metavar="K", help=help),
                  click.option("--diversity-weight", default=1.0, show_default=True, type=finite_float(min=0),
                               metavar="W", help=weight_help))


def early_stop_option(help: str):
    return click.option("--no-early-stop", is_flag=True, help=help)


def force_option(help: str):
    return click.option("--force", is_flag=True, help=help)
