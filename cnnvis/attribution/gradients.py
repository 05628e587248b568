"""Input gradients through captum: how the response of a class or of an internal unit changes with the input.

Attribution is taken with respect to the image in [0, 1] as the model sees it (resized,
cropped, grey or RGB: ``C x H x W``); the model's normalisation runs inside the forward pass.
The maths is captum's:

============================  ==========================================================
method                        captum
============================  ==========================================================
``saliency``                  ``Saliency``: ``|d target / d input|`` (captum's default
                              takes the absolute value; ``abs=False`` keeps the sign)
``smoothgrad``                ``NoiseTunnel(Saliency)``, ``nt_type="smoothgrad"``: the mean
                              saliency over ``samples`` copies with Gaussian noise of
                              standard deviation ``noise`` (in [0, 1] units)
``integrated-gradients``      ``IntegratedGradients`` from ``baseline`` in ``steps`` steps
``guided-backprop``           ``GuidedBackprop`` (functional ReLUs are routed through an
                              ``nn.ReLU`` module so captum reaches them)
``input-x-gradient``          ``InputXGradient``
============================  ==========================================================

A target is a class (default: the predicted one) or a :class:`Unit`: ``layer:channel`` (the
channel's total activation, summed over positions) or ``layer:channel:y:x`` (one spatial unit).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnvis.core.errors import did_you_mean, InputError, ModelError
from cnnvis.model.hooks import first_output_tensor, frozen, record
from cnnvis.core.io import colorize, safe_name, save_json, save_npy, save_png
from cnnvis.model.layers import resolve_layers
from cnnvis.model.loading import load_model
from cnnvis.model.probing import call_model, select_output

METHODS = ("saliency", "smoothgrad", "integrated-gradients", "guided-backprop", "input-x-gradient")
BASELINES = ("black", "white", "mean")


@dataclass(frozen=True)
class Unit:
    """An internal unit: a channel of a layer, or with ``y``/``x`` one position of it."""

    layer: str
    channel: int
    y: Optional[int] = None
    x: Optional[int] = None

    def __str__(self) -> str:
        pos = "" if self.y is None else f":{self.y}:{self.x}"
        return f"{self.layer}:{self.channel}{pos}"


def parse_unit(spec: Union[str, Unit]) -> Unit:
    """``"LAYER:CHANNEL"`` or ``"LAYER:CHANNEL:Y:X"`` -> :class:`Unit`.

    Example:
        >>> parse_unit("features.28:5"), str(parse_unit("conv1:2:3:4"))
        (Unit(layer='features.28', channel=5, y=None, x=None), 'conv1:2:3:4')
    """
    if isinstance(spec, Unit):
        return spec
    parts = str(spec).strip().split(":")
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        numbers = None
    if len(parts) not in (2, 4) or not parts[0] or numbers is None:
        raise InputError(f"unit {spec!r} must look like LAYER:CHANNEL or LAYER:CHANNEL:Y:X (e.g. features.28:5)")
    return Unit(parts[0], *numbers)


@dataclass(frozen=True)
class Target:
    """What the attribution explains: a class (``index``, ``name``) or a :class:`Unit`."""

    kind: str
    index: Optional[int] = None
    name: Optional[str] = None
    unit: Optional[Unit] = None

    def __str__(self) -> str:
        if self.kind == "unit":
            return f"unit {self.unit}"
        return f"class {self.index}" + (f" ({self.name})" if self.name else "")

    @property
    def tag(self) -> str:
        """A file-name part: ``class-281`` or ``unit-features.28-5`` / ``unit-features.28-5-3-4``."""
        if self.kind == "unit":
            return "unit-" + str(self.unit).replace(":", "-")
        return f"class-{self.index}"

    def to_dict(self) -> dict:
        if self.kind == "unit":
            u = self.unit
            return {"kind": "unit", "layer": u.layer, "channel": u.channel, "y": u.y, "x": u.x}
        return {"kind": "class", "index": self.index, "name": self.name}


@dataclass(frozen=True, eq=False)
class Attribution:
    """The result of :func:`saliency`.

    ``attribution`` has the image's shape, ``C x H x W``; ``image`` is the input in [0, 1].
    ``score`` is the target's value on the image; ``predicted`` the model's top class (``None``
    when its output is not a vector of class scores). ``output`` says which part of the model's
    output holds the class scores: ``tensor``, ``[0]`` (the first tensor of a tuple or list),
    ``['out']`` (a dict's ``out``, as torchvision's segmentation models return), a dict's only tensor
    (``['logits']``), or ``unused`` when a unit target needed no class scores and the output has none.
    """

    attribution: torch.Tensor
    image: torch.Tensor
    method: str
    target: Target
    params: dict
    score: float
    predicted: Optional[int] = None
    predicted_name: Optional[str] = None
    extra: dict = field(default_factory=dict)
    output: str = "tensor"

    def heatmap(self) -> torch.Tensor:
        """H x W in [0, 1]: ``|attribution|`` summed over channels, divided by its 99.5th percentile, clipped."""
        return heatmap(self.attribution)

    def overlay(self, alpha: float = 0.6) -> torch.Tensor:
        """3 x H x W: the heatmap (inferno) over the input image."""
        return overlay(self.image, self.heatmap(), alpha)

    def to_dict(self) -> dict:
        a = self.attribution
        return {
            "method": self.method,
            "params": dict(self.params),
            "target": self.target.to_dict(),
            "score": self.score,
            "predicted": None if self.predicted is None else {"index": self.predicted, "name": self.predicted_name},
            "output": self.output,
            "input_shape": list(self.image.shape),
            "attribution": {"shape": list(a.shape), "min": float(a.min()), "max": float(a.max()),
                            "abs_sum": float(a.abs().sum())},
            **self.extra,
        }


def heatmap(attribution: torch.Tensor) -> torch.Tensor:
    """``C x H x W`` attribution -> ``H x W`` in [0, 1] (see :meth:`Attribution.heatmap`)."""
    m = attribution.detach().abs().sum(0).float().cpu()
    top = float(torch.quantile(m.flatten(), 0.995)) if m.numel() > 1 else float(m.max())
    top = top if top > 0 else float(m.max())
    return (m / top).clamp(0, 1) if top > 0 else torch.zeros_like(m)


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """Blend an H x W map in [0, 1] (inferno) over a C x H x W image; the weight grows with the map."""
    rgb = image.detach().float().cpu().expand(3, -1, -1)
    colour = colorize(heat, "inferno", 0.0, 1.0)
    weight = alpha * heat.unsqueeze(0)
    return (1 - weight) * rgb + weight * colour


# --------------------------------------------------------------------------- inputs


def _baseline(lm, x: torch.Tensor, baseline) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x).expand_as(x)
    text = str(baseline).strip().lower()
    if text == "black":
        return torch.zeros_like(x)
    if text == "white":
        return torch.ones_like(x)
    if text == "mean":
        mean = torch.as_tensor(lm.preprocessing.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return mean.expand_as(x).clone()
    return torch.full_like(x, _grey(baseline))


def _grey(baseline) -> float:
    """A grey-level baseline: a number in [0, 1] (the image range)."""
    try:
        value = float(str(baseline).strip())
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:  # also NaN and infinities
        raise InputError(f"baseline {baseline!r} must be black, white, mean, or a grey level in [0, 1]")
    return value


# --------------------------------------------------------------------------- targets


def _output_vector(value, name: str = "the model") -> Optional[torch.Tensor]:
    """Class scores (N x classes) from a model's output: a tensor, the first of a tuple/list, a dict's
    ``'out'`` or only tensor (see :func:`cnnvis.model.probing.select_output`); a dense N x C x H x W output
    (segmentation) gives each class's mean score over positions. ``None`` when there are none."""
    return _scores(value, name)[0]


