"""How a picture is parameterised, and the random transform it is looked at through.

* :class:`PixelImage` — every pixel a parameter, starting as ``U[0, 1]`` noise (the textbook);
* :class:`FourierImage` — lucid's: a spectrum scaled by 1/f, decorrelated colours (:data:`COLOR`),
  then a sigmoid;
* :class:`cnnvis.synthesis.maco.MacoImage` — MACO's phase with a fixed natural magnitude (its own module);
* :func:`random_affine` — pad with grey, jitter, scale and rotate, one resampling per step.

A parameterisation holds one picture per batch element, each drawn from that element's own random
generator; ``params`` are what the optimiser moves, ``image()`` the pictures in [0, 1], ``restart``
draws element ``i`` again, ``set_image`` starts it from a given picture and ``after_step`` keeps
the parameters valid (the pixel image's clamp). ``settings`` is a :class:`cnnvis.synthesis.Settings`.

Example:
    >>> import torch
    >>> from cnnvis.synthesis import make_settings
    >>> x = PixelImage([torch.Generator().manual_seed(0)], 3, (8, 8), "cpu", make_settings("plain"))
    >>> tuple(x.image().shape), bool(x.image().min() >= 0)
    ((1, 3, 8, 8), True)
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F

#: lucid's colour correlation (square root of the ImageNet colour covariance, from its SVD).
COLOR_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
#: The same, its largest column norm scaled to 1: what the parameterisations multiply colours by.
COLOR = COLOR_SVD_SQRT / COLOR_SVD_SQRT.norm(dim=0).max()


class PixelImage:
    """Each pixel is a parameter; starts as ``U[0, 1]`` noise from the element's generator."""

    def __init__(self, generators: Sequence[torch.Generator], channels: int, size, device, settings):
        self.shape = (channels,) + tuple(size)
        self.x = torch.stack([self._noise(g) for g in generators]).to(device).requires_grad_(True)
        self.clamp = settings.clamp

    def _noise(self, g):
        return torch.rand(self.shape, generator=g)

    @property
    def params(self) -> List[torch.Tensor]:
        return [self.x]

    def image(self) -> torch.Tensor:
        return self.x

    def restart(self, i: int, g: torch.Generator, attempt: int) -> None:
        with torch.no_grad():
            self.x[i] = self._noise(g).to(self.x.device)

    def set_image(self, i: int, image: torch.Tensor) -> None:
        """Start element ``i`` from ``image`` (C x H x W in [0, 1])."""
        with torch.no_grad():
            self.x[i] = image.to(self.x.device)

    def after_step(self) -> None:
        if self.clamp:
            with torch.no_grad():
                self.x.clamp_(0.0, 1.0)


class FourierImage:
    """lucid's parameterisation: a spectrum scaled by 1/f, decorrelated colours, then a sigmoid."""

    def __init__(self, generators: Sequence[torch.Generator], channels: int, size, device, settings):
        h, w = size
        self.size, self.channels = (h, w), channels
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** settings.decay_power
        self.scale = scale[None, None, :, :, None].to(device)
        self.shape = (channels, h, w // 2 + 1, 2)
        self.sd = settings.fourier_sd
        self.decorrelate = settings.decorrelate and channels == 3
        self.color = COLOR.to(device)
        self.spectrum = torch.stack([self._noise(g) for g in generators]).to(device).requires_grad_(True)

    def _noise(self, g):
        return torch.randn(self.shape, generator=g) * self.sd

    @property
    def params(self) -> List[torch.Tensor]:
        return [self.spectrum]

    def image(self) -> torch.Tensor:
        spectrum = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        x = torch.fft.irfftn(spectrum, s=self.size, dim=(-2, -1), norm="ortho") / 4.0  # lucid's "magic" 4
        if self.decorrelate:
            x = torch.einsum("bchw,dc->bdhw", x, self.color)
        return torch.sigmoid(x)

    def restart(self, i: int, g: torch.Generator, attempt: int) -> None:
        """Fresh spectrum noise, 10x stronger per attempt (a near-grey start cannot wake a dead filter)."""
        with torch.no_grad():
            self.spectrum[i] = self._noise(g).to(self.spectrum.device) * 10.0**attempt

    def set_image(self, i: int, image: torch.Tensor) -> None:
        """Start element ``i`` from ``image``: the spectrum whose image it is (sigmoid, colours and the
        1/f scaling undone), pixels kept away from 0 and 1 so the sigmoid can be inverted."""
        with torch.no_grad():
            x = torch.logit(image.to(self.spectrum.device).clamp(0.01, 0.99))
            if self.decorrelate:
                x = torch.einsum("chw,dc->dhw", x, torch.linalg.inv(self.color))
            spectrum = torch.fft.rfftn(x * 4.0, dim=(-2, -1), norm="ortho") / self.scale[0, ..., 0]
            self.spectrum[i] = torch.view_as_real(spectrum)

    def after_step(self) -> None:
        pass


def random_affine(images: torch.Tensor, generators: Sequence[torch.Generator], settings) -> torch.Tensor:
    """Pad with grey, jitter, scale and rotate each image at random, keeping its size.

    One bilinear resampling per step; outside the image reads as grey 0.5 (lucent's pad). The
    jitter (in pixels) shrinks in proportion on canvases smaller than 128 px.
    """
    b, _, h, w = images.shape
    lo, hi = settings.scale
    jitter = settings.jitter * min(1.0, min(h, w) / 128.0)  # the preset's jitter is for 128 px and more
    rows = []
    for g in generators:
        r = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        s = lo + (hi - lo) * r[0]
        a = math.radians((2 * r[1] - 1) * settings.rotate)
        dx = (2 * r[2] - 1) * jitter * 2.0 / w
        dy = (2 * r[3] - 1) * jitter * 2.0 / h
        c, sn = math.cos(a) / s, math.sin(a) / s
        rows.append([[c, -sn, dx], [sn, c, dy]])
    theta = torch.tensor(rows, dtype=images.dtype, device=images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5
