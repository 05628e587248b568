"""What a model expects as input: size, channels, normalisation; and turning images into that."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from cnnvis.errors import InputError

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
        """A PIL image -> C x H x W float tensor in [0, 1], as this model sees it."""
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        mode = "L" if self.channels == 1 else "RGB"
        if image.mode != mode:
            if image.mode in ("RGBA", "LA", "P") and mode == "RGB":
                image = image.convert("RGBA")
                from PIL import Image

                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image)
            image = image.convert(mode)
        interp = InterpolationMode(self.interpolation)
        if self.size is not None:
            if self.resize is not None:
                image = TF.resize(image, self.resize, interpolation=interp)
                image = TF.center_crop(image, list(self.size))
            else:
                image = TF.resize(image, list(self.size), interpolation=interp)
        return TF.to_tensor(image)


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
