"""Techniques that start from a photograph: feature accentuation, DeepDream and caricature.

Each takes a model, an image and a layer, and returns a :class:`TechniqueResult` (the image,
the photo as the model saw it, and a flat JSON-able record); nothing is written.
:func:`save_technique` writes a result through the one record store (:class:`cnnvis.atlas.store.Store`)
and :func:`run_technique` skips work a folder already holds. The maths, with ``x0`` the photo as
the model sees it (resized, cropped, in [0, 1]) and ``h_l`` the output of layer ``l``:

* **accentuate** (Hamblin et al. 2024, "Feature Accentuation"): start *at* ``x0`` and maximise
  ``f(x) - a * lam * D(x)`` where ``f`` is the unit's response and
  ``D(x) = mean_p ||h_r(x)[:, p] - h_r(x0)[:, p]||_2`` the mean over positions ``p`` of the
  distance between the activation vectors of a regularisation layer ``r`` (faccent's
  ``l2_compare``; a sum of per-position norms, so edits stay in few places). ``lam`` balances the
  two gradients once, before the first step: ``lam = ||grad f||_1 / ||grad D||_1`` over the
  image's parameters, with ``grad D`` taken where the first Adam step lands
  (``theta0 + lr * sign(grad f)``; at ``x0`` itself ``D = 0`` and its gradient is undefined).
  ``a`` (``reg_weight``, default 1) scales it. The image is a Fourier parameterisation
  *initialised at the photo* (its spectrum, 1/f-scaled and colour-decorrelated like lucid's, so
  it reproduces ``x0``), or pixels; each step sees one of :data:`POSES` fixed mild random
  jitter/scale/rotations, applied identically to ``x0`` so that ``D`` compares the same positions.
* **dream** (Mordvintsev et al. 2015, DeepDream): gradient ascent on ``||h_l(x)||_2`` (the whole
  layer, :func:`layer_l2`) starting at ``x0``, over octaves: the photo shrunk by ``octave_scale``
  per octave, smallest first; each step rolls the image by a random offset (jitter), steps
  ``x += lr * g / mean|g|`` (the gradient normalised per step) and clips to [0, 1]; what an
  octave added (``detail = dreamed - base``) is upsampled and carried into the next.
* **caricature** (lucid's recipe): from noise, maximise
  ``(h_l(x) . h_l(x0)) / ||h_l(x0)||^2 * max(cos(h_l(x), h_l(x0)), 0.1)^p`` over the whole
  ``C x H x W`` activation tensor (every position has its own target), at the photo's size,
  with lucid's Fourier image, Adam and mild transforms applied identically to the photo. The
  photo itself scores 1. The result shows what the layer keeps of the photo.

Example:
    >>> import torch, cnnvis
    >>> from cnnvis.synthesis.techniques import dream
    >>> lm = cnnvis.load_model("lenet-digits")
    >>> photo = torch.zeros(1, 32, 32); photo[:, 8:24, 14:18] = 1.0     # a "1"
    >>> r = dream(lm, photo, "conv2", octaves=2, steps=5, seed=0)
    >>> tuple(r.image.shape), r.record["technique"], r.record["objective_final"] > r.record["objective_initial"]
    ((1, 32, 32), 'dream', True)
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from cnnvis.synthesis.objectives import (UNIT_OBJECTIVES, ActivationMatch, LayerDistance, LayerL2, Objective,  # noqa: F401
                                         layer_tensor,
                                         layer_distance, layer_l2, make_objective, match_activations)
from cnnvis.synthesis.params import PixelImage
from cnnvis.core.progress import Progress
from cnnvis.core.display import grid_html, grid_png
from cnnvis.core.errors import InputError, ModelError
from cnnvis.model.hooks import frozen, record
from cnnvis.core.io import make_grid
from cnnvis.model.layers import resolve_layers
from cnnvis.model.loading import load_model
from cnnvis.model.probing import call_model, probe, stage_layers
from cnnvis.atlas.store import fingerprint, model_fingerprint, Store, variant_name
from cnnvis.synthesis.ascent import _Ascent, channels_last
from cnnvis.synthesis.photos import (Poses, input_description, octave_sizes, photo_param, pose_settings,  # noqa: F401
                                     prepare_image, resize, tensor_fingerprint)
from cnnvis.synthesis.settings import make_settings, unit_seed
from cnnvis.synthesis.units import library_versions

TECHNIQUES = ("accentuate", "dream", "caricature")
PARAMS = ("fourier", "pixel")


# ------------------------------------------------------------------ results


@dataclass(frozen=True, eq=False)
class TechniqueResult:
    """What a technique returns: ``image`` (C x H x W in [0, 1]), ``input`` (the photo as the model
    saw it, C x H x W) and ``record`` (a flat JSON-able dict: technique, layer, filter or None,
    variant, objective before and after, loss curve, settings, seed, model, versions, seconds, …).
    In Jupyter it shows as the photo and the result side by side (``_repr_png_``, ``_repr_html_``)."""

    image: torch.Tensor
    input: torch.Tensor
    record: dict

    def pair(self, pad: int = 4) -> torch.Tensor:
        """The photo and the result side by side, on white (C x H x (2W + 3 pad))."""
        return make_grid([self.input, self.image], ncol=2, pad=pad, pad_value=1.0)

    def caption(self) -> str:
        """What the result shows, in a few words (``dream blocks.10``, ``accentuate blocks.10:7``)."""
        rec = self.record
        unit = "" if rec.get("filter") is None else f":{rec['filter']}"
        return f"{rec['technique']} {rec['layer']}{unit}"

    def _repr_png_(self) -> bytes:
        return grid_png([self.input, self.image])

    def _repr_html_(self) -> str:
        return grid_html([self.input, self.image], ["photo", self.caption()])


@dataclass(frozen=True)
class Saved:
    """What :func:`run_technique` did: the PNG's path, its record, and whether it was already there."""

    path: str
    record: dict
    skipped: bool


