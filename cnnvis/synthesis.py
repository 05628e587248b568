"""Maximum-response images by gradient ascent: parameterisations, transforms, the loop, batching.

Pure computation: no files, no prints; progress goes through a ``progress(done, total)`` callback.

Two presets (every field of :class:`Settings` can be overridden):

* ``plain`` — the textbook: ``x0 ~ U[0,1]^(C x H x W)``, ``L(x) = objective(x)`` (by default
  ``||h_l,d(x)||_2``), ``x_(t+1) = x_t + lr * g_t``. Two documented additions, each one switch:
  ``normalize_grad`` divides ``g_t = grad L(x_t)`` by its root-mean-square per image (Chollet's
  Keras recipe; makes ``lr`` a per-pixel step), and ``clamp`` projects ``x`` back to [0, 1] after
  every step so the image is displayable. With both off it is exactly the formula above.
  Size: the model's own input size (224 for a model that does not fix one).
* ``robust`` — the clean images of the famous galleries (lucid/lucent): a Fourier
  parameterisation with 1/f spectrum scaling, colour decorrelation (3-channel models) and a
  sigmoid; transformation robustness (pad with grey, jitter, random scale, random rotation, as
  one random affine resampling per step); Adam. 512 steps, lr 0.05, 128 px.

The image optimised is exactly the size fed to the network (no hidden upsampling); the random
affine transform keeps that size.

Many filters run as one batch: element ``i`` drives its own target. Each element has its own
random generators seeded from ``(seed, layer, filter)``, so an image does not depend on which
other filters share its batch (up to floating-point differences between batch sizes).

Example:
    >>> import cnnvis
    >>> from cnnvis.synthesis import maximize
    >>> lm = cnnvis.load_model("lenet-digits")
    >>> out = maximize(lm, "conv1", "0-1", steps=8, seed=0)
    >>> tuple(out.images.shape), [r["filter"] for r in out.records]
    ((2, 1, 32, 32), [0, 1])
    >>> all(r["objective_final"] > r["objective_initial"] for r in out.records)
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from cnnvis._version import __version__
from cnnvis.errors import CnnvisError, InputError
from cnnvis.health import unit_health
from cnnvis.maco import MacoImage, random_crops
from cnnvis.params import COLOR, FourierImage, PixelImage, random_affine
from cnnvis.progress import Progress
from cnnvis.display import grid_html, grid_png
from cnnvis.hooks import frozen, record
from cnnvis.layers import parse_filter_spec, resolve_layers
from cnnvis.models import load_model
from cnnvis.objectives import ChannelRelu, Diverse, make_objective, Objective, OUTPUT
from cnnvis.preprocess import parse_size
from cnnvis.probing import call_model, layer_before, pre_activation, probe, select_output, unit_output
from cnnvis.receptive import receptive_fields
from cnnvis.store import variant_name

PRESETS = ("plain", "robust", "maco")


@dataclass(frozen=True)
class Settings:
    """Every hyper-parameter of one optimisation (all of them go into each record).

    ``size`` None means the model's input size (128 px for a model that does not fix one).
    """

    preset: str = "plain"
    steps: int = 256
    lr: float = 0.05
    size: Optional[Tuple[int, int]] = None
    param: str = "pixel"  # pixel | fourier | maco
    optimizer: str = "ascent"  # ascent (x += lr * g) | adam
    normalize_grad: bool = True
    clamp: bool = True
    decorrelate: bool = False
    fourier_sd: float = 0.01
    decay_power: float = 1.0
    transforms: bool = False
    jitter: int = 0  # +- pixels of random translation
    scale: Tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0  # +- degrees
    crops: int = 0  # random crops per step (MACO's robustness); 0: none
    crop_scale: Tuple[float, float] = (0.75, 1.0)  # crop side as a fraction of the image side
    noise: float = 0.0  # standard deviation of the pixel noise added to each crop
    early_stop: bool = True  # stop a picture whose objective has stopped rising (see PLATEAU)
    retries: int = 3  # fresh starts for a unit that is dead for its starting image
    channels_last: bool = True

    def __post_init__(self):
        if self.steps < 0:
            raise InputError(f"--steps must be 0 or more, got {self.steps}")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, got {self.lr}")
        if self.param not in ("pixel", "fourier", "maco"):
            raise InputError(f"param must be pixel, fourier or maco, got {self.param!r}")
        if self.crops < 0:
            raise InputError(f"crops must be 0 or more, got {self.crops}")

        if self.optimizer not in ("ascent", "adam"):
            raise InputError(f"optimizer must be ascent or adam, got {self.optimizer!r}")
        if self.retries < 0:
            raise InputError(f"--retries must be 0 or more, got {self.retries}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size) if self.size is not None else None
        d["scale"] = list(self.scale)
        d["crop_scale"] = list(self.crop_scale)
        return d


_PRESET_FIELDS = {
    "plain": dict(steps=256, lr=0.05, param="pixel", optimizer="ascent", normalize_grad=True, clamp=True,
                  early_stop=False),  # the textbook ascent runs its steps
    "robust": dict(
        steps=512, lr=0.05, param="fourier", optimizer="adam", normalize_grad=False,
        clamp=False, decorrelate=True, transforms=True, jitter=6, scale=(0.9, 1.1), rotate=10.0,
    ),
    "maco": dict(
        steps=256, lr=0.1, param="maco", optimizer="adam", normalize_grad=False, clamp=False, decorrelate=True,
        crops=2, crop_scale=(0.75, 1.0), noise=0.02,
    ),
}

#: Size of the images of a model that does not fix its input size (robust, maco).
FREE_SIZE = 128


def make_settings(preset: str = "plain", **overrides) -> Settings:
    """The preset's settings with ``overrides`` (None values are ignored).

    Example:
        >>> make_settings("robust", steps=64).optimizer, make_settings("robust", steps=64).steps
        ('adam', 64)
    """
    if preset not in _PRESET_FIELDS:
        raise InputError(f"unknown preset {preset!r}; use {', '.join(PRESETS)}")
    values = dict(_PRESET_FIELDS[preset], preset=preset)
    unknown = set(overrides) - set(Settings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    for k, v in overrides.items():
        if v is not None:
            values[k] = v
    if values.get("size") is not None:
        values["size"] = parse_size(values["size"])
    values["scale"] = tuple(float(s) for s in values.get("scale", (1.0, 1.0)))
    values["crop_scale"] = tuple(float(s) for s in values.get("crop_scale", (0.75, 1.0)))
    return Settings(**values)


#: ``canvas_size``: a picture spans this many receptive fields per side, and at least this many pixels.
CANVAS_FIELDS = 4
CANVAS_MIN = 32


def canvas_size(lm, layer: str) -> Tuple[int, int]:
    """A canvas at the scale of a layer's units: ``CANVAS_FIELDS`` receptive fields per side (at least
    ``CANVAS_MIN`` pixels, at most the model's input size, a multiple of 8).

    A first layer's 3x3 kernel drawn on a 224 px canvas fills it with blobs of colour far larger than
    the kernel; on a canvas a few receptive fields wide its picture shows the kernel's own structure
    repeated at its own scale. Deep layers, whose fields cover the input, keep the input size.

    Example:
        >>> import cnnvis
        >>> lm = cnnvis.load_model("efficientnet-lite0", "none")
        >>> canvas_size(lm, "conv_stem"), canvas_size(lm, "blocks.3.depthwise_conv"), canvas_size(lm, "conv_head")
        ((32, 32), (144, 144), (224, 224))
    """
    h, w = lm.preprocessing.input_size()
    (rf,) = receptive_fields(lm, [layer]) or (None,)
    if rf is None or rf.is_global:
        return (h, w)

    def side(field: float, limit: int) -> int:
        return int(min(limit, max(CANVAS_MIN, -(-CANVAS_FIELDS * field // 8) * 8)))

    return (side(rf.size[0], h), side(rf.size[1], w))


#: A layer whose receptive field is at most this many pixels a side (a first layer) is drawn pixel by pixel.
SMALL_FIELD = 8
#: Pictures at most this many pixels a side jitter by at most :data:`SMALL_CANVAS_JITTER` (:func:`field_settings`).
SMALL_CANVAS = 64
SMALL_CANVAS_JITTER = 2
#: What ``robust`` and ``maco`` become on such a layer (:func:`field_settings`).
SMALL_FIELD_SETTINGS = dict(param="pixel", clamp=True, transforms=False, decorrelate=False, crops=0, noise=0.0)


def field_settings(lm, layer: Optional[str], settings: Settings, keep=()) -> Settings:
    """``settings`` for pictures of ``layer``: on a layer whose receptive field is a few pixels
    (at most :data:`SMALL_FIELD` a side), ``robust`` and ``maco`` optimise every pixel directly
    (:data:`SMALL_FIELD_SETTINGS`: pixels in [0, 1], no random transforms, no colour decorrelation).

    A 3x3 kernel's optimum is a pattern a few pixels wide, often of saturated colours; a smooth
    Fourier image behind a sigmoid reaches it slowly, and random shifts and rotations leave corners
    no step ever optimises. Any other picture of at most :data:`SMALL_CANVAS` pixels a side (the
    48 px canvas of efficientnet-lite0's ``blocks.1``) keeps its transforms but jitters by a third as
    much (:data:`SMALL_CANVAS_JITTER` instead of the preset's 6, both scaled to the canvas): measured on
    its first 16 filters, a shift of 2 of its 48 pixels cost most of the response (13 of 16 beat the
    best natural crop, median act_ratio 2.16; with the smaller jitter 16 of 16, median 2.99). Without
    any transforms the response is higher still (median 5.23), but the pictures turn to noise. Settings named in ``keep`` (the caller's explicit overrides) stay as given; the picture
    keeps the size it would have had.

    Example:
        >>> import cnnvis
        >>> lm = cnnvis.load_model("lenet-digits")
        >>> field_settings(lm, "conv1", make_settings("robust")).param, field_settings(lm, "conv2", make_settings("robust")).param
        ('pixel', 'fourier')
    """
    if settings.preset == "plain" or not layer or layer == OUTPUT:
        return settings

    try:
        (rf,) = receptive_fields(lm, [layer]) or (None,)
    except CnnvisError:
        return settings
    if rf is None or rf.is_global or max(rf.size) > SMALL_FIELD:
        if settings.transforms and max(image_size(lm, settings)) <= SMALL_CANVAS and "jitter" not in set(keep):
            return replace(settings, jitter=min(settings.jitter, SMALL_CANVAS_JITTER))  # a shift of 2 px costs it most
        return settings
    changes = {k: v for k, v in SMALL_FIELD_SETTINGS.items() if k not in set(keep)}
    if settings.size is None:
        changes["size"] = image_size(lm, settings)
    return replace(settings, **changes)


def image_size(lm, settings: Settings) -> Tuple[int, int]:
    """The (height, width) optimised: ``settings.size``, else the model's own input size (each model
    at its own scale); for a model that does not fix one, 224 for plain (the textbook) and
    :data:`FREE_SIZE` for robust and maco."""
    if settings.size is not None:
        return tuple(settings.size)
    if lm.preprocessing.size is None and settings.param != "pixel":
        return (FREE_SIZE, FREE_SIZE)
    return tuple(lm.preprocessing.input_size())


def unit_seed(seed: int, *parts) -> int:
    """A 63-bit seed derived from the run seed and what identifies a unit (layer, filter, …)."""
    text = "\x1f".join(str(p) for p in (seed,) + parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


# ------------------------------------------------------------------ the loop


@dataclass(frozen=True)
class Synthesis:
    """One optimised image and what happened to it.

    ``status``: ``ok``; ``dead`` (the objective and its gradient were exactly zero for the
    starting image, also after ``attempts - 1`` fresh starts: the image is that start); ``flat``
    (the unit's response does not vary: a negligible kernel, or a channel that is never active
    over natural crops; the image means nothing, see :func:`cnnvis.health.unit_health`); ``nonfinite`` (NaN or inf appeared at
    ``stopped_at``; the image is the last finite one). ``reason`` says why, in words.
    ``curve``: the objective at every step (under the random transforms, for robust and maco).
    """

    image: torch.Tensor
    objective_initial: float
    objective_final: float
    curve: Tuple[float, ...]
    status: str = "ok"
    attempts: int = 1
    stopped_at: Optional[int] = None
    seed: int = 0
    reason: Optional[str] = None
    stop_reason: Optional[str] = None  # "plateau" (early stop), "nonfinite"; None: ran every step
    natural_start: bool = False  # started from a natural crop because fresh noise left it dead
    unit_kind: Optional[str] = None  # live, off or flat (cnnvis.health), once judged
    unit_note: Optional[str] = None  # why an off-unit is one

    @property
    def dead(self) -> bool:
        return self.status == "dead"


@contextlib.contextmanager
def channels_last(model: torch.nn.Module, enabled: bool = True):
    """Store the model's 4-D weights channels-last while open; the original tensors come back after.

    Each weight's ``.data`` is swapped for a channels-last copy and the very same original tensor
    (same storage, so a weight that aliases a numpy array or another tensor keeps aliasing it)
    is put back on exit, also after an error.
    """
    changed = []
    try:
        if enabled:
            for t in list(model.parameters()) + list(model.buffers()):
                if t.ndim == 4 and t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last):
                    original = t.data
                    t.data = original.contiguous(memory_format=torch.channels_last)
                    changed.append((t, original))
        yield bool(changed)
    finally:
        for t, original in changed:
            t.data = original


#: The plateau rule of ``early_stop``: a picture stops at step t when the mean of its objective over
#: the last ``window`` steps is less than ``rise`` (relative) above the mean of the ``window`` steps
#: before, with ``window = max(16, steps // 8)`` and ``rise = 0.01``; never before step 2 * window.
PLATEAU_RISE = 0.01


def plateau_window(steps: int) -> int:
    """The window of the plateau rule for a run of ``steps`` steps."""
    return max(16, steps // 8)


def plateaued(curve: Sequence[float], window: int, rise: float = PLATEAU_RISE) -> bool:
    """Whether ``curve`` has stopped rising by the plateau rule (see :data:`PLATEAU_RISE`).

    Example:
        >>> plateaued([float(i) for i in range(64)], 16), plateaued([1.0] * 32 + [1.001] * 32, 16)
        (False, True)
    """
    if len(curve) < 2 * window:
        return False
    last = sum(curve[-window:]) / window
    before = sum(curve[-2 * window : -window]) / window
    return last - before <= rise * max(abs(before), 1e-12)


@contextlib.contextmanager
def affine_batchnorm(model: torch.nn.Module, enabled: bool = True):
    """While open, every ``nn.BatchNorm2d`` in eval mode computes ``x * scale + shift`` (the same
    numbers up to rounding) instead of the general batch-norm kernel, whose backward pass costs about
    twice as much on a CPU (see docs/performance.md). The modules' own ``forward`` comes back after;
    their parameters and buffers are not touched.
    """
    patched = []
    try:
        if enabled:
            for m in model.modules():
                if type(m) is torch.nn.BatchNorm2d and not m.training and m.track_running_stats \
                        and m.running_mean is not None and "forward" not in vars(m):
                    with torch.no_grad():
                        scale = torch.rsqrt(m.running_var + m.eps)
                        if m.weight is not None:
                            scale = scale * m.weight
                        shift = -m.running_mean * scale
                        if m.bias is not None:
                            shift = shift + m.bias
                    scale, shift = scale.detach().view(1, -1, 1, 1), shift.detach().view(1, -1, 1, 1)
                    m.forward = (lambda x, scale=scale, shift=shift: torch.addcmul(shift, x, scale))
                    patched.append(m)
        yield bool(patched)
    finally:
        for m in patched:
            del m.forward


def _generators(seeds: Sequence[int], stream: str, attempt: int = 0) -> List[torch.Generator]:
    return [torch.Generator().manual_seed(unit_seed(s, stream, attempt)) for s in seeds]


class _Ascent:
    """One batched optimisation: element ``i`` maximises ``objective``'s value ``i`` from ``seeds[i]``.

    :meth:`start` draws the starting images and restarts dead elements (``settings.retries``);
    :meth:`step` takes one step for every active element; :meth:`results` reports them.
    """

    def __init__(self, lm, objective: Objective, seeds: Sequence[int], settings: Settings, evaluate):
        self.lm, self.objective, self.seeds, self.settings = lm, objective, list(seeds), settings
        self.evaluate = evaluate
        self.b = len(self.seeds)
        param_cls = {"fourier": FourierImage, "maco": MacoImage}.get(settings.param, PixelImage)
        size = image_size(lm, settings)
        self.param = param_cls(_generators(self.seeds, "init"), lm.preprocessing.channels, size, lm.device, settings)
        self.attempts = [1] * self.b
        self.natural = [False] * self.b  # started from a natural crop (after fresh noise failed)
        self.status = ["ok"] * self.b
        self.stopped_at: List[Optional[int]] = [None] * self.b
        self.stop_reasons: List[Optional[str]] = [None] * self.b
        self.curves: List[List[float]] = [[] for _ in range(self.b)]
        self.moves = _generators(self.seeds, "transform")
        self.opt = torch.optim.Adam(self.param.params, lr=settings.lr) if settings.optimizer == "adam" else None
        self.previous = None
        self.initial = torch.zeros(self.b)
        self.active = torch.ones(self.b, dtype=torch.bool)

    def start(self) -> None:
        """Evaluate the starting images; restart elements that are dead (zero gradient: nothing to climb):
        ``settings.retries`` times from fresh, stronger noise, then (with retries) from the natural
        crops the unit answers to most (so a unit that answers to a photograph is not reported dead)."""
        b, device = self.b, self.lm.device
        candidates: Optional[dict] = None  # natural crops, looked for once
        while True:
            start = self.param.image().detach().requires_grad_(True)
            initial = self.evaluate(start, self.objective.reported)
            (grad,) = torch.autograd.grad(initial.sum(), start, allow_unused=True)
            flat = torch.zeros(b, device=device) if grad is None else grad.flatten(1).abs().amax(1)
            dead = flat == 0  # nothing to climb: no gradient (a unit that reads a channel silent for this start)
            noise = [i for i in range(b) if dead[i] and self.attempts[i] <= self.settings.retries]
            spent = [i for i in range(b) if dead[i] and self.attempts[i] > self.settings.retries > 0]
            if spent and candidates is None and hasattr(self.param, "set_image"):
                candidates = natural_start(self.evaluate, self.objective.reported, spent,
                                           image_size(self.lm, self.settings), self.lm.preprocessing.channels, device)
            natural = [i for i in spent if (candidates or {}).get(i)]
            if not noise and not natural:
                break
            for i in noise:
                (g,) = _generators([self.seeds[i]], "init", self.attempts[i])
                self.param.restart(i, g, self.attempts[i])
                self.attempts[i] += 1
            for i in natural:
                self.param.set_image(i, candidates[i].pop(0))
                self.natural[i] = True
                self.attempts[i] += 1
        self.initial = initial.detach()
        self.status = ["dead" if dead[i] else "ok" for i in range(b)]
        self.active = ~dead

    def _values(self, images: torch.Tensor, rows: List[int]) -> torch.Tensor:
        """The objective of the elements ``rows`` (under this step's random transforms), whole batch long;
        only those rows go through the model when the objective can be restricted to them."""
        settings = self.settings
        objective = self.objective.select(rows) if len(rows) < self.b else self.objective
        if objective is None:
            objective, rows = self.objective, list(range(self.b))
        images = images[rows] if len(rows) < self.b else images
        moves = [self.moves[r] for r in rows]
        if settings.transforms:
            images = random_affine(images, moves, settings)
        if settings.crops > 0:
            crops = random_crops(images, moves, crops=settings.crops, scale=settings.crop_scale,
                                 noise=settings.noise)  # element-major: row i * crops + k
            values = torch.stack([self.evaluate(crops[k :: settings.crops], objective)
                                  for k in range(settings.crops)]).mean(0)
        else:
            values = self.evaluate(images, objective)
        if len(rows) == self.b:
            return values
        full = torch.zeros(self.b, dtype=values.dtype, device=values.device)
        return full.index_put((torch.as_tensor(rows, device=values.device),), values)

    def step(self, step: int) -> None:
        """One step for every active element; an element whose value or gradient is not finite stops
        there and goes back to its last finite image; one whose objective has reached a plateau
        (``settings.early_stop``) stops there."""
        settings, param, active = self.settings, self.param, self.active
        before = [p.detach().clone() for p in param.params]
        # On a CPU only the active rows go through the model (a stopped picture costs nothing); on a
        # GPU the batch keeps its shape (a smaller batch saves little there, and every new shape costs
        # the GPU new kernel plans and allocations): stopped rows are computed and left unchanged.
        on_cpu = getattr(self.lm.device, "type", "cpu") == "cpu"
        values = self._values(param.image(), [i for i in range(self.b) if active[i] or not on_cpu])
        v = values.detach()
        bad = active & ~torch.isfinite(v)
        grads = torch.autograd.grad(-torch.where(active & ~bad, values, torch.zeros_like(values)).sum(), param.params)
        bad |= active & ~torch.stack([torch.isfinite(g.flatten(1)).all(1) for g in grads]).all(0)
        converged = torch.zeros_like(bad)
        window = plateau_window(settings.steps)
        for i in range(self.b):
            if bad[i]:
                self.status[i], self.stopped_at[i] = "nonfinite", step
            elif active[i]:
                self.curves[i].append(float(v[i]))
                if settings.early_stop and step + 1 < settings.steps and plateaued(self.curves[i], window):
                    converged[i] = True
                    self.stopped_at[i], self.stop_reasons[i] = step + 1, "plateau"
        self.active = active = active & ~bad
        keep = (~active).view(-1, *([1] * (before[0].ndim - 1)))
        with torch.no_grad():
            grads = [torch.where(keep, torch.zeros_like(g), g) for g in grads]
            if self.opt is None:
                for p, g in zip(param.params, grads):
                    if settings.normalize_grad:
                        g = g / (g.pow(2).flatten(1).mean(1).sqrt().view_as(keep.float()) + 1e-8)
                    p -= settings.lr * g  # g is the gradient of -L: this is x + lr * grad L
            else:
                for p, g in zip(param.params, grads):
                    p.grad = g
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            param.after_step()
            for p, old in zip(param.params, before):  # stopped elements do not move (Adam's momentum)
                p.copy_(torch.where(keep, old, p))
            if self.previous is not None and bool(bad.any()):  # back to the last step that gave finite values
                went = bad.view_as(keep)
                for p, old in zip(param.params, self.previous):
                    p.copy_(torch.where(went, old, p))
        self.previous = before
        self.active = self.active & ~converged  # a converged element took this step, then stops

    def results(self) -> List[Synthesis]:
        with torch.no_grad():
            final_images = self.param.image().detach().clone()
            final = self.evaluate(final_images, self.objective.reported)
        reasons = {
            "dead": lambda i: (f"its {'objective and ' if float(self.initial[i]) == 0 else ''}gradient "
                               f"{'are' if float(self.initial[i]) == 0 else 'is'} exactly zero for the starting image"
                               f"{f' and {self.attempts[i] - 1} fresh start(s)' if self.attempts[i] > 1 else ''}"
                               f"{', and for the natural crops it answers to most' if self.natural[i] else ''}"),
            "nonfinite": lambda i: f"NaN or inf appeared at step {self.stopped_at[i]}",
        }
        return [
            Synthesis(
                image=final_images[i].cpu(),
                objective_initial=float(self.initial[i]),
                objective_final=float(final[i]),
                curve=tuple(self.curves[i]),
                status=self.status[i],
                attempts=self.attempts[i],
                stopped_at=self.stopped_at[i],
                seed=int(self.seeds[i]),
                reason=reasons[self.status[i]](i) if self.status[i] in reasons else None,
                stop_reason="nonfinite" if self.status[i] == "nonfinite" else self.stop_reasons[i],
                natural_start=self.natural[i],
            )
            for i in range(self.b)
        ]


def synthesize(
    lm,
    objective: Objective,
    seeds: Sequence[int],
    settings: Settings,
    *,
    progress: Progress = None,
) -> List[Synthesis]:
    """Optimise one image per seed for ``objective`` (element ``i`` uses ``seeds[i]``).

    ``lm`` is a spec, an ``nn.Module`` or a ``LoadedModel``. The forward pass stops right after the
    last layer the objective reads; the model's weights get no gradients (``requires_grad`` off,
    eval mode; both restored after, also on an error) and no hook is left behind.
    ``progress(step, steps)`` after every step.
    """
    lm = load_model(lm)
    model, pre = lm.model, lm.preprocessing
    b = len(seeds)
    layers = [l for l in objective.layers if l != OUTPUT]
    wants_output = OUTPUT in objective.layers
    use_cl = settings.channels_last and pre.channels > 1
    with frozen(model), channels_last(model, use_cl), affine_batchnorm(model), \
            record(model, layers, stop=not wants_output) as rec:

        def run(x):
            return rec.run(x.contiguous(memory_format=torch.channels_last) if use_cl else x)

        def evaluate(images, which: Objective = objective):
            out = call_model(lm, images, run)
            outputs = dict(rec.outputs)
            if wants_output:
                outputs[OUTPUT] = select_output(out, lm.name)[0]
            return which(outputs).reshape(images.shape[0])

        ascent = _Ascent(lm, objective, seeds, settings, evaluate)
        ascent.start()
        for step in range(settings.steps):
            if not bool(ascent.active.any()):
                break
            ascent.step(step)
            if progress is not None:
                progress(step + 1, settings.steps)
        if progress is not None:
            progress(settings.steps, settings.steps)
        return ascent.results()


# ------------------------------------------------------------------ many filters


@dataclass(frozen=True)
class Selection:
    """The units one layer contributes to a run: the layer, the objective kind, the layer's channel
    count and the chosen units (channels, or class indices for ``class``)."""

    layer: str
    objective: str
    channels: int
    filters: Tuple[int, ...]
    class_names: Tuple[Optional[str], ...] = ()
    reads: Optional[str] = None  # the module the objective reads, when not ``layer``: the unit's response
    before: Optional[str] = None  # the unit's response before its activation (what a negative picture lowers)
    previous: Optional[str] = None  # the output the layer reads (where diverse pictures are pushed apart)

    def objective_for(self, units: Sequence[int], variant: Optional["Variant"] = None, scale: float = 0.0) -> Objective:
        """The objective of these units: one batch element per unit, or ``variant.copies`` per unit
        (element-major: the copies of a unit are neighbours), with the variant's sign and diversity."""
        variant = variant or Variant()
        k = variant.copies
        rows = [int(u) for u in units for _ in range(k)]
        where = self.reads or self.layer
        if variant.negative and self.objective == "channel-relu":  # below the activation's floor: before it
            base: Objective = ChannelRelu(self.before or where, rows, negative=True)
        elif self.objective == "channel-relu":
            base = ChannelRelu(where, rows, through=self.before)
        else:
            base = make_objective(self.objective, where, rows)
            base = -base if variant.negative else base
        if k > 1:
            groups = [i for i in range(len(units)) for _ in range(k)]
            base = Diverse(base, variant.diversity_layer or self.previous or where, groups, variant.diversity_weight,
                           scale, DIVERSITY_KEEP)
        return base


#: A diverse picture whose objective falls below this share of its group's best stops being pushed apart
#: (chosen by measurement, with the default weight 1; see docs/techniques.md).
DIVERSITY_KEEP = 0.75


@dataclass(frozen=True)
class Variant:
    """How a unit's pictures differ beyond the objective and the settings.

    ``negative``: the unit switched off as strongly as possible (``channel-relu``: the positive part
    of ``-h``; other objectives: minimised). ``diversity`` K > 1: K pictures per unit, optimised
    together with lucid's diversity term (see :class:`cnnvis.objectives.Diverse`), each recorded
    with its index. ``normalised``: read the unit after its batch norm (as ``channel-relu`` does).
    """

    negative: bool = False
    diversity: int = 1
    diversity_weight: float = 1.0
    diversity_layer: Optional[str] = None
    normalised: bool = False

    def __post_init__(self):
        if int(self.diversity) < 1:
            raise InputError(f"--diversity must be 1 or more, got {self.diversity}")
        if not math.isfinite(self.diversity_weight) or self.diversity_weight < 0:
            raise InputError(f"--diversity-weight must be a finite number >= 0, got {self.diversity_weight}")

    @property
    def copies(self) -> int:
        return max(1, int(self.diversity))

    def names(self, objective: str, preset: str) -> List[str]:
        """The record variant of each copy (one name unless diversity)."""
        return [variant_name(objective, preset, negative=self.negative, diversity=self.copies, index=k)
                for k in range(self.copies)]

    def seed_parts(self, copy: int) -> tuple:
        """What sets this variant's seeds apart from the plain picture's (nothing for the plain one)."""
        parts: tuple = ("negative",) if self.negative else ()
        return parts + (("diverse", self.copies, copy) if self.copies > 1 else ())


def select_units(lm, layer: Optional[str], filters="all", objective: str = "channel-l2",
                 settings: Optional[Settings] = None, *, normalised: bool = False) -> Selection:
    """Check a request against the model and list its units: resolves the layer, checks that the
    filters exist (the error names the layer's channel count) and that the objective fits.

    For ``objective="class"`` the filters are class indices or names (``[18, "magpie"]``) of the
    model's output (or of ``layer``'s output when given).
    """
    settings = settings or make_settings()
    kind = str(objective).lower().replace("_", "-")
    make_objective(kind, layer or OUTPUT, 0)  # validates the name
    if layer:
        names = resolve_layers(lm, [layer])
        if len(names) != 1:
            raise InputError(f"layer {layer!r} matches {len(names)} layers ({', '.join(names[:4])}, …); give one")
        layer = names[0]
    elif kind in ("class", "class-logit"):
        layer = OUTPUT
    else:
        raise InputError(f"objective {kind} needs a layer: pass -l LAYER")
    found = probe(lm, image_size(lm, settings))
    out = found.shape(layer)
    where = "the model's output" if layer == OUTPUT else f"layer {layer}"
    if out is None:
        raise InputError(f"{where} did not run in the forward pass (or produces no tensor); pick another layer")
    if len(out) < 1:
        raise InputError(f"{where} has no channel dimension (output shape {out}); pick another layer")
    channels = out[0]
    if kind == "channel-l2" and len(out) < 3:
        raise InputError(
            f"channel-l2 maximises the L2 norm of a channel's activation map, but {where} has no spatial "
            f"output (shape {'x'.join(map(str, out))} per image): use --objective neuron or channel-mean, "
            f"or a convolutional layer"
        )
    names: Tuple[Optional[str], ...] = ()
    if kind in ("class", "class-logit"):
        chosen = _class_indices(lm, filters, channels)
        if layer == OUTPUT:
            names = tuple(lm.class_name(i) for i in chosen)
        kind = "class"
    else:
        try:
            chosen = parse_filter_spec(filters, channels)
        except InputError as exc:
            raise InputError(str(exc).replace("this layer", where)) from None
        if channels and not chosen:
            raise InputError(f"no filters chosen; {where} has {channels} channels (0..{channels - 1})")
    reads = before = previous = None
    if layer != OUTPUT:
        previous = layer_before(found, layer)
    if (kind == "channel-relu" or normalised) and layer != OUTPUT:
        reads, before = unit_output(found, layer), pre_activation(found, layer)
        reads = None if reads == layer else reads
        before = None if before == (reads or layer) else before
    return Selection(layer, kind, channels, tuple(chosen), names, reads, before, previous)


def _class_indices(lm, filters, channels: int) -> List[int]:
    if isinstance(filters, (list, tuple)):
        chosen = [lm.class_index(f) for f in filters]
        bad = [i for i in chosen if not 0 <= i < channels]
        if bad:
            raise InputError(f"class {bad[0]} is out of range: the model has {channels} outputs (0..{channels - 1})")
        return list(dict.fromkeys(chosen))
    return parse_filter_spec(filters, channels)


#: Filters per batch on a CPU (and the fixed chunk that shards deal out): batching does not make an
#: image cheaper on a CPU (see PERF-NOTES), so memory and latency decide.
CPU_BATCH = 8


def auto_batch_size(lm, selection: Selection, settings: Settings, *, seed: int = 0) -> int:
    """How many filters to optimise at once: on CUDA what fits 80% of the free memory (measured
    with a one-step run of two images), on a CPU :data:`CPU_BATCH`."""
    n = len(selection.filters)
    device = lm.device
    if device.type != "cuda" or n <= 2:
        return max(1, min(n, CPU_BATCH))
    probe_settings = replace(settings, steps=1, retries=0)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    synthesize(lm, selection.objective_for(selection.filters[:2]), [seed, seed + 1], probe_settings)
    per_image = max(1, (torch.cuda.max_memory_allocated(device) - base) // 2)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(n, 1024, (0.8 * free) // per_image)))


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, MemoryError) or (oom and isinstance(exc, oom)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


#: Natural crops tried on a unit that stays dead after its fresh starts (``natural_start``).
NATURAL_STARTS = 48


def natural_start(evaluate, objective: Objective, rows: Sequence[int], size, channels: int, device, tries: int = 3):
    """For each dead element in ``rows``: the natural crops (of the photographs scikit-image and
    scikit-learn ship) that its objective answers to most, best first, at most ``tries`` and only
    those it answers to at all; ``{row: [image, …]}``."""
    try:
        from cnnvis.quality import natural_crops

        crops = natural_crops(tuple(size), channels, NATURAL_STARTS, seed=0).to(device)
    except Exception:  # the photographs are not installed: nothing more to try
        return {}
    found = {}
    for row in rows:
        one = objective.select([row] * len(crops))
        if one is None:
            continue
        with torch.no_grad():
            values = evaluate(crops, one)
        order = [int(k) for k in values.argsort(descending=True)[:tries] if float(values[k]) > 0]
        if order:
            found[row] = [crops[k] for k in order]
    return found


def seeds_for(seed: int, selection: Selection, units: Sequence[int], variant: Optional[Variant] = None) -> List[int]:
    """Each picture's own seed: from the run's seed, the layer, the objective, the unit (and the
    variant's copy), so an image does not depend on which other units share its batch."""
    variant = variant or Variant()
    return [unit_seed(seed, selection.layer, selection.objective, f, *variant.seed_parts(k))
            for f in units for k in range(variant.copies)]


def run_units(
    lm,
    selection: Selection,
    settings: Settings,
    *,
    seed: int = 0,
    batch_size: Union[int, str] = "auto",
    units: Optional[Sequence[int]] = None,
    progress: Progress = None,
    variant: Optional[Variant] = None,
) -> Iterator[Tuple[List[int], List[Synthesis], float]]:
    """Optimise ``units`` (default: all of the selection's) batch by batch.

    Yields ``(units, results, seconds)`` as each batch finishes; ``results`` has ``variant.copies``
    pictures per unit, element-major. A batch that runs out of memory is retried in halves (the
    copies of a unit stay together). ``progress(done, total)`` counts unit-steps.
    """
    variant = variant or Variant()
    todo = list(selection.filters if units is None else units)
    if not todo:
        return
    if batch_size in (None, "auto"):
        batch_size = auto_batch_size(lm, selection, settings, seed=seed)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise InputError(f"--batch-size must be a positive number or auto, got {batch_size}")
    steps = max(settings.steps, 1)
    total = len(todo) * steps
    done = 0

    def one(chunk):
        nonlocal done
        floor = 1e-3 * unit_health(lm, selection, image_size(lm, settings)).scale if variant.copies > 1 else 0.0
        objective = selection.objective_for(chunk, variant, floor)
        start = done
        tick = None if progress is None else (lambda step, n: progress(start + len(chunk) * step * steps / max(n, 1), total))
        t0 = time.perf_counter()
        try:
            results = synthesize(lm, objective, seeds_for(seed, selection, chunk, variant), settings, progress=tick)
            health = unit_health(lm, selection, image_size(lm, settings))
            results = [health.judge(u, r) for u, r in zip([u for u in chunk for _ in range(variant.copies)], results)]
        except Exception as exc:
            if not _is_oom(exc):
                raise
            if len(chunk) == 1:
                if variant.copies > 1:
                    raise CnnvisError(
                        f"out of memory with one filter's {variant.copies} diverse pictures in one batch (the diversity "
                        f"term compares them, so they run together); try a smaller --diversity or --size") from None
                raise CnnvisError("out of memory with one filter at a time; try a smaller --size") from None
            if lm.device.type == "cuda":
                torch.cuda.empty_cache()
            half = (len(chunk) + 1) // 2
            yield from one(chunk[:half])
            yield from one(chunk[half:])
            return
        done = start + len(chunk) * steps
        yield list(chunk), results, time.perf_counter() - t0

    for k in range(0, len(todo), batch_size):
        yield from one(todo[k : k + batch_size])


def library_versions() -> dict:
    """Versions that decide the pixels: cnnvis, torch, torchvision, numpy, Pillow, Python."""
    import platform

    import numpy
    import PIL
    import torchvision

    return {
        "cnnvis": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def make_record(lm, selection: Selection, unit: int, result: Synthesis, settings: Settings, *, seed: int,
                seconds: float, batch_size: int, variant: Optional[str] = None) -> dict:
    """The record of one image (the store adds ``image`` and ``fingerprint``)."""
    h, w = image_size(lm, settings)
    rec = {
        "layer": "output" if selection.layer == OUTPUT else selection.layer,
        "filter": int(unit),
        "variant": variant or variant_name(selection.objective, settings.preset),
        "objective": selection.objective,
        "objective_layer": selection.reads or ("output" if selection.layer == OUTPUT else selection.layer),
        "preset": settings.preset,
        "status": result.status,
        "reason": result.reason,
        "dead": result.dead,
        "attempts": result.attempts,
        "natural_start": result.natural_start,
        "stopped_at": result.stopped_at,
        "stop_reason": result.stop_reason,
        "objective_initial": result.objective_initial,
        "objective_final": result.objective_final,
        "loss_curve": [float(f"{v:.5g}") for v in result.curve],  # 5 digits: the manifest stays small
        "seed": int(seed),
        "unit_seed": result.seed,
        "steps": settings.steps,
        "lr": settings.lr,
        "size": [h, w],
        "settings": settings.to_dict(),
        "channels": lm.preprocessing.channels,
        "layer_channels": selection.channels,
        "model": lm.name,
        "weights": lm.weights,
        "device": str(lm.device),
        "batch_size": int(batch_size),
        "seconds": round(float(seconds), 4),
        "versions": library_versions(),
    }
    if result.unit_kind:
        rec["unit_kind"] = result.unit_kind
    if result.unit_note:
        rec["unit_note"] = result.unit_note
    if selection.objective == "class":
        names = dict(zip(selection.filters, selection.class_names)) if selection.class_names else {}
        rec["class_name"] = names.get(unit)
    return rec


@dataclass(frozen=True)
class Maximization:
    """What :func:`maximize` returns: the pictures (C x H x W in [0, 1]) and one record per picture.

    In a notebook it shows itself: ``_repr_png_`` is the grid of pictures, ``_repr_html_`` the
    grid with each picture's unit (and variant) under it.
    """

    selection: Selection
    settings: Settings
    results: Tuple[Synthesis, ...]
    records: Tuple[dict, ...] = field(default=())

    @property
    def images(self) -> torch.Tensor:
        return torch.stack([r.image for r in self.results])

    def labels(self) -> List[str]:
        """A caption per picture: the unit (class name), the copy for diverse pictures, the status."""
        out = []
        for rec in self.records:
            label = f"{rec['layer']} · {rec['filter']}"
            if rec.get("class_name"):
                label += f" ({rec['class_name']})"
            if rec.get("diversity"):
                label += f" #{rec['diversity_index']}"
            if rec.get("negative"):
                label += " negative"
            if rec.get("status") not in (None, "ok"):
                label += f" [{rec['status']}]"
            out.append(label)
        return out

    def _repr_png_(self) -> bytes:
        return grid_png(list(self.images))

    def _repr_html_(self) -> str:
        return grid_html(list(self.images), self.labels())


def maximize(
    model,
    layer: Optional[str] = None,
    filters="all",
    *,
    objective: str = "channel-l2",
    preset: str = "plain",
    seed: int = 0,
    batch_size: Union[int, str] = "auto",
    progress: Progress = None,
    negative: bool = False,
    diversity: int = 1,
    diversity_weight: float = 1.0,
    **overrides,
) -> Maximization:
    """Maximum-response images of ``filters`` of ``layer``; returns images and records, writes nothing.

    Args:
        model: a model spec, an ``nn.Module`` or a :class:`cnnvis.LoadedModel`.
        layer: the layer (dotted name); optional for ``objective="class"`` (the model's output).
        filters: ``"all"``, ``"0-7"``, ``"3,5"``, a list; class indices or names for ``class``.
        objective: ``channel-l2`` (``||h_l,d(x)||_2``), ``channel-mean``, ``channel-relu`` (the
            positive response after the layer's batch norm), ``neuron`` (the centre unit) or
            ``class``. For composed objectives call :func:`synthesize` directly.
        preset: ``plain``, ``robust`` or ``maco``; ``overrides`` set any :class:`Settings` field
            (``steps``, ``lr``, ``size``, ``retries``, ``normalize_grad``, ``clamp``, …). On a layer
            whose receptive field is a few pixels, robust and maco optimise every pixel directly
            (:func:`field_settings`).
        negative: the filter switched off instead (see :class:`Variant`).
        diversity: K pictures per filter with lucid's diversity term; ``diversity_weight`` its strength.
        batch_size: filters per batch, or ``auto``.
        progress: ``progress(done, total)`` in filter-steps.

    Example:
        >>> import cnnvis
        >>> out = maximize("lenet-digits", "conv1", "0-1", steps=4, diversity=2)
        >>> tuple(out.images.shape), out.labels()
        ((4, 1, 32, 32), ['conv1 · 0 #0', 'conv1 · 0 #1', 'conv1 · 1 #0', 'conv1 · 1 #1'])
    """
    lm = load_model(model)
    settings = make_settings(preset, **overrides)
    variant = Variant(negative=negative, diversity=diversity, diversity_weight=diversity_weight)
    selection = select_units(lm, layer, filters, objective, settings)
    settings = field_settings(lm, selection.layer, settings, keep=[k for k, v in overrides.items() if v is not None])
    names = variant.names(selection.objective, settings.preset)
    results, records = [], []
    for chunk, batch, seconds in run_units(lm, selection, settings, seed=seed, batch_size=batch_size,
                                           progress=progress, variant=variant):
        pictures = [(f, k) for f in chunk for k in range(variant.copies)]
        for (f, k), r in zip(pictures, batch):
            results.append(r)
            rec = make_record(lm, selection, f, r, settings, seed=seed, seconds=seconds / len(batch),
                              batch_size=len(batch), variant=names[k])
            if variant.negative:
                rec["negative"] = True
            if variant.copies > 1:
                rec.update(diversity=variant.copies, diversity_index=k, diversity_weight=variant.diversity_weight)
            records.append(rec)
    return Maximization(selection, settings, tuple(results), tuple(records))
