"""A photograph as the start of an ascent: the photo as the model sees it (checked, resized, in [0, 1]),
its fingerprint, a parameterisation that starts at it (:func:`photo_param`), the poses applied alike to
the image and to the photo (:class:`Poses`), and the sizes of DeepDream's octaves. A technique is an
objective plus a start from here, climbed by the one loop (:class:`cnnvis.synthesis.ascent._Ascent`).

Example:
    >>> octave_sizes((224, 224), 3, 1.4)
    [(224, 224), (160, 160), (114, 114)]
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from cnnvis.core.errors import InputError
from cnnvis.synthesis.params import COLOR, FourierImage, PixelImage, random_affine
from cnnvis.synthesis.settings import make_settings


def input_description(lm) -> str:
    """The model's input in words: ``3x224x224`` (channels x height x width) or ``3 channels, any size``."""
    pre = lm.preprocessing
    if pre.size is None:
        return f"{pre.channels}-channel images of any size"
    return f"{pre.channels}x{pre.size[0]}x{pre.size[1]} images"


def prepare_image(lm, image) -> torch.Tensor:
    """An image path, PIL image, ``H x W (x C)`` uint8 array or tensor in [0, 1] -> ``1 x C x H x W``
    on the model's device, as the model sees it. Files and PIL images are resized, cropped and
    converted to the model's channels; a tensor is used as it is and must already fit
    (one line saying the model's input otherwise)."""
    import numpy as np

    if isinstance(image, np.ndarray):
        from PIL import Image

        a = image
        if a.dtype != np.uint8:
            a = np.round(np.clip(a.astype(np.float64), 0, 1) * 255).astype(np.uint8)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
            raise InputError(f"an image array must be H x W or H x W x 3, got shape {image.shape}; "
                             f"{lm.name} takes {input_description(lm)}")
        image = Image.fromarray(a)
    if isinstance(image, torch.Tensor):
        t = image.detach()
        shape = "x".join(map(str, t.shape))
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        pre = lm.preprocessing
        fits = t.ndim == 3 and t.shape[0] == pre.channels and (pre.size is None or tuple(t.shape[1:]) == tuple(pre.size))
        if not fits:
            raise InputError(f"{lm.name} takes {input_description(lm)} (channels x height x width, values in [0, 1]); "
                             f"got a {shape} tensor: pass an image file or PIL image (cnnvis resizes it) or a tensor "
                             f"of that shape")
        if t.numel() and (float(t.min()) < -1e-3 or float(t.max()) > 1 + 1e-3):
            raise InputError(f"image tensor values must lie in [0, 1], got {float(t.min()):.4g}..{float(t.max()):.4g}; "
                             f"divide 0-255 images by 255")
        image = t
    x = lm.input_tensor(image)
    return x.clamp(0.0, 1.0)


def tensor_fingerprint(x: torch.Tensor) -> str:
    """A hash of an image tensor's shape and values (what the model sees, however it was given)."""
    t = x.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] < x.shape[-2]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)


def octave_sizes(size: Tuple[int, int], octaves: int, octave_scale: float) -> List[Tuple[int, int]]:
    """The image sizes DeepDream works at, largest (the photo's) first.

    Example:
        >>> octave_sizes((224, 224), 4, 1.4)
        [(224, 224), (160, 160), (114, 114), (82, 82)]
    """
    h, w = size
    return [(max(1, round(h / octave_scale**k)), max(1, round(w / octave_scale**k))) for k in range(octaves)]


def pose_settings(jitter: int, scale: Sequence[float], rotate: float):
    """The settings of a technique's mild random transform (and of its Fourier image: robust's)."""
    return make_settings("robust", jitter=int(jitter), scale=tuple(scale), rotate=float(rotate))


def moves(tset) -> bool:
    """Whether the transform settings move the image at all."""
    return bool(tset.jitter or tset.rotate or tuple(tset.scale) != (1.0, 1.0))


#: Random transforms drawn per run: the reference image's activations are computed once per pose
#: (a forward pass each) instead of once per step, and each step picks one pose at random.
POSES = 16


class Poses:
    """A fixed set of random jitter/scale/rotations (:func:`cnnvis.synthesis.params.random_affine`), the
    same one applied to the optimised image and to the reference photo; one identity pose when
    the settings move nothing."""

    def __init__(self, g: torch.Generator, tset, count: int = POSES):
        self.tset, self.g = tset, g
        self.states = [None]
        if moves(tset):
            self.states = []
            for _ in range(count):
                self.states.append(g.get_state())
                torch.rand(4, generator=g, dtype=torch.float64)  # what random_affine draws

    def __len__(self) -> int:
        return len(self.states)

    def apply(self, k: int, image: torch.Tensor) -> torch.Tensor:
        if self.states[k] is None:
            return image
        g = torch.Generator().set_state(self.states[k])
        return random_affine(image, [g], self.tset)

    def pick(self) -> int:
        return int(torch.randint(len(self.states), (1,), generator=self.g)) if len(self.states) > 1 else 0


def logit(x: torch.Tensor, eps: float = 1.0 / 255) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x) - torch.log1p(-x)


def photo_param(kind: str, lm, size, g: torch.Generator, start: Optional[torch.Tensor], tset):
    """A Fourier (lucid's, 1/f-scaled, decorrelated colours, sigmoid) or pixel image, from noise
    or initialised at ``start`` (1 x C x H x W), which it then reproduces (to 1/255 at saturated pixels)."""
    channels = lm.preprocessing.channels
    if kind == "pixel":
        param = PixelImage([g], channels, size, lm.device, replace(tset, clamp=True))
        if start is not None:
            with torch.no_grad():
                param.x.copy_(start)
        return param
    param = FourierImage([g], channels, size, lm.device, tset)
    if start is not None:
        y = logit(start.to(lm.device))
        if param.decorrelate:
            y = torch.einsum("bdhw,cd->bchw", y, torch.linalg.inv(COLOR).to(y))
        spectrum = torch.fft.rfftn(y * 4.0, dim=(-2, -1), norm="ortho")  # image() divides by lucid's 4
        with torch.no_grad():
            param.spectrum.copy_(torch.view_as_real(spectrum) / param.scale)
    return param