# ------------------------------------------------------------------ inputs and layers


def _one_layer(lm, layer: str, option: str = "-l") -> str:
    if not layer:
        raise InputError(f"a layer is needed: pass {option} LAYER (run 'cnnvis layers {lm.name}' to list them)")
    names = resolve_layers(lm, [layer])
    if len(names) != 1:
        raise InputError(f"layer {layer!r} matches {len(names)} layers ({', '.join(names[:4])}, …); give one")
    return names[0]


def _layer_shape(lm, layer: str, size) -> Tuple[int, ...]:
    shape = probe(lm, size).shape(layer)
    if shape is None:
        raise InputError(f"layer {layer} did not run in {lm.name}'s forward pass (or produces no tensor); pick another layer")
    if len(shape) < 1:
        raise InputError(f"layer {layer} has no channel dimension (output shape {shape}); pick another layer")
    return shape


def default_reg_layer(lm, layer: str, size=None) -> str:
    """The layer accentuation keeps close to the photo when none is given: the representative layer
    (:func:`cnnvis.model.probing.stage_layers`) of the last resolution stage finer than ``layer``'s output
    (for a layer without spatial output, the last stage); ``layer`` itself when none is finer.

    Regularising one stage below the unit keeps the photo's mid-level parse (its edges, textures and
    their places) while the features at the unit's own scale are free to grow; regularising at the
    unit's own layer would hold back the very channel being raised.

    Example:
        >>> import cnnvis
        >>> lm = cnnvis.load_model("lenet-digits")
        >>> default_reg_layer(lm, "conv2"), default_reg_layer(lm, "fc3"), default_reg_layer(lm, "conv1")
        ('conv1', 'conv2', 'conv1')
    """
    found = probe(lm, size)
    shape = found.shape(layer) or ()
    area = shape[1] * shape[2] if len(shape) == 3 else 0
    order = [n for n, _ in found.order]
    where = order.index(layer) if layer in order else len(order)
    finer = []
    for name in stage_layers(lm, size=size):
        s = found.shapes.get(name) or ()
        if name in order and order.index(name) < where and len(s) == 3 and s[1] * s[2] > area:
            finer.append(name)
    return finer[-1] if finer else layer


# ------------------------------------------------------------------ shared machinery