def _scores(value, name: str = "the model"):
    """:func:`_output_vector` and where in the output it came from (``tensor``, ``[0]``, ``['out']``)."""
    t, where = select_output(value, name)
    if t.dim() == 4:
        return t.flatten(2).mean(2), where
    return (t if t.dim() == 2 else None), where


def _check_unit(lm, unit: Unit, out: torch.Tensor) -> None:
    shape = tuple(out.shape[1:])
    channels = shape[0] if shape else 0
    if not 0 <= unit.channel < channels:
        raise InputError(
            f"channel {unit.channel} is out of range: layer {unit.layer} of {lm.name} has {channels} channels "
            f"(0..{channels - 1})"
        )
    if unit.y is None:
        return
    if len(shape) != 3:
        raise InputError(f"layer {unit.layer} has no spatial output (shape {'x'.join(map(str, shape))}); "
                         f"give LAYER:CHANNEL without Y:X")
    h, w = shape[1:]
    if not (0 <= unit.y < h and 0 <= unit.x < w):
        raise InputError(
            f"position ({unit.y}, {unit.x}) is out of range: layer {unit.layer} of {lm.name} is {h}x{w} "
            f"(y 0..{h - 1}, x 0..{w - 1})"
        )


def _unit_value(out: torch.Tensor, unit: Unit) -> torch.Tensor:
    """Per sample: the channel summed over positions, or one position of it."""
    sel = out[:, unit.channel]
    if unit.y is not None:
        return sel[:, unit.y, unit.x]
    return sel.reshape(sel.shape[0], -1).sum(1)


