"""Files in and out: images, arrays, JSON, grids. Every write is atomic (temp file, then rename).

Image tensors are C x H x W (or H x W) floats in [0, 1]. No torch model code here.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import warnings
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from cnnvis.core.errors import BadImageError, InputError
from cnnvis.core.files import atomic_write, layer_file, write_bytes, write_json  # noqa: F401  (re-exported)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

PathLike = Union[str, os.PathLike]


def to_uint8(image: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """C x H x W / H x W floats in [0, 1] (or H x W x 3 uint8) -> H x W (x C) uint8, rounded."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (3, 4):
        a = np.transpose(a, (1, 2, 0))
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(image, path: PathLike, *, keep_identical: bool = False) -> str:
    """Write an image as PNG (byte-identical for identical pixels; zlib's best compression, about 3% smaller
    than its default at no measurable cost). Returns the path.

    With ``keep_identical`` an existing file with exactly these bytes is left untouched.
    """
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG", optimize=True)
    write_bytes(path, buf.getvalue(), keep_identical=keep_identical)
    return os.fspath(path)


def encode_image(image, fmt: str = "PNG", quality: int = 85, *, lossless: bool = False) -> bytes:
    """One image's file bytes: ``PNG`` (lossless), ``JPEG`` (``quality``, 4:4:4) or ``WEBP`` (``quality``, or
    ``lossless``). For photographs shown on a page, WebP at quality 85 is as faithful as JPEG 4:4:4 at 85 for
    two thirds of the bytes (96 px crops of the bundled photographs: PSNR 38.1 dB both, 2.0 KB against 2.9 KB)."""
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    if fmt.upper() == "JPEG":
        Image.fromarray(to_uint8(image)).save(buf, format="JPEG", quality=quality, subsampling=0, optimize=True)
    elif fmt.upper() == "WEBP":
        # libwebp's effort: lossless at method 1 is both the smallest and fast (1.4 ms a 70 px crop; method 6
        # is larger and takes 130 ms), lossy at its default 4 (1.2 ms a 96 px crop, 3% over method 6's bytes)
        options = dict(lossless=True, quality=100, method=1) if lossless else dict(quality=quality, method=4)
        Image.fromarray(to_uint8(image)).save(buf, format="WEBP", **options)
    else:
        Image.fromarray(to_uint8(image)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_npy(array, path: PathLike, *, keep_identical: bool = False) -> str:
    import io as _io

    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    buf = _io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    write_bytes(path, buf.getvalue(), keep_identical=keep_identical)
    return os.fspath(path)


def save_json(obj, path: PathLike) -> str:
    """Write ``obj`` as indented JSON, atomically."""
    return write_json(obj, path)


def read_json(path: PathLike, default=None, *, damaged: str = "raise"):
    """The JSON in ``path``, or ``default`` when the file does not exist.

    A file that is not valid JSON is an :class:`InputError` naming it, or with ``damaged="default"``
    (a cache that is simply recomputed) ``default`` too.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if damaged == "default":
            return default
        raise InputError(f"{path} is not valid JSON ({exc}); remove it (it is rebuilt)") from None


def save_figure(fig, path: PathLike, dpi: int = 100) -> str:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
    return os.fspath(path)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``"a FIFO"``, ``"a socket"``, ``"a device file"``)."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def check_regular_file(path: PathLike, what: str = "image") -> os.stat_result:
    """``os.stat`` of an existing regular file; a clear :class:`InputError` for anything else.

    Called before a file is opened: opening a FIFO for reading blocks until someone writes to it,
    and a device file may never end.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise BadImageError(path, "is a link to a file that does not exist") from None
        raise InputError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise BadImageError(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path} is a folder; give an {what} file")
    if not stat.S_ISREG(st.st_mode):
        raise BadImageError(path, f"is {file_kind(st.st_mode)}, not a regular file")
    return st


def load_image(path: PathLike):
    """Open an image file as a PIL image (fully read); a clear error names a file that is not one.

    FIFOs, sockets and device files are refused before anything opens them (no blocking), and so
    is an image with more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb), whose
    warning becomes the error. High bit depth images (16-bit PNG/TIFF, mode ``I;16``) are returned as
    they are: :meth:`cnnvis.model.preprocess.Preprocessing.prepare` scales them by their bit depth.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(pixels.group(1)):,} pixels, " if pixels else ""
        raise BadImageError(
            path, f"is too large to open safely ({count}more than PIL's limit of {Image.MAX_IMAGE_PIXELS:,}: "
            f"a possible decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise BadImageError(path, "is not a readable image (UnidentifiedImageError)") from None
    except MemoryError:
        raise BadImageError(path, "is too large to decode in the memory available") from None
    except Exception as exc:  # PIL's decoders raise many kinds on a damaged file
        raise BadImageError(path, f"is not a readable image ({type(exc).__name__})") from None


def load_picture(path: PathLike, channels: Optional[int] = None) -> torch.Tensor:
    """An image file (:func:`load_image`'s checks) as a ``C x H x W`` float tensor in [0, 1]; ``channels``
    (1 or 3) converts it to grey or RGB first. For 8-bit pictures such as the ones cnnvis writes."""
    image = load_image(path)
    if channels is not None:
        image = image.convert("L" if channels == 1 else "RGB")
    t = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def find_images(inputs: Sequence[PathLike], *, skip_bad: bool = False, skipped: Optional[list] = None) -> List[str]:
    """Image files named directly, plus every image file below named folders (sorted, recursive).

    Files named directly are kept whatever their extension (so a bad file gets a clear error);
    inside folders only known image extensions count. Anything that is not a regular file (a FIFO,
    socket or device file, which would block or never end when read) is refused with a
    :class:`BadImageError`, or with ``skip_bad`` left out and noted in ``skipped`` as ``(path, why)``.
    """
    found: List[str] = []

    def keep(path: str) -> None:
        try:
            check_regular_file(path)
        except BadImageError as exc:
            if not skip_bad:
                raise
            if skipped is not None:
                skipped.append((path, exc.note))
            return
        found.append(path)

    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            inside = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                inside += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not inside:
                raise InputError(f"folder {item} holds no image files ({', '.join(IMAGE_EXTENSIONS[:4])}, …)")
            for path in inside:
                keep(path)
        elif os.path.lexists(item):
            keep(item)
        else:
            raise InputError(f"input {item} does not exist")
    return found


def make_grid(
    images: Sequence, ncol: Optional[int] = None, pad: int = 1, pad_value: float = 1.0
) -> torch.Tensor:
    """Tile equally sized C x H x W images (C of 1 or 3 mixed: greys become RGB) into one image."""
    if not images:
        raise InputError("no images to put in a grid")
    tensors = [torch.as_tensor(np.asarray(i)) if not isinstance(i, torch.Tensor) else i for i in images]
    tensors = [t.unsqueeze(0) if t.ndim == 2 else t for t in tensors]
    channels = max(t.shape[0] for t in tensors)
    tensors = [t.expand(channels, -1, -1) if t.shape[0] == 1 else t for t in tensors]
    h = max(t.shape[1] for t in tensors)
    w = max(t.shape[2] for t in tensors)
    n = len(tensors)
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = torch.full((channels, nrow * (h + pad) + pad, ncol * (w + pad) + pad), float(pad_value))
    for k, t in enumerate(tensors):
        r, c = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[:, y : y + t.shape[1], x : x + t.shape[2]] = t.float().cpu()
    return grid


@functools.lru_cache(maxsize=16)
def _colormap(name: str):
    """A matplotlib colormap, looked up once: ``matplotlib.colormaps[name]`` returns a fresh copy whose
    lookup table is built again on its first call (a gallery colours hundreds of thousands of kernel
    slices)."""
    import matplotlib

    return matplotlib.colormaps[name]


def colorize(values, cmap: str = "viridis", vmin: Optional[float] = None, vmax: Optional[float] = None) -> torch.Tensor:
    """An H x W array -> 3 x H x W RGB in [0, 1] through a matplotlib colormap; an N x H x W array ->
    N x 3 x H x W, each slice as if coloured alone with the same ``vmin``/``vmax`` (given, or the
    whole array's range)."""
    a = values.detach().cpu().float().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    lo = float(a.min()) if vmin is None else vmin
    hi = float(a.max()) if vmax is None else vmax
    scaled = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)
    rgba = _colormap(cmap)(np.clip(scaled, 0, 1))
    rgb = np.moveaxis(rgba[..., :3], -1, -3)  # ... x 3 x H x W
    return torch.from_numpy(np.ascontiguousarray(rgb)).float()


def safe_name(text: str) -> str:
    """A layer (or model) name as a file name, distinct for distinct names (see :func:`cnnvis.core.files.layer_file`)."""
    return layer_file(text)


def zoom(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement by an integer factor (keeps kernels crisp)."""
    if factor <= 1:
        return image
    return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