#: the options of an ascent from a photograph that accentuate and caricature take as keywords, with their
#: defaults, in the order their records list them (``param``, ``steps``, Adam ``lr``, the random transform)
_ASCENT_OPTIONS = {
    "accentuate": dict(param="fourier", steps=64, lr=0.05, jitter=4, scale=(0.95, 1.05), rotate=5.0),
    "caricature": dict(param="fourier", steps=96, lr=0.05, jitter=4, scale=(0.95, 1.05), rotate=5.0),
}


def _ascent_options(technique: str, options: dict) -> dict:
    """``options`` checked against the technique's ascent options (a misspelt one is a TypeError, as for any keyword)."""
    unknown = set(options) - set(_ASCENT_OPTIONS.get(technique, {}))
    if unknown:
        raise TypeError(f"{technique}() got unknown option(s): {', '.join(sorted(unknown))}")
    return options


def _settings(fn: Callable, given: dict, *, strict: bool = True, skip: Sequence[str] = ("seed", "progress")) -> dict:
    """The keyword-only options of ``fn`` and its ascent options, with their values in ``given`` (defaults
    filled, numbers coerced to the default's type): what goes into a record's settings and its fingerprint."""
    out = {}
    params = [(p.name, p.default) for p in inspect.signature(fn).parameters.values()
              if p.kind == p.KEYWORD_ONLY and p.name not in skip]
    params += list(_ASCENT_OPTIONS.get(fn.__name__, {}).items())
    known = {name for name, _ in params}
    unknown = set(given) - known - set(skip)
    if strict and unknown:
        raise TypeError(f"{fn.__name__}() got unknown option(s): {', '.join(sorted(unknown))}")
    for name, default in params:
        value = given.get(name, default)
        if value is None:
            value = default
        if isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, int) and value is not None:
            value = int(value)
        elif isinstance(default, float) and value is not None:
            value = float(value)
        elif isinstance(default, tuple) and value is not None:
            value = [float(v) for v in value]
        out[name] = value
    return out


def _check_positive(**values) -> None:
    for name, (value, low, strict) in values.items():
        if value is None:
            continue
        if (strict and not value > low) or (not strict and not value >= low):
            word = "more than" if strict else "at least"
            raise InputError(f"{name.replace('_', '-')} must be {word} {low:g}, got {value:g}")


def _identity(lm, technique: str, layer: str, unit: Optional[int], x: torch.Tensor, settings: dict, seed: int):
    """(variant, input fingerprint, record fingerprint) of one technique run."""
    input_fp = tensor_fingerprint(x)
    if technique == "accentuate":
        objective, preset = settings["objective"], settings["param"]
    elif technique == "dream":
        objective, preset = "layer-l2", "pixel"
    else:
        objective, preset = f"match-cos{settings['cossim_pow']:g}", settings["param"]
    variant = variant_name(objective, preset, technique=f"{technique}-{input_fp[:8]}")
    pre = lm.preprocessing
    fp = fingerprint(model_fingerprint(lm), layer, unit, variant, settings, int(seed), input_fp,
                     list(pre.mean), list(pre.std), technique)
    return variant, input_fp, fp


def _record(lm, technique, layer, unit, x, settings, seed, t0, **values) -> dict:
    variant, input_fp, fp = _identity(lm, technique, layer, unit, x, settings, seed)
    _, c, h, w = x.shape
    rec = {
        "technique": technique,
        "layer": layer,
        "filter": None if unit is None else int(unit),
        "variant": variant,
        "status": "ok",
        "dead": False,
    }
    rec.update(values)
    rec.update({
        "seed": int(seed),
        "steps": settings.get("steps"),
        "lr": settings.get("lr"),
        "size": [int(h), int(w)],
        "channels": int(c),
        "settings": settings,
        "input_fingerprint": input_fp,
        "fingerprint": fp,
        "model": lm.name,
        "weights": lm.weights,
        "device": str(lm.device),
        "seconds": round(time.perf_counter() - t0, 4),
        "versions": library_versions(),
    })
    return rec


