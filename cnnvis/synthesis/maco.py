"""MACO: feature visualisation with a fixed natural magnitude spectrum and an optimised phase.

MACO (MAgnitude Constrained Optimisation; Fel et al. 2023, "Unlocking Feature Visualization
for Deeper Networks with MAgnitude Constrained Optimization", arXiv:2306.06805) keeps the
Fourier *magnitude* of the image fixed to the average magnitude of natural photographs and
optimises only the Fourier *phase*. The image can then rearrange its structure freely, but its
energy per spatial frequency stays that of a photograph: it cannot fill up with the
high-frequency patterns gradient ascent otherwise finds.

The image of batch element ``b``, with the fixed magnitude ``m_c(f)`` of channel ``c`` and the
optimised phase ``phi_bc(f)`` (one value per ``rfft2`` bin, ``B x C x H x (W//2+1)``)::

    z_bc   = irfft2(m_c * exp(i * phi_bc))          (norm="ortho", size H x W)
    z_b    = (z_b - mean(z_b)) / std(z_b)           (over C x H x W of the element)
    y_b    = COLOR @ z_b                            (3 channels: decorrelated -> RGB)
    image  = sigmoid(contrast * y_b)                in [0, 1]

``m`` is a spectrum of the *decorrelated* colour channels (``COLOR^-1 (rgb - mean)``, with
:data:`cnnvis.synthesis.params.COLOR`, lucid's square root of the ImageNet colour covariance), so the
recorrelation gives the colours their natural covariance. Images with one channel use the
spectrum of the photographs' luma and no colour step; any other channel count uses the luma
spectrum for every channel and no colour step.

Three details make the magnitude constraint exact on the output rather than approximate:

* ``irfft2`` reads the two columns that ``rfft2`` stores for both signs of the vertical frequency
  (``fx = 0`` and, for even widths, ``fx = W/2``) as Hermitian, i.e. it averages ``X(fy)`` with
  the conjugate of ``X(-fy)``; with independent phases that would shrink those magnitudes at
  random. The phase of these two columns is therefore made odd in ``fy`` before use (the bins
  of negative ``fy`` take ``-phi(-fy)``), which keeps every magnitude and keeps a uniform phase
  uniform. The at most four bins that are
  their own mirror image (DC and the Nyquist corners) are real: their value is
  ``m * cos(phi)``, which for DC means a signed brightness/colour offset of at most the
  photographs' average offset.
* the standardisation multiplies every non-DC bin by the same number ``1 / std``, so the output
  spectrum is ``m`` up to one factor per image (its DC loses the common mean);
* the phase is wrapped into ``[-pi, pi)`` after each step (``cos``/``sin`` do not see it).

Initial phase: uniform in ``[-pi, pi)``. Xplique and Horama draw it from ``N(0, 1)`` and
re-standardise it to mean 0, std 1 on every forward pass; for ``phi ~ N(0, 1)``,
``E[exp(i phi)] = exp(-1/2) ~ 0.61``, i.e. ``exp(-1) ~ 37%`` of the image energy is a
coherent, point-symmetric blob centred on pixel (0, 0) (a bright spot split over the four
corners, several standard deviations high). The uniform phase has ``E[exp(i phi)] = 0``: the
starting image is a stationary random field with exactly the natural spectrum. Nothing is
standardised on the phase (it is an angle); in the references that standardisation also makes
the step on the raw phase shrink as its spread grows, so their lr 1.0 (NAdam) is not an lr on
an angle. Here Adam with lr 0.05-0.1 on the angle works (0.1 for 128 steps).

Robustness (:func:`random_crops`): each step the network sees ``crops`` random square crops of
every image (side a fraction ``U(lo, hi)`` of the image side, centre ``0.5 + N(0, spread)`` of
each side, moved so the crop stays inside the image), resized back to ``H x W`` with bilinear
sampling, plus Gaussian pixel noise. Everything is drawn from the element's own generator.

Reference implementations read (ideas, no code copied):

* Xplique (deel-ai/xplique, MIT): ``xplique/features_visualizations/maco.py`` (the loop: NAdam
  lr 1.0, 256 steps, 32 crops per step, crop side linearly from 50% to 5% of a 512 px image,
  centre ``0.5 + N(0, 0.15)``, side ``N(mean, 0.05)`` clipped to [0.05, 1],
  ``tf.image.crop_and_resize`` to the model's input size, noise ``N(0, 0.08) + U(-0.04, 0.04)``
  in the model's value range; returns the image and a *transparency* map, the sum over steps of
  ``|d objective / d image|``) and ``preconditioning.py`` (``init_maco_buffer``: the magnitude is
  ``spectrum_decorrelated.npy``, a 3 x 512 x 257 mean ``|rfft2|`` of ImageNet images in the
  decorrelated colour space, bilinearly resized to the image's ``rfft2`` grid, or the mean
  ``|rfft2|`` over a user's dataset; ``maco_image_parametrization``: standardised phase, polar
  spectrum, ``irfft2``, standardised image, recorrelated colours, sigmoid).
* Horama (serre-lab/Horama, MIT): ``horama/maco_fv.py`` (same parameterisation; NAdam lr 1.0,
  1000 steps, a 1280 px image, 6 crops per step of side 20-25% resized to 224 px with
  ``torchvision.ops.roi_align``, noise ``N(0, 0.05) + U(-0.025, 0.025)``, value range
  (-2.5, 2.5)), ``horama/common.py`` (the crops) and ``horama/plots.py`` (``plot_maco``: the
  transparency map averaged over channels, clipped at its 80th percentile, divided by its
  maximum, used as the alpha channel of the percentile-clipped, min-max-normalised image).

The spectrum (``cnnvis/data/natural_spectrum.npz``, a few KB) is made offline by
``benchmarks/make_natural_spectrum.py`` from six photographs shipped with scikit-image and
scikit-learn (public domain, CC0 and CC BY 2.0; see that script): each photograph is
decorrelated, Hann-windowed, transformed with ``rfft2`` (norm "ortho"), and its magnitude is
averaged in rings of radius ``|f|`` (4 rings per octave of cycles per pixel); the six profiles
are averaged. The profile is radially symmetric: with six photographs the per-orientation
averages at low frequencies vary by about 40% from one orientation bin to the next (the content
of single photographs), more than the true anisotropy of natural images (10-30% more energy on
the horizontal and vertical axes), and an isotropic prior favours no orientation. Because it is
a function of ``|f|`` in cycles per pixel, it gives the spectrum of any image size, square or
not, odd or even; below the lowest frequency the photographs measure well (about 1/108 cycle
per pixel) it continues the power law fitted over the two octaves above it.

Example:
    >>> import torch
    >>> from cnnvis.synthesis.maco import MacoImage, natural_magnitude, random_crops
    >>> natural_magnitude(32, 32, 3).shape
    torch.Size([3, 32, 17])
    >>> gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    >>> img = MacoImage(gens, 3, (32, 32), "cpu", None)
    >>> tuple(img.params[0].shape), tuple(img.image().shape)
    ((2, 3, 32, 17), (2, 3, 32, 32))
    >>> bool(((img.image() > 0) & (img.image() < 1)).all())
    True
    >>> tuple(random_crops(img.image(), gens, crops=3).shape)
    (6, 3, 32, 32)
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from cnnvis.core.errors import InputError
from cnnvis.synthesis.params import COLOR

#: the spectrum table made by ``benchmarks/make_natural_spectrum.py``
SPECTRUM_FILE = Path(__file__).resolve().parent / "data" / "natural_spectrum.npz"

#: gain before the sigmoid: random-phase images get about the pixel contrast of the photographs
#: the spectrum comes from (per RGB channel a standard deviation of 0.23 in [0, 1]; tested)
CONTRAST = 2.5

#: default robustness: crops per step, crop side as a fraction of the image side, pixel noise
#: (standard deviation in [0, 1] units) and the spread of the crop centres. Sized for a CPU:
#: with Adam lr 0.1 and 128 steps, 2 crops of a 128 px image cost about 2.8 s per image on two
#: cores for efficientnet-lite0 up to blocks.5 (1 crop: about 1.7 s)
CROPS = 2
CROP_SCALE = (0.75, 1.0)
NOISE = 0.02
SPREAD = 0.15


def frequency_radius(height: int, width: int) -> torch.Tensor:
    """``|f|`` in cycles per pixel of every ``rfft2`` bin of an ``height x width`` image (float64)."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    return torch.sqrt(fy * fy + fx * fx)


