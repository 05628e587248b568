"""Regenerate ``cnnvis/data/natural_spectrum.npz``: the mean Fourier magnitude of natural photographs.

The file is the fixed magnitude of :mod:`cnnvis.synthesis.maco` (MACO). The output is deterministic: the
same photographs and library versions give the same bytes (no randomness, fixed order).

Photographs (all shipped inside installed packages, nothing is downloaded):

* scikit-image ``skimage.data``: ``astronaut`` (Eileen Collins, NASA, public domain),
  ``chelsea`` (a cat; CC0, Stefan van der Walt), ``coffee`` (a cup; CC0, Rachel Michetti),
  ``rocket`` (DSCOVR launch; SpaceX, released into the public domain). Licences as stated in
  the docstrings of those functions.
* scikit-learn's sample images (``load_sample_images``): ``china.jpg`` and ``flower.jpg`` (Flickr,
  CC BY 2.0, by danielbuechele and vultilion; see ``sklearn/datasets/images/README.txt``).

Left out: scikit-image's synthetic, medical, microscopy and astronomy images, its grey texture
crops, and the stereo ``motorcycle`` pair (no licence stated).

For each photograph, whole and at its own size (no crop, no resize), RGB in [0, 1] (sRGB values,
as a network sees them):

1. colours: the decorrelated channels ``COLOR^-1 (rgb - mean_rgb)`` with
   ``COLOR = cnnvis.synthesis.params.COLOR`` and ``mean_rgb`` the mean colour of all six photographs
   (each photograph weighted equally); and, for one-channel images, the luma
   ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, PIL's "L") minus its mean over the photographs;
2. DC: ``|mean of the channel|`` (the photograph's colour offset from the average colour);
3. window: the channel minus its Hann-weighted mean, times a 2-D Hann window (``np.hanning``,
   rows x columns) divided by its root-mean-square, so a stationary texture keeps its power.
   The window removes the spectrum of the photograph's edges (a periodic extension of a
   photograph jumps at the border, which adds a 1/f "cross" on the axes that the periodic
   images of MACO do not have);
4. ``|rfft2|`` with norm "ortho" (then ``|X(f)|^2`` is the pixel variance per frequency bin and
   does not depend on the photograph's size);
5. rings: the mean magnitude over the bins with ``|f|`` (cycles per pixel) in each ring
   ``2^(-12 + k/4) <= |f| < 2^(-12 + (k+1)/4)``, k = 0..47, using only bins with
   ``|f| >= 2 / min(H, W)`` (closer to DC the window's main lobe mixes in the mean).

Then the six ring profiles, and the six DC magnitudes, are averaged (each photograph weighted
equally). A ring is *measured* if every photograph has at least 8 bins in it; the others are
filled with the power law fitted (least squares in log-log, per channel) over the two octaves of
measured rings nearest to them, continued from the last measured ring: below about 1/110 cycle
per pixel and in the corner ring ``|f| ~ 0.707``.

Stored arrays: ``log2_radius`` (ring centres), ``decorrelated`` (3 x 48 mean magnitudes),
``gray`` (1 x 48), ``dc_decorrelated`` (3), ``dc_gray`` (1), ``measured`` (48 booleans),
``color`` (the matrix used), ``mean_rgb``, ``pixel_std`` (the photographs' mean per-channel
pixel standard deviation in [0, 1], a target for the contrast of MACO images), ``sources``.

Usage: python benchmarks/make_natural_spectrum.py [--out cnnvis/data/natural_spectrum.npz]
"""

from __future__ import annotations

import argparse
import io
import os
from typing import Dict, List, Tuple

import numpy as np

PHOTOS = (
    ("skimage", "astronaut"),
    ("skimage", "chelsea"),
    ("skimage", "coffee"),
    ("skimage", "rocket"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
)
RINGS_PER_OCTAVE = 4
LOG2_LOWEST = -12
RINGS = -LOG2_LOWEST * RINGS_PER_OCTAVE  # up to |f| = 1 cycle per pixel (the corner is 0.707)
MIN_BINS = 8
FIT_OCTAVES = 2
LUMA = np.array([0.299, 0.587, 0.114])

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "cnnvis", "data", "natural_spectrum.npz")


def load_photos() -> List[Tuple[str, np.ndarray]]:
    """The six photographs as ``(name, H x W x 3 float64 in [0, 1])``, in a fixed order.

    scikit-learn's JPEGs are read with PIL straight from its package folder (the pixels
    ``sklearn.datasets.load_sample_image`` returns, without importing scikit-learn).
    """
    import importlib.util

    import skimage.data
    from PIL import Image

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scikit-learn is needed for its sample photographs")
    sklearn_images = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "images")
    out = []
    for source, name in PHOTOS:
        if source == "skimage":
            pixels = getattr(skimage.data, name)()
        else:
            with Image.open(os.path.join(sklearn_images, name)) as im:
                pixels = np.asarray(im.convert("RGB"))
        out.append((f"{source}:{name}", np.asarray(pixels, dtype=np.float64) / 255.0))
    return out


