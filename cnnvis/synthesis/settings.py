"""The settings of a picture: presets, sizes, first-layer and small-canvas rules, per-unit seeds.

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
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from typing import Optional, Tuple


from cnnvis.core.errors import CnnvisError, InputError
from cnnvis.synthesis.objectives import OUTPUT
from cnnvis.model.preprocess import parse_size
from cnnvis.attribution.receptive import receptive_fields


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


#: What each preset changes in :class:`Settings`, whose defaults are the textbook's (256 steps of
#: ``x += lr * g`` on pixels, lr 0.05): one default per setting, written once.
_PRESET_FIELDS = {
    "plain": dict(early_stop=False),  # the textbook ascent runs its steps
    "robust": dict(
        steps=512, param="fourier", optimizer="adam", normalize_grad=False,
        clamp=False, decorrelate=True, transforms=True, jitter=6, scale=(0.9, 1.1), rotate=10.0,
    ),
    "maco": dict(
        lr=0.1, param="maco", optimizer="adam", normalize_grad=False, clamp=False, decorrelate=True,
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