@contextlib.contextmanager
def _network(lm, layers: Sequence[str]):
    """``run(x) -> {layer: output}`` on images in [0, 1], stopping after the last of ``layers``; the
    model is frozen (eval, no weight gradients) and channels-last while open, as in synthesis."""
    model = lm.model
    use_cl = lm.preprocessing.channels > 1
    layers = list(dict.fromkeys(layers))
    with frozen(model), channels_last(model, use_cl), record(model, layers, stop=True) as rec:

        def forward(x):
            return rec.run(x.contiguous(memory_format=torch.channels_last) if use_cl else x)

        def run(x: torch.Tensor) -> Dict[str, torch.Tensor]:
            call_model(lm, x, forward)
            return {name: layer_tensor(rec.outputs, name) for name in layers if name in rec.outputs}

        yield run


def _grads(value: torch.Tensor, params: Sequence[torch.Tensor], retain: bool = False) -> List[torch.Tensor]:
    grads = torch.autograd.grad(value, list(params), retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _l1(grads: Sequence[torch.Tensor]) -> float:
    return float(sum(g.abs().sum() for g in grads))


def _tick(progress: Progress, done: float, total: float) -> None:
    if progress is not None:
        progress(done, total)


def _climb(lm, run, reported: Objective, settings, param, pose, progress, *, move=None):
    """One image up the one loop (:class:`cnnvis.synthesis.ascent._Ascent`): ``param`` starts where the
    technique says, ``pose(step)`` gives the step's transform and objective, ``reported`` is what the
    start (a dead start takes no step) and the result are measured by. ``settings``: a technique's
    options (Adam on its start) or :class:`Settings` (the plain ascent); every step is taken."""
    if isinstance(settings, dict):
        settings = make_settings("robust", steps=settings["steps"], lr=settings["lr"])
    settings = replace(settings, transforms=False, crops=0, early_stop=False, retries=0)

    def evaluate(images, which: Objective):
        return which(run(images)).reshape(images.shape[0])

    return _Ascent(lm, _Reported(reported), [0], settings, evaluate, param=param, pose=pose,
                   move=move).run(progress)


class _Reported(Objective):
    """An objective that is only measured (the start and the result); each step's comes from the pose."""

    def __init__(self, objective: Objective):
        self.inner, self.layers = objective, tuple(getattr(objective, "layers", ()))

    def __call__(self, outputs):
        return self.inner(outputs)


class _Balanced(Objective):
    """Accentuation's step objective ``f - weight * D`` for one pose; logs ``(f, D)`` of every step."""

    def __init__(self, f: Objective, distance: Objective, weight: float, log: list):
        self.f, self.distance, self.weight, self.log = f, distance, weight, log
        self.layers = tuple(dict.fromkeys(tuple(f.layers) + tuple(distance.layers)))

    def __call__(self, outputs):
        value, distance = self.f(outputs).sum(), self.distance(outputs).sum()
        self.log.append((float(value.detach()), float(distance.detach())))
        return value - self.weight * distance


def _pixels(lm, start: torch.Tensor) -> PixelImage:
    """Pixels starting at ``start`` (1 x C x H x W), clamped to [0, 1] after each step."""
    param = PixelImage([torch.Generator()], lm.preprocessing.channels, tuple(start.shape[-2:]), lm.device,
                       make_settings("plain"))
    with torch.no_grad():
        param.x.copy_(start)
    return param


def _dream_step(lr: float):
    """DeepDream's step from a gradient: ``lr`` times the gradient divided by its mean absolute value."""
    return lambda g: lr * g / (g.abs().mean() + 1e-12)


# ------------------------------------------------------------------ accentuation


def accentuate(
    model,
    image,
    layer: str,
    unit: int,
    *,
    objective: str = "channel-mean",
    layer_reg: Optional[str] = None,
    reg_weight: float = 1.0,
    seed: int = 0,
    progress: Progress = None,
    **options,
) -> TechniqueResult:
    """Raise one unit's response to a photograph while keeping a layer's activations close to the photo's.

    Args:
        model: a spec, ``nn.Module`` or ``LoadedModel``; ``image``: a path, PIL image, array or tensor.
        layer, unit: the unit (channel ``unit`` of ``layer``; any layer, a logit layer too).
        objective: what "response" means: ``channel-mean`` (the channel's mean over positions),
            ``channel-relu``, ``channel-l2`` or ``neuron`` (the centre position).
        layer_reg: the layer kept close (default :func:`default_reg_layer`); ``reg_weight`` scales the
            automatically balanced weight (0: no regularisation, larger: closer to the photo).
        options: ``param``: ``fourier`` (initialised at the photo) or ``pixel`` (clamped to [0, 1]);
            ``steps`` (64) and Adam ``lr`` (0.05); ``jitter``, ``scale``, ``rotate``: the random
            transform of each step (pixels, factor range, degrees; 4, (0.95, 1.05), 5).

    The record adds ``layer_reg``, ``reg_balance`` (``lam``), ``pixel_distance`` (RMS change in
    [0, 1] units), ``layer_distance`` (``||h_r(x) - h_r(x0)|| / ||h_r(x0)||``) and ``distance_curve``.
    """
    t0 = time.perf_counter()
    lm = load_model(model)
    settings = _settings(accentuate, {**locals(), **_ascent_options("accentuate", options)}, strict=False)
    kind = str(settings["objective"]).lower().replace("_", "-")
    if kind not in UNIT_OBJECTIVES:
        raise InputError(f"unknown objective {objective!r} for accentuate; use one of {', '.join(UNIT_OBJECTIVES)}")
    settings["objective"] = kind
    if settings["param"] not in PARAMS:
        raise InputError(f"param must be {' or '.join(PARAMS)}, got {settings['param']!r}")
    _check_positive(steps=(settings["steps"], 0, False), lr=(settings["lr"], 0, True),
                    reg_weight=(settings["reg_weight"], 0, False), jitter=(settings["jitter"], 0, False))
    x0 = prepare_image(lm, image)
    size = tuple(x0.shape[-2:])
    layer = _one_layer(lm, layer)
    shape = _layer_shape(lm, layer, size)
    unit = _unit(unit, shape[0], layer)
    if kind == "channel-l2" and len(shape) < 3:
        raise InputError(f"channel-l2 needs a layer with spatial output; {layer} gives one number per channel "
                         f"(shape {'x'.join(map(str, shape))}): use --objective channel-mean or neuron")
    reg = _one_layer(lm, layer_reg, "--layer-reg") if layer_reg else default_reg_layer(lm, layer, size)
    _layer_shape(lm, reg, size)
    f = make_objective(kind, layer, unit)
    g = torch.Generator().manual_seed(unit_seed(seed, "accentuate", layer, unit))
    tset = pose_settings(settings["jitter"], settings["scale"], settings["rotate"])
    image_param = photo_param(settings["param"], lm, size, g, x0, tset)
    params = image_param.params
    total = settings["steps"] + 1
    with _network(lm, [layer, reg]) as run:
        with torch.no_grad():
            ref = run(x0)
        initial = float(f(ref))
        # the balance: gradients of f at the start and of D where the first Adam step lands
        gf = _grads(f(run(image_param.image())).sum(), params)
        lam = 0.0
        if _l1(gf) != 0.0 and settings["reg_weight"] > 0:
            with torch.no_grad():
                saved = [p.detach().clone() for p in params]
                for p, gp in zip(params, gf):
                    p.add_(settings["lr"] * gp.sign())
                image_param.after_step()
            gd = _grads(LayerDistance(reg, ref[reg])(run(image_param.image())).sum(), params)
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
            lam = _l1(gf) / max(_l1(gd), 1e-30)
        weight = settings["reg_weight"] * lam
        _tick(progress, 1, total)
        poses = Poses(g, tset)
        with torch.no_grad():
            targets = [run(poses.apply(k, x0))[reg] for k in range(len(poses))] if _l1(gf) != 0.0 else []
        log: List[Tuple[float, float]] = []

        def pose(step: int):
            k = poses.pick()
            return (lambda x: poses.apply(k, x)), _Balanced(f, LayerDistance(reg, targets[k]), weight, log)

        (result,) = _climb(lm, run, f, settings, image_param, pose, lambda d, _t: _tick(progress, d + 1, total))
        dead = result.dead
        x = result.image.unsqueeze(0).to(x0.device)
        with torch.no_grad():
            final_out = run(x)
        final = float(f(final_out))
        h0, h1 = ref[reg], final_out[reg]
        layer_dist = float((h1 - h0).norm() / h0.norm().clamp_min(1e-12))
        curve, distances = [v for v, _ in log], [d for _, d in log]
    record = _record(
        lm, "accentuate", layer, unit, x0, settings, seed, t0,
        objective=kind, objective_layer=layer, preset=settings["param"],
        objective_initial=initial, objective_final=final, loss_curve=curve,
        layer_reg=reg, reg_balance=lam, reg_weight=settings["reg_weight"],
        pixel_distance=float((x - x0).pow(2).mean().sqrt()), layer_distance=layer_dist,
        distance_curve=distances,
    )
    if dead:
        record.update(status="dead", dead=True,
                      reason="the unit's response has zero gradient for this image: there is nothing to accentuate")
    return TechniqueResult(x[0].cpu(), x0[0].cpu(), record)


def _unit(unit, channels: int, layer: str) -> int:
    try:
        u = int(unit)
    except (TypeError, ValueError):
        raise InputError(f"the unit must be a channel number of layer {layer} (0..{channels - 1}), got {unit!r}") from None
    if not 0 <= u < channels:
        raise InputError(f"filter {u} is out of range: layer {layer} has {channels} channels (0..{channels - 1})")
    return u


# ------------------------------------------------------------------ DeepDream


def dream(
    model,
    image,
    layer: str,
    *,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    lr: float = 0.01,
    jitter: int = 32,
    seed: int = 0,
    progress: Progress = None,
) -> TechniqueResult:
    """DeepDream: amplify everything ``layer`` responds to in the photo, over octaves.

    ``steps`` per octave; ``lr`` is the mean change of a pixel per step (the gradient is divided by
    its mean absolute value), in [0, 1] units; ``jitter`` the largest random roll in pixels (at
    most a quarter of the octave's side). Octaves too small for the network to reach ``layer`` are
    left out (the record's ``octave_sizes`` lists those used). The layer needs spatial output.
    """
    t0 = time.perf_counter()
    lm = load_model(model)
    settings = _settings(dream, dict(locals()), strict=False)
    _check_positive(octaves=(settings["octaves"], 1, False), octave_scale=(settings["octave_scale"], 1, True),
                    steps=(settings["steps"], 0, False), lr=(settings["lr"], 0, True),
                    jitter=(settings["jitter"], 0, False))
    x0 = prepare_image(lm, image)
    size = tuple(x0.shape[-2:])
    layer = _one_layer(lm, layer)
    shape = _layer_shape(lm, layer, size)
    if len(shape) < 3:
        raise InputError(
            f"dream amplifies the patterns a layer sees across the image, but {layer} has no spatial output "
            f"(shape {'x'.join(map(str, shape))} per image: one number per channel); pick a convolutional layer "
            f"(run 'cnnvis layers {lm.name}')")
    objective = LayerL2(layer)
    g = torch.Generator().manual_seed(unit_seed(seed, "dream", layer))
    sizes = octave_sizes(size, settings["octaves"], settings["octave_scale"])
    curve: List[float] = []
    with _network(lm, [layer]) as run:
        usable = []
        for s in sizes:  # an octave is usable when the layer still gives a spatial map
            try:
                with torch.no_grad():
                    out = run(torch.zeros((1, x0.shape[1]) + s, device=x0.device)).get(layer)
            except ModelError:
                break
            if out is None or out.ndim < 4 or out.shape[-1] * out.shape[-2] < 1:
                break
            usable.append(s)
        if not usable:
            raise InputError(f"the photo ({size[0]}x{size[1]}) is too small for {lm.name} to reach {layer}")
        with torch.no_grad():
            initial = float(objective(run(x0)))
        bases = [resize(x0, s) for s in usable]
        total = len(bases) * settings["steps"]
        plain = make_settings("plain", steps=settings["steps"], lr=settings["lr"])
        detail = torch.zeros_like(bases[-1])
        x = bases[-1]
        for octave, base in enumerate(reversed(bases)):
            detail = resize(detail, tuple(base.shape[-2:]))
            start = (base + detail).clamp(0.0, 1.0)
            h, w = start.shape[-2:]
            j = min(settings["jitter"], h // 4, w // 4)

            def pose(step: int, j=j):  # a random roll of the image; the gradient rolls back with it
                oy, ox = (torch.randint(-j, j + 1, (2,), generator=g).tolist() if j > 0 else (0, 0))
                return (lambda x: torch.roll(x, shifts=(oy, ox), dims=(-2, -1))), objective

            done = octave * settings["steps"]
            (result,) = _climb(lm, run, objective, plain, _pixels(lm, start), pose,
                               lambda d, _t, done=done: _tick(progress, done + d, total), move=_dream_step(settings["lr"]))
            curve.extend(result.curve)
            x = result.image.unsqueeze(0).to(x0.device)
            detail = x - base
        with torch.no_grad():
            final = float(objective(run(x)))
    record = _record(
        lm, "dream", layer, None, x0, settings, seed, t0,
        objective="layer-l2", objective_layer=layer, preset="pixel",
        objective_initial=initial, objective_final=final, loss_curve=curve,
        response_ratio=final / initial if initial > 0 else None,
        octave_sizes=[list(s) for s in usable],
        pixel_distance=float((x - x0).pow(2).mean().sqrt()),
    )
    return TechniqueResult(x[0].detach().cpu(), x0[0].cpu(), record)


# ------------------------------------------------------------------ caricature


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def caricature(
    model,
    image,
    layer: str,
    *,
    cossim_pow: float = 1.0,
    seed: int = 0,
    progress: Progress = None,
    **options,
) -> TechniqueResult:
    """Synthesise from noise an image whose activations at ``layer`` match the photo's, position by position.

    The objective is :func:`match_activations` (dot product over the whole activation tensor,
    divided by the photo's squared norm, times ``max(cos, 0.1) ** cossim_pow``); each step applies
    one random jitter/scale/rotation to the image *and* the photo, so every position keeps its own
    target. ``options``: ``param``, ``fourier`` (lucid's decorrelated 1/f image, the default) or
    ``pixel``; ``steps`` (96), ``lr`` (0.05), ``jitter``, ``scale``, ``rotate`` as for :func:`accentuate`.
    The record adds ``cosine_initial``/``cosine_final``: the cosine between the layer's activations
    for the image and for the photo, without transforms.
    """
    t0 = time.perf_counter()
    lm = load_model(model)
    settings = _settings(caricature, {**locals(), **_ascent_options("caricature", options)}, strict=False)
    if settings["param"] not in PARAMS:
        raise InputError(f"param must be {' or '.join(PARAMS)}, got {settings['param']!r}")
    _check_positive(steps=(settings["steps"], 0, False), lr=(settings["lr"], 0, True),
                    cossim_pow=(settings["cossim_pow"], 0, False), jitter=(settings["jitter"], 0, False))
    x0 = prepare_image(lm, image)
    size = tuple(x0.shape[-2:])
    layer = _one_layer(lm, layer)
    _layer_shape(lm, layer, size)
    g = torch.Generator().manual_seed(unit_seed(seed, "caricature", layer))
    tset = pose_settings(settings["jitter"], settings["scale"], settings["rotate"])
    image_param = photo_param(settings["param"], lm, size, g, None, tset)
    p = settings["cossim_pow"]
    with _network(lm, [layer]) as run:
        with torch.no_grad():
            photo = run(x0)[layer]
            start = image_param.image().detach().clone()
            start_act = run(start)[layer]
            initial = float(ActivationMatch(layer, photo, p)({layer: start_act}))
            cos0 = _cosine(start_act, photo)
            poses = Poses(g, tset)
            targets = [run(poses.apply(k, x0))[layer] for k in range(len(poses))]

        def pose(step: int):
            k = poses.pick()
            return (lambda x: poses.apply(k, x)), ActivationMatch(layer, targets[k], p)

        (result,) = _climb(lm, run, ActivationMatch(layer, photo, p), settings, image_param, pose,
                           lambda d, _t: _tick(progress, d, settings["steps"]))
        curve = list(result.curve)
        with torch.no_grad():
            x = result.image.unsqueeze(0).to(x0.device)
            act = run(x)[layer]
            final = float(ActivationMatch(layer, photo, p)({layer: act}))
            cos1 = _cosine(act, photo)
    record = _record(
        lm, "caricature", layer, None, x0, settings, seed, t0,
        objective=f"match-cos{p:g}", objective_layer=layer, preset=settings["param"],
        objective_initial=initial, objective_final=final, loss_curve=curve,
        cosine_initial=cos0, cosine_final=cos1,
    )
    return TechniqueResult(x[0].cpu(), x0[0].cpu(), record)


# ------------------------------------------------------------------ the store


_FUNCTIONS = {"accentuate": accentuate, "dream": dream, "caricature": caricature}


def technique_defaults(technique: str) -> dict:
    """Every option of a technique with its default, as its record lists them (what ``--help`` shows).

    Example:
        >>> technique_defaults("dream")["steps"], technique_defaults("caricature")["steps"]
        (10, 96)
    """
    return _settings(_FUNCTIONS[technique], {})


def save_technique(result: TechniqueResult, out_dir: str, *, force: bool = False) -> str:
    """Write a result through the store of ``out_dir``: ``<layer>/<variant>/NNNN.png`` (the unit, 0
    for whole-layer techniques) and its record in ``manifest.json``. Returns the PNG's path."""
    return _store(result, Store(out_dir, force=force))[0]


def _store(result: TechniqueResult, store) -> Tuple[str, dict]:
    rec = dict(result.record)
    unit = rec.get("filter")
    rel = store.save_image(result.image, rec["layer"], int(unit or 0), rec["variant"])
    rec.update(image=rel, filter=int(unit or 0), unit=unit)
    store.commit([rec], export=True)
    return os.path.join(store.folder, rel), rec


def run_technique(
    model,
    technique: str,
    image,
    layer: str,
    out_dir: str,
    *,
    unit: Optional[int] = None,
    seed: int = 0,
    force: bool = False,
    progress: Progress = None,
    **options,
) -> Saved:
    """Run a technique and store its result in ``out_dir``, unless ``out_dir`` already holds it
    (same model weights, photo content, layer, unit, settings and seed): then nothing is computed
    and ``skipped`` is True. This is what the command line does.

    Example:
        >>> import tempfile, torch, cnnvis
        >>> lm, out = cnnvis.load_model("lenet-digits"), tempfile.mkdtemp()
        >>> photo = torch.zeros(1, 32, 32); photo[:, 8:24, 14:18] = 1.0
        >>> a = run_technique(lm, "dream", photo, "conv2", out, octaves=1, steps=2)
        >>> b = run_technique(lm, "dream", photo, "conv2", out, octaves=1, steps=2)
        >>> a.skipped, b.skipped, a.path == b.path, os.path.relpath(a.path, out).startswith("conv2/dream-")
        (False, True, True, True)
    """
    if technique not in _FUNCTIONS:
        raise InputError(f"unknown technique {technique!r}; use one of {', '.join(TECHNIQUES)}")
    fn = _FUNCTIONS[technique]
    lm = load_model(model)
    settings = _settings(fn, options)
    if technique == "accentuate":
        settings["objective"] = str(settings["objective"]).lower().replace("_", "-")
    x0 = prepare_image(lm, image)
    name = _one_layer(lm, layer)
    if technique == "accentuate":
        unit = _unit(unit, _layer_shape(lm, name, tuple(x0.shape[-2:]))[0], name)
    elif unit is not None:
        raise InputError(f"{technique} works on a whole layer; it takes no unit")
    variant, _, fp = _identity(lm, technique, name, unit, x0, settings, seed)
    store = Store(out_dir, force=force)
    key = (name, int(unit or 0), variant)
    if store.finished(key, fp):
        rec = store.get(key)
        return Saved(os.path.join(store.folder, rec["image"]), rec, True)
    args = (lm, x0, name, unit) if technique == "accentuate" else (lm, x0, name)
    result = fn(*args, seed=seed, progress=progress, **options)
    path, rec = _store(result, store)
    return Saved(path, rec, False)