@functools.lru_cache(maxsize=1)
def load_spectrum() -> Dict[str, np.ndarray]:
    """The arrays of the shipped spectrum file (read once)."""
    with np.load(SPECTRUM_FILE, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _profile(channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(log2 magnitude per ring, DC magnitude per pixel)`` for ``channels`` channels."""
    s = load_spectrum()
    if channels == 3:
        rings, dc = s["decorrelated"], s["dc_decorrelated"]
    else:
        rings, dc = np.repeat(s["gray"], channels, 0), np.repeat(s["dc_gray"], channels, 0)
    return torch.from_numpy(np.log2(rings.astype(np.float64))), torch.from_numpy(dc.astype(np.float64))


def _interp_rings(log2_rings: torch.Tensor, log2_radius: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``C x R`` ring values at ``log2_radius`` (clamped to the table)."""
    centres = torch.from_numpy(load_spectrum()["log2_radius"].astype(np.float64))
    step = float(centres[1] - centres[0])
    u = ((log2_radius - centres[0]) / step).clamp(0, len(centres) - 1)
    i0 = u.floor().long().clamp(max=len(centres) - 2)
    t = u - i0
    return log2_rings[:, i0] * (1 - t) + log2_rings[:, i0 + 1] * t


def _full_energy(m: torch.Tensor, width: int) -> torch.Tensor:
    """``sum |X|^2`` over the full (two-sided) spectrum of the ``rfft2`` magnitudes ``m``."""
    weight = torch.full((m.shape[-1],), 2.0, dtype=m.dtype)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    return (m * m * weight).sum()


@functools.lru_cache(maxsize=16)
def _natural_magnitude(height: int, width: int, channels: int) -> torch.Tensor:
    log2_rings, dc = _profile(channels)
    r = frequency_radius(height, width)
    m = torch.exp2(_interp_rings(log2_rings, torch.log2(r.clamp(min=1e-12))))
    m[:, 0, 0] = dc * math.sqrt(height * width)  # ortho DC coefficient of a mean offset dc
    return m / torch.sqrt(_full_energy(m, width) / (channels * height * width))


def natural_magnitude(height: int, width: int, channels: int, device=None) -> torch.Tensor:
    """The fixed MACO magnitude, ``channels x height x (width//2+1)`` float32, for ``rfft2`` bins.

    The photographs' ring profile (decorrelated colours for 3 channels, luma otherwise) read at
    every bin's ``|f|`` in cycles per pixel, interpolated linearly in log-log; the DC bin is the
    photographs' average colour offset. Scaled so that a random-phase image from it
    (``irfft2``, norm "ortho") has a pixel variance of 1, averaged over channels, at any size:
    the standardisation in :meth:`MacoImage.image` then changes almost nothing.

    Example:
        >>> m = natural_magnitude(64, 64, 1)
        >>> tuple(m.shape), bool(m[0, 0, 1] > m[0, 0, 8] > m[0, 0, 32])
        ((1, 64, 33), True)
    """
    if height < 1 or width < 1 or channels < 1:
        raise InputError(f"need a positive size and channel count, got {height}x{width}x{channels}")
    return _natural_magnitude(int(height), int(width), int(channels)).to(device=device, dtype=torch.float32,
                                                                       copy=True)


def standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each element of the batch to mean 0, standard deviation 1 over its C x H x W values."""
    flat = x.flatten(1)
    mean = flat.mean(1).view(-1, *([1] * (x.ndim - 1)))
    std = flat.std(1, unbiased=False).view_as(mean)
    return (x - mean) / (std + eps)


def _hermitian_phase(phase: torch.Tensor, width: int) -> torch.Tensor:
    """The phase with its ``fx = 0`` (and even-width Nyquist) columns made odd in ``fy``.

    In those columns the bins of negative ``fy`` take minus the phase of their mirror bin
    (``phi(-fy) = -phi(fy)``), so a uniform phase stays uniform; their own phase values are not
    used (no gradient). Rows that are their own mirror (``fy = 0`` and, for even heights,
    ``fy = -1/2``) keep their phase: ``irfft2`` uses only the real part there.
    """
    h, cols = phase.shape[-2], phase.shape[-1]
    mirror = (-torch.arange(h)) % h
    col = torch.zeros(cols, dtype=torch.bool)
    col[0] = True
    if width % 2 == 0:
        col[-1] = True
    negative = torch.arange(h) > h // 2
    mask = (negative[:, None] & col[None, :]).to(phase.device)
    return torch.where(mask, -phase[..., mirror.to(phase.device), :], phase)


def _color_matrix() -> torch.Tensor:
    """lucid's colour correlation matrix (:data:`cnnvis.synthesis.params.COLOR`)."""
    return COLOR


class MacoImage:
    """MACO's parameterisation: fixed natural magnitude, optimised phase, recorrelated colours, sigmoid.

    ``params`` is the phase only, ``B x C x H x (W//2+1)`` in radians; the magnitude
    (:func:`natural_magnitude`) is a buffer. ``settings`` may be None or any object: an optional
    ``maco_contrast`` attribute overrides :data:`CONTRAST`.
    """

    def __init__(self, generators: Sequence[torch.Generator], channels: int, size, device, settings):
        h, w = (int(s) for s in size)
        self.size, self.channels = (h, w), channels
        self.shape = (channels, h, w // 2 + 1)
        self.magnitude = natural_magnitude(h, w, channels, device)
        self.recorrelate = channels == 3
        self.color = _color_matrix().to(device)
        self.contrast = float(getattr(settings, "maco_contrast", CONTRAST))
        self.phase = torch.stack([self._noise(g) for g in generators]).to(device).requires_grad_(True)

    def _noise(self, g: torch.Generator) -> torch.Tensor:
        return (torch.rand(self.shape, generator=g) * 2 - 1) * math.pi

    @property
    def params(self) -> List[torch.Tensor]:
        return [self.phase]

    def signal(self) -> torch.Tensor:
        """The standardised image before colour and sigmoid, ``B x C x H x W`` (decorrelated colours)."""
        phase = _hermitian_phase(self.phase, self.size[1])
        spectrum = torch.polar(self.magnitude.expand_as(phase), phase)
        return standardize(torch.fft.irfft2(spectrum, s=self.size, norm="ortho"))

    def image(self) -> torch.Tensor:
        x = self.signal()
        if self.recorrelate:
            x = torch.einsum("bchw,dc->bdhw", x, self.color)
        return torch.sigmoid(self.contrast * x)

    def restart(self, i: int, g: torch.Generator, attempt: int) -> None:
        """A fresh uniform phase for element ``i`` (the contrast is fixed, so ``attempt`` changes nothing)."""
        with torch.no_grad():
            self.phase[i] = self._noise(g).to(self.phase.device)

    def set_image(self, i: int, image: torch.Tensor) -> None:
        """Start element ``i`` from the phase of ``image`` (C x H x W in [0, 1]): the sigmoid and the
        colours undone, its Fourier phase kept, the magnitude staying the natural one."""
        with torch.no_grad():
            x = torch.logit(image.to(self.phase.device).clamp(0.01, 0.99)) / self.contrast
            if self.recorrelate:
                x = torch.einsum("chw,dc->dhw", x, torch.linalg.inv(self.color))
            self.phase[i] = torch.angle(torch.fft.rfft2(x, norm="ortho"))

    def after_step(self) -> None:
        """Wrap the phase into ``[-pi, pi)`` (the image does not change)."""
        with torch.no_grad():
            self.phase.copy_(torch.remainder(self.phase + math.pi, 2 * math.pi) - math.pi)


def random_crops(
    images: torch.Tensor,
    generators: Sequence[torch.Generator],
    *,
    crops: int = CROPS,
    scale: Tuple[float, float] = CROP_SCALE,
    noise: float = NOISE,
    spread: float = SPREAD,
) -> torch.Tensor:
    """``crops`` random crops of each image, resized back to ``H x W``, plus Gaussian noise.

    ``images`` is ``B x C x H x W``; the result is ``B*crops x C x H x W`` in element-major
    order: row ``i * crops + k`` is crop ``k`` of image ``i`` (average a per-row objective with
    ``.view(B, crops).mean(1)``). Crop ``k`` of image ``i`` covers a fraction ``s ~ U(lo, hi)``
    of the height and of the width (the image's aspect ratio), centred at ``0.5 + N(0, spread)``
    of each side, moved to lie inside the image; one bilinear resampling for the whole batch.
    ``noise`` is the standard deviation of the Gaussian noise added to every pixel of every crop
    (0: none, and none drawn). All random numbers of image ``i`` come from ``generators[i]``, in
    a fixed order, so the crops of an image do not depend on the rest of the batch.

    Example:
        >>> g = [torch.Generator().manual_seed(0)]
        >>> x = torch.rand(1, 3, 8, 8)
        >>> torch.equal(random_crops(x, g, crops=1, scale=(1.0, 1.0), noise=0.0), x)
        True
    """
    b, c, h, w = images.shape
    lo, hi = float(scale[0]), float(scale[1])
    if len(generators) != b:
        raise InputError(f"need one generator per image: {len(generators)} for {b} images")
    if crops < 1:
        raise InputError(f"crops must be 1 or more, got {crops}")
    if not 0 < lo <= hi <= 1:
        raise InputError(f"crop scale must satisfy 0 < lo <= hi <= 1, got ({lo}, {hi})")
    rows, noises = [], []
    for g in generators:
        s = lo + (hi - lo) * torch.rand(crops, generator=g, dtype=torch.float64)
        centre = 0.5 + spread * torch.randn(crops, 2, generator=g, dtype=torch.float64)
        centre = torch.minimum(torch.maximum(centre, s[:, None] / 2), 1 - s[:, None] / 2)
        for k in range(crops):
            sk, (cx, cy) = float(s[k]), centre[k].tolist()
            rows.append([[sk, 0.0, 2 * cx - 1], [0.0, sk, 2 * cy - 1]])
        if noise > 0:
            noises.append(torch.randn((crops, c, h, w), generator=g))
    theta = torch.tensor(rows, dtype=images.dtype, device=images.device)
    source = images.repeat_interleave(crops, dim=0)
    if lo == hi == 1.0:
        out = source  # the only crop inside the image is the image itself
    else:
        grid = F.affine_grid(theta, [b * crops, c, h, w], align_corners=False)
        out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if noise > 0:
        out = out + noise * torch.cat(noises).to(device=images.device, dtype=images.dtype)
    return out