class _Forward(nn.Module):
    """The model with a forward function captum attributes (a module, so GuidedBackprop finds its ReLUs).

    ``guide`` is an ``nn.ReLU`` that functional ReLU calls are routed through for guided backprop.
    """

    def __init__(self, net: nn.Module, fn: Callable):
        super().__init__()
        self.net = net
        self.fn = fn
        self.guide = nn.ReLU()

    def forward(self, x):
        return self.fn(x)


_ROUTABLE = (F.relu, torch.relu, torch.Tensor.relu)
_IN_PLACE = (torch.relu_, torch.Tensor.relu_)


class _RouteReLU(TorchFunctionMode):
    """Send functional ReLU calls (``F.relu``, ``torch.relu``, ``x.relu()``) through one ``nn.ReLU``
    module, so captum's guided backprop, which hooks ``nn.ReLU`` modules, reaches them too.

    In-place ``relu_`` calls are counted, not routed: their result may be ignored by the caller.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.routed = 0
        self.in_place = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _ROUTABLE and args and isinstance(args[0], torch.Tensor):
            self.routed += 1
            return self.module(args[0])  # this mode is off while it runs, so the module's own relu is plain
        if func in _IN_PLACE:
            self.in_place += 1
        return func(*args, **(kwargs or {}))


def check_guided_backprop(lm, x: torch.Tensor) -> bool:
    """Check that guided backprop applies; return True when functional ReLUs must be routed.

    captum's guided backprop overrides the backward pass of ``nn.ReLU`` modules. Functional ReLU
    calls are routed through a module (:class:`_RouteReLU`) when that leaves the model's output
    unchanged; in-place ``relu_`` calls, or a model without any ReLU, raise :class:`InputError`.
    """
    relu_modules = [m for m in lm.model.modules() if isinstance(m, nn.ReLU)]
    router = _RouteReLU(nn.ReLU())
    with torch.no_grad():
        plain_out = call_model(lm, x)
        with router:
            routed_out = call_model(lm, x)
    try:
        plain, routed = _output_vector(plain_out, lm.name), _output_vector(routed_out, lm.name)
    except ModelError:  # no usable class scores (a unit target): compare the first tensors

        plain, routed = first_output_tensor(plain_out), first_output_tensor(routed_out)
    why = None
    if router.in_place:
        why = (f"{lm.name} applies ReLU in place {router.in_place} time(s) as a function call (relu_), which "
               f"cannot be routed through a module, so the picture would mix guided and plain gradients")
    elif router.routed and plain is not None and not torch.allclose(plain, routed, rtol=1e-4, atol=1e-5):
        why = (f"routing {lm.name}'s {router.routed} functional ReLU call(s) through a module changes its output "
               f"(it relies on F.relu modifying its input in place)")
    elif not relu_modules and not router.routed:
        why = f"{lm.name} has no ReLU at all, so the picture would be plain gradients"
    if why:
        raise InputError(
            f"guided-backprop cannot apply: it changes the backward pass of ReLUs, and {why}; "
            f"use saliency, smoothgrad, integrated-gradients or input-x-gradient"
        )
    return router.routed > 0


# --------------------------------------------------------------------------- the verb


@dataclass(frozen=True)
class MethodOptions:
    """How an attribution method runs: smoothgrad's ``samples`` and ``noise``, integrated gradients'
    ``steps`` and ``baseline``, ``abs`` for saliency and smoothgrad, the ``seed`` of smoothgrad's noise,
    and ``batch_size`` copies or steps per pass. :func:`saliency` takes them as keywords too."""

    samples: int = 25
    noise: float = 0.15
    steps: int = 50
    baseline: object = "black"
    abs: bool = True
    seed: int = 0
    batch_size: int = 16


def saliency(
    model,
    image,
    *,
    target: Union[int, str, None] = None,
    unit: Union[str, Unit, None] = None,
    method: str = "saliency",
    options: Optional[MethodOptions] = None,
    **given,
) -> Attribution:
    """Attribute a class score or an internal unit to the input pixels with a captum method.

    Args:
        model: a :class:`cnnvis.LoadedModel` or an ``nn.Module`` (inputs in [0, 1], no normalisation).
        image: an image path, a PIL image, or a ``C x H x W`` tensor in [0, 1] (used as is).
        target: class index or name; default the predicted class. Not with ``unit``.
        unit: ``"layer:channel"`` (summed over positions) or ``"layer:channel:y:x"``.
        method: one of :data:`METHODS`.
        options: a :class:`MethodOptions`, or give its fields as keywords:
        samples, noise: smoothgrad's number of noisy copies and noise standard deviation.
        steps, baseline: integrated gradients' steps and baseline (black, white, mean, a number, a tensor).
        abs: saliency and smoothgrad take ``|gradient|`` (captum's default); ``False`` keeps the sign.
        seed: seeds smoothgrad's noise (the global random state is left as it was).
        batch_size: how many noisy copies / integration steps go through the model at once.

    The model comes back unchanged (hooks, ``requires_grad``, train/eval), also after an error.

    Example:
        >>> import cnnvis, torch
        >>> lm = cnnvis.load_model("lenet-digits")
        >>> r = saliency(lm, torch.rand(1, 32, 32), unit="conv2:3")
        >>> tuple(r.attribution.shape), r.target.kind, bool((r.attribution >= 0).all())
        ((1, 32, 32), 'unit', True)
    """
    if options is not None and given:
        raise InputError(f"give either options= or {', '.join(sorted(given))}, not both")
    options = options if options is not None else MethodOptions(**given)
    samples, noise, steps, baseline = options.samples, options.noise, options.steps, options.baseline
    abs, seed, batch_size = options.abs, options.seed, options.batch_size
    _check_request(method, target, unit, samples=samples, steps=steps, batch_size=batch_size, noise=noise)
    if method == "integrated-gradients" and not isinstance(baseline, torch.Tensor) and \
            str(baseline).strip().lower() not in BASELINES:
        _grey(baseline)
    lm = load_model(model)
    x = lm.input_tensor(image)
    unit = parse_unit(unit) if unit is not None else None
    if unit is not None:
        if resolve_layers(lm, [unit.layer]) != [unit.layer]:
            raise InputError(f"unit layer {unit.layer!r} must be one exact layer name, not a pattern")

    with frozen(lm.model):
        tgt, score, predicted, where = _resolve_target(lm, x, target, unit)
        route = check_guided_backprop(lm, x) if method == "guided-backprop" else False
        params = _params(method, samples=samples, noise=noise, steps=steps, baseline=baseline, abs=abs, seed=seed)
        with contextlib.ExitStack() as stack:
            rec = stack.enter_context(record(lm.model, [unit.layer], stop=True)) if unit is not None else None
            forward = _Forward(lm.model, _target_function(lm, unit, rec))
            if route:
                inner = forward.fn
                forward.fn = lambda inp: _routed(forward.guide, inner, inp)
            attribution = _attribute(method, forward, lm, x, tgt.index if unit is None else None, samples=samples,
                                     noise=noise, steps=steps, baseline=baseline, abs=abs, seed=seed,
                                     batch_size=batch_size)
    return Attribution(
        attribution[0].detach().cpu(), x[0].detach().cpu(), method, tgt, params, score, predicted,
        lm.class_name(predicted) if predicted is not None else None, output=where,
    )


def _check_request(method, target, unit, *, samples, steps, batch_size, noise) -> None:
    import math

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}{did_you_mean(method, METHODS) or ''}; choose from {', '.join(METHODS)}")
    if target is not None and unit is not None:
        raise InputError("give a class target or a unit, not both")
    for label, value in (("samples", samples), ("steps", steps), ("batch_size", batch_size)):
        if int(value) < 1:
            raise InputError(f"{label} must be at least 1, got {value}")
    if not (noise >= 0 and math.isfinite(noise)):
        raise InputError(f"noise must be a finite number >= 0, got {noise}")


def _resolve_target(lm, x: torch.Tensor, target, unit: Optional[Unit]):
    """One plain pass: the :class:`Target`, its score on ``x`` (checked against the model), the prediction,
    and which part of the model's output holds the class scores.

    A unit target does not need class scores: a model whose output has none usable gives no prediction.
    """
    with torch.no_grad():
        if unit is not None:
            with record(lm.model, [unit.layer]) as rec:
                value = call_model(lm, x, rec.run)
            layer_out = first_output_tensor(rec[unit.layer])
            _check_unit(lm, unit, layer_out)
            try:
                logits, where = _scores(value, lm.name)
            except ModelError:
                logits, where = None, "unused"
        else:
            logits, where = _scores(call_model(lm, x), lm.name)
    predicted = int(logits.argmax(1)[0]) if logits is not None else None
    if unit is not None:
        return Target("unit", unit=unit), float(_unit_value(layer_out, unit)[0]), predicted, where
    if logits is None:
        raise InputError(f"{lm.name} does not output a vector of class scores; target a unit with --unit")
    index = predicted if target is None else lm.class_index(target)
    n = logits.shape[1]
    if not 0 <= index < n:
        raise InputError(f"class {index} is out of range: {lm.name} has {n} classes (0..{n - 1})")
    return Target("class", index, lm.class_name(index)), float(logits[0, index]), predicted, where


def _target_function(lm, unit: Optional[Unit], rec) -> Callable:
    """What captum differentiates: the class scores, or the unit's value recorded by ``rec``."""
    if unit is None:
        return lambda inp: _output_vector(call_model(lm, inp), lm.name)

    def fn(inp):
        call_model(lm, inp, rec.run)
        return _unit_value(first_output_tensor(rec[unit.layer]), unit)

    return fn


def _routed(guide: nn.Module, fn: Callable, inp):
    with _RouteReLU(guide):
        return fn(inp)


def _params(method: str, **kw) -> dict:
    keys = {
        "saliency": ("abs",),
        "smoothgrad": ("samples", "noise", "abs", "seed"),
        "integrated-gradients": ("steps", "baseline"),
        "guided-backprop": (),
        "input-x-gradient": (),
    }[method]
    out = {k: kw[k] for k in keys}
    if "baseline" in out and isinstance(out["baseline"], torch.Tensor):
        out["baseline"] = "tensor"
    return out


def _attribute(method, forward, lm, x, target, *, samples, noise, steps, baseline, abs, seed, batch_size):
    from captum.attr import GuidedBackprop, InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

    x = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's notices about hooks it sets and removes
        if method == "saliency":
            return Saliency(forward).attribute(x, target=target, abs=abs)
        if method == "smoothgrad":
            devices = [x.device.index or 0] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                return NoiseTunnel(Saliency(forward)).attribute(
                    x, nt_type="smoothgrad", nt_samples=int(samples), nt_samples_batch_size=int(batch_size),
                    stdevs=float(noise), target=target, abs=abs,
                )
        if method == "integrated-gradients":
            return IntegratedGradients(forward).attribute(
                x, baselines=_baseline(lm, x.detach(), baseline), target=target, n_steps=int(steps),
                internal_batch_size=int(batch_size),
            )
        if method == "guided-backprop":
            return GuidedBackprop(forward).attribute(x, target=target)
        return InputXGradient(forward).attribute(x, target=target)


def save_saliency(result: Attribution, output: str, stem: str = "image", record: Optional[dict] = None) -> Dict[str, str]:
    """Write ``<stem>.<method>.<target>`` ``.npy`` (the raw C x H x W attribution), ``.png``
    (the heatmap), ``.overlay.png`` and ``.json`` (target, method, parameters, ``record``'s keys
    and the file names) into ``output``; returns kind -> path."""
    base = os.path.join(output, f"{safe_name(stem)}.{result.method}.{safe_name(result.target.tag)}")
    paths = {
        "npy": save_npy(result.attribution.float().numpy(), base + ".npy"),
        "heatmap": save_png(colorize(result.heatmap(), "inferno", 0.0, 1.0), base + ".png"),
        "overlay": save_png(result.overlay(), base + ".overlay.png"),
    }
    doc = {**(record or {}), **result.to_dict(), "files": {k: os.path.basename(v) for k, v in paths.items()}}
    paths["json"] = save_json(doc, base + ".json")
    return paths