def hann_2d(h: int, w: int) -> np.ndarray:
    """A separable Hann window scaled to root-mean-square 1."""
    win = np.outer(np.hanning(h), np.hanning(w))
    return win / np.sqrt(np.mean(win**2))


def ring_index(h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ring of every ``rfft2`` bin of an h x w image, and which bins are far enough from DC."""
    from cnnvis.synthesis.maco import frequency_radius

    r = frequency_radius(h, w).numpy()
    ring = np.floor((np.log2(np.maximum(r, 2.0**LOG2_LOWEST)) - LOG2_LOWEST) * RINGS_PER_OCTAVE).astype(int)
    return np.clip(ring, 0, RINGS - 1), r >= 2.0 / min(h, w)


def ring_profile(channels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(C x RINGS mean |rfft2| per ring (nan if empty), bins per ring)`` of C x H x W channels."""
    c, h, w = channels.shape
    win = hann_2d(h, w)
    centred = channels - (channels * win).sum((1, 2), keepdims=True) / win.sum()
    mag = np.abs(np.fft.rfft2(centred * win, norm="ortho"))
    ring, usable = ring_index(h, w)
    counts = np.bincount(ring[usable], minlength=RINGS)
    sums = np.stack([np.bincount(ring[usable], mag[k][usable], minlength=RINGS) for k in range(c)])
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts, counts


def fill_power_law(profile: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Unmeasured rings below / above the measured ones from power laws fitted next to them."""
    centres = LOG2_LOWEST + (np.arange(RINGS) + 0.5) / RINGS_PER_OCTAVE
    idx = np.flatnonzero(measured)
    first, last = idx[0], idx[-1]
    n = FIT_OCTAVES * RINGS_PER_OCTAVE
    out = np.log2(profile)
    for ends, anchor, fill in (
        (idx[:n], first, np.arange(0, first)),
        (idx[-n:], last, np.arange(last + 1, RINGS)),
    ):
        for ch in range(out.shape[0]):
            slope = np.polyfit(centres[ends], out[ch, ends], 1)[0]
            out[ch, fill] = out[ch, anchor] + slope * (centres[fill] - centres[anchor])
    return np.exp2(out)


def build() -> Dict[str, np.ndarray]:
    """Every array of the spectrum file."""
    from cnnvis.synthesis.params import COLOR as _COLOR

    photos = load_photos()
    color = _COLOR.double().numpy()
    mean_rgb = np.mean([p.reshape(-1, 3).mean(0) for _, p in photos], axis=0)
    mean_luma = float(mean_rgb @ LUMA)
    to_decorrelated = np.linalg.inv(color)
    dec_profiles, gray_profiles, counts, dec_dc, gray_dc, stds = [], [], [], [], [], []
    for _, rgb in photos:
        dec = np.moveaxis((rgb - mean_rgb) @ to_decorrelated.T, -1, 0)
        gray = ((rgb @ LUMA) - mean_luma)[None]
        p, n = ring_profile(dec)
        dec_profiles.append(p)
        counts.append(n)
        gray_profiles.append(ring_profile(gray)[0])
        dec_dc.append(np.abs(dec.mean((1, 2))))
        gray_dc.append(np.abs(gray.mean((1, 2))))
        stds.append(rgb.reshape(-1, 3).std(0).mean())
    measured = (np.stack(counts) >= MIN_BINS).all(0)
    with np.errstate(invalid="ignore"):
        dec_mean = np.mean(dec_profiles, axis=0)
        gray_mean = np.mean(gray_profiles, axis=0)
    return {
        "log2_radius": LOG2_LOWEST + (np.arange(RINGS) + 0.5) / RINGS_PER_OCTAVE,
        "decorrelated": fill_power_law(dec_mean, measured).astype(np.float32),
        "gray": fill_power_law(gray_mean, measured).astype(np.float32),
        "dc_decorrelated": np.mean(dec_dc, axis=0).astype(np.float32),
        "dc_gray": np.mean(gray_dc, axis=0).astype(np.float32),
        "measured": measured,
        "color": color.astype(np.float32),
        "mean_rgb": mean_rgb.astype(np.float32),
        "pixel_std": np.float32(np.mean(stds)),
        "sources": np.array([name for name, _ in photos]),
    }


def save(arrays: Dict[str, np.ndarray], path: str) -> None:
    """Write the arrays as a compressed .npz with fixed bytes (no timestamps in the zip)."""
    import zipfile

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    arrays = build()
    save(arrays, args.out)
    m = arrays["measured"]
    lo, hi = arrays["log2_radius"][m][[0, -1]]
    print(f"wrote {os.path.normpath(args.out)} ({os.path.getsize(args.out)} bytes); "
          f"measured rings 2^{lo:.3f} .. 2^{hi:.3f} cycles/pixel; pixel std {arrays['pixel_std']:.3f}")


if __name__ == "__main__":
    main()
