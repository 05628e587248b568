"""What a model expects as input: size, channels, normalisation; and turning images into that."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from cnnvis.core.errors import InputError

#: Input size used to probe a model whose preprocessing does not fix one (``cnnvis layers``).
PROBE_SIZE = 224


@dataclass(frozen=True)
class Preprocessing:
    """How images reach a model: resize, centre crop, channels, then ``(x - mean) / std``.

    ``size`` is the (height, width) the model sees, or ``None`` to keep each image's own
    size. ``resize`` (the shorter side before a centre crop to ``size``) is optional; without
    it images are resized straight to ``size``. Every tensor boundary in cnnvis is NCHW
    float in [0, 1]; :meth:`normalize` is applied just before the model.
    """

    size: Optional[Tuple[int, int]] = None
    channels: int = 3
    mean: Tuple[float, ...] = (0.0, 0.0, 0.0)
    std: Tuple[float, ...] = (1.0, 1.0, 1.0)
    resize: Optional[int] = None
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise InputError(f"channels must be 1 or 3, got {self.channels}")
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise InputError(
                    f"--{label} needs 1 or {self.channels} values for a {self.channels}-channel model, got {len(values)}"
                )
        for label, values in (("mean", self.mean), ("std", self.std)):
            if not all(math.isfinite(v) for v in values):
                raise InputError(f"--{label} values must be finite numbers, got {list(values)}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"--std values must be positive, got {list(self.std)}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise InputError(f"size must be a positive (height, width), got {self.size}")

    def input_size(self, default: int = PROBE_SIZE) -> Tuple[int, int]:
        """The (height, width) to use when an input must be made up (a probe, noise)."""
        return tuple(self.size) if self.size is not None else (default, default)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW in [0, 1] -> what the model consumes."""
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def prepare(self, image) -> torch.Tensor:
        """A PIL image -> C x H x W float tensor in [0, 1], as this model sees it.

        Colour images lose their alpha over white; high bit depth images (16-bit PNG/TIFF,
        see :func:`scale_bit_depth`) are scaled by their bit depth, not clipped at 255.
        """
        mode = "L" if self.channels == 1 else "RGB"
        image = scale_bit_depth(image)
        if image.mode not in (mode, "F"):
            try:
                with warnings.catch_warnings():  # transparency is handled here: no notice about it
                    warnings.simplefilter("ignore", UserWarning)
                    if image.mode in ("RGBA", "LA", "P", "PA", "RGBa", "La") and mode == "RGB":
                        image = image.convert("RGBA")
                        from PIL import Image

                        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                        image = Image.alpha_composite(background, image)
                    image = image.convert(mode)
            except (ValueError, OSError) as exc:
                raise InputError(f"cannot convert a {image.mode} image to {mode} ({exc})") from None
        if self.size is not None:
            if self.resize is not None:
                image = _resize(image, [self.resize], self.interpolation)
                image = _center_crop(image, list(self.size))
            else:
                image = _resize(image, list(self.size), self.interpolation)
        x = _to_tensor(image)
        if image.mode == "F":  # grey in [0, 1] at full precision; interpolation may overshoot a little
            x = x.clamp(0.0, 1.0)
            if self.channels == 3:
                x = x.expand(3, -1, -1).clone()
        return x


# The PIL path of torchvision.transforms.functional's resize, center_crop and to_tensor, step for step (the same
# pixels, tested against it): importing torchvision loads its compiled operators, about 170 MB in every process.

#: PIL's resampling filter for each interpolation name (torchvision's ``InterpolationMode`` values).
PIL_FILTERS = {"nearest": 0, "nearest-exact": 0, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5, "lanczos": 1}


def _resize(image, size, interpolation: str):
    """``size`` [h, w], or [s]: the shorter side becomes s, the longer in proportion (rounded down)."""
    if interpolation not in PIL_FILTERS:
        raise ValueError(f"{interpolation!r} is not a valid interpolation, use one of {', '.join(PIL_FILTERS)}")
    w, h = image.size
    if len(size) == 1:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size[0], int(size[0] * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size
    if [h, w] == [new_h, new_w]:
        return image
    return image.resize((new_w, new_h), PIL_FILTERS[interpolation])


def _center_crop(image, size):
    """The centre ``size`` [h, w] of the image, padded with black where it is smaller."""
    from PIL import ImageOps

    crop_h, crop_w = size
    w, h = image.size
    if crop_w > w or crop_h > h:
        border = ((crop_w - w) // 2 if crop_w > w else 0, (crop_h - h) // 2 if crop_h > h else 0,
                  (crop_w - w + 1) // 2 if crop_w > w else 0, (crop_h - h + 1) // 2 if crop_h > h else 0)
        image = ImageOps.expand(image, border=border, fill=0 if len(image.getbands()) == 1 else (0,) * len(image.getbands()))
        w, h = image.size
        if (crop_w, crop_h) == (w, h):
            return image
    top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def _to_tensor(image) -> torch.Tensor:
    """C x H x W of a prepared image (mode L, RGB or F): 8-bit as float32 / 255, mode F as it is."""
    import numpy as np

    x = torch.from_numpy(np.array(image, np.float32 if image.mode == "F" else np.uint8, copy=True))
    x = x.view(image.size[1], image.size[0], len(image.getbands())).permute((2, 0, 1)).contiguous()
    return x.to(dtype=torch.get_default_dtype()).div(255) if x.dtype == torch.uint8 else x


#: Full scale of the integer modes PIL uses for high bit depth images.
_SIXTEEN_BIT = 65535.0


def scale_bit_depth(image):
    """A high bit depth PIL image -> a float (mode ``F``) grey image in [0, 1]; others unchanged.

    16-bit images (modes ``I;16``, ``I;16B``, …: 16-bit PNG and TIFF) are divided by 65535. Mode ``I``
    (32-bit integers; older Pillow opens 16-bit PNGs this way) is divided by 65535 when its values
    fit in 16 bits, else by 2**31 - 1; negative values become 0. Mode ``F`` (float TIFF) is taken to
    be in [0, 1] already and clipped to it.

    Example:
        >>> from PIL import Image
        >>> import numpy as np
        >>> im = scale_bit_depth(Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)))
        >>> im.mode, np.asarray(im).tolist()
        ('F', [[0.0, 1.0]])
    """
    import numpy as np
    from PIL import Image

    if image.mode.startswith("I;16"):
        a = np.asarray(image).astype(np.float32) / _SIXTEEN_BIT
    elif image.mode == "I":
        a = np.asarray(image).astype(np.float64)
        top = float(a.max()) if a.size else 0.0
        a = np.clip(a, 0, None) / (_SIXTEEN_BIT if top <= _SIXTEEN_BIT else float(2**31 - 1))
    elif image.mode == "F":
        a = np.asarray(image, dtype=np.float32)
        a = np.where(np.isfinite(a), a, 0.0)
    else:
        return image
    return Image.fromarray(np.clip(a, 0.0, 1.0).astype(np.float32), mode="F")


def parse_floats(text: Optional[str], label: str) -> Optional[Tuple[float, ...]]:
    """``"0.5,0.5,0.5"`` -> ``(0.5, 0.5, 0.5)``; None stays None."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(",") if v != "")
    except ValueError:
        raise InputError(f"{label} must be comma-separated numbers like 0.485,0.456,0.406, got {text!r}") from None
    if not values:
        raise InputError(f"{label} is empty; give numbers like 0.485,0.456,0.406")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{label} must be finite numbers like 0.485,0.456,0.406, got {text!r}")
    return values


def parse_size(value) -> Optional[Tuple[int, int]]:
    """``224`` / ``"224"`` / ``"224x160"`` / ``(224, 160)`` -> ``(height, width)``."""
    if value is None:
        return None
    if isinstance(value, int):
        h = w = value
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise InputError(f"size must be N or HxW, got {value!r}")
        h, w = (int(v) for v in value)
    else:
        text = str(value).lower().replace("×", "x")
        try:
            parts = [int(p) for p in text.split("x")]
        except ValueError:
            raise InputError(f"size must be N or HxW (like 224 or 224x160), got {value!r}") from None
        if len(parts) == 1:
            h = w = parts[0]
        elif len(parts) == 2:
            h, w = parts
        else:
            raise InputError(f"size must be N or HxW (like 224 or 224x160), got {value!r}")
    if h < 1 or w < 1:
        raise InputError(f"size must be positive, got {value!r}")
    return (h, w)
