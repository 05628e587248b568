"""Convolution kernels as images.

Normalisation (documented, and what the tests check):

* **RGB** (kernels with 3 input channels, the first layer of an RGB model): a filter ``w``
  becomes the colour image ``0.5 + w / (2 m)``, so zero is mid-grey and the largest
  magnitude reaches 0 or 1. ``m`` is the filter's own ``max |w|`` (``scale="filter"``) or
  the whole layer's (``scale="layer"``, so magnitudes compare across filters).
* **Channels** (every other kernel): each input-channel slice is drawn with a diverging
  colormap (``RdBu_r``: blue negative, white zero, red positive) over ``[-m, m]``, and a
  filter's slices are tiled into one grid image with grey 1-pixel gaps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from cnnvis.core.errors import InputError
from cnnvis.core.io import colorize, make_grid, safe_name, save_npy, save_png, zoom
from cnnvis.model.layers import _module, get_layer, parse_filter_spec, resolve_layers, type_name
from cnnvis.model.loading import load_model

DIVERGING_CMAP = "RdBu_r"
SCALES = ("filter", "layer")
SLICE_GAP = 0.6  # grey between the slices of one filter (white is the colormap's zero)
MAX_FILTER_SIDE = 8192  # pixels: the largest filter image --zoom may ask for


@dataclass(frozen=True)
class FilterImages:
    """Kernels of one layer rendered as images.

    ``weight`` is exactly the layer's weight (out x in/groups x kh x kw, on the CPU);
    ``images[i]`` is filter ``indices[i]`` as 3 x H x W in [0, 1] at one pixel per weight
    (for ``mode == "channels"`` a grid of its input-channel slices with 1-pixel gaps).
    """

    layer: str
    weight: torch.Tensor
    indices: Tuple[int, ...]
    images: Tuple[torch.Tensor, ...]
    mode: str
    scale: str
    magnitudes: Tuple[float, ...]


def kernel_weight(model, layer: str) -> torch.Tensor:
    """The 4-D kernel tensor of a convolution layer (out x in/groups x kh x kw), detached, on the CPU."""
    module = get_layer(model, layer)
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.ConvTranspose2d) and weight is not None:
        weight = weight.transpose(0, 1)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        kind = type_name(module)
        convs = [n for n in resolve_layers(model, "type:Conv2d")] if _has_convs(model) else []
        hint = f"; layers with kernels include {', '.join(convs[:4])}" if convs else ""
        raise InputError(f"layer {layer!r} ({kind}) has no convolution kernels to show{hint}")
    return weight.detach().cpu().clone()


def _has_convs(model) -> bool:
    module = _module(model)
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def rgb_image(w: torch.Tensor, m: float) -> torch.Tensor:
    """A 3 x kh x kw kernel -> colour image ``0.5 + w / (2 m)`` (zero is grey)."""
    if m <= 0:
        return torch.full_like(w, 0.5)
    return (0.5 + w / (2 * m)).clamp(0, 1)


def channel_grid(w: torch.Tensor, m: float, cmap: str = DIVERGING_CMAP) -> torch.Tensor:
    """An in x kh x kw kernel -> one RGB grid of its slices in a diverging colormap over [-m, m]."""
    m = m if m > 0 else 1.0
    tiles = list(colorize(w, cmap, -m, m))  # every slice in one call, on the same scale
    if len(tiles) == 1:
        return tiles[0]
    return make_grid(tiles, ncol=math.ceil(math.sqrt(len(tiles))), pad=1, pad_value=SLICE_GAP)


def render_filters(model, layer: str, filters="all", scale: str = "filter", mode: Optional[str] = None) -> FilterImages:
    """Render the kernels of ``layer`` (selected by ``filters``: all, 0-19, 3,7,9) as images.

    ``model`` is a spec, an ``nn.Module`` or a ``LoadedModel``.
    ``mode`` is ``"rgb"`` for kernels with 3 input channels and ``"channels"`` otherwise
    unless given.

    Example:
        >>> import cnnvis
        >>> f = render_filters(cnnvis.load_model("lenet-digits"), "conv2", "0-1")
        >>> f.mode, f.indices, tuple(f.images[0].shape)
        ('channels', (0, 1), (3, 13, 19))
    """
    if scale not in SCALES:
        raise InputError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    model = load_model(model)
    (layer,) = resolve_layers(model, [layer]) if not isinstance(layer, (list, tuple)) else resolve_layers(model, layer)[:1]
    weight = kernel_weight(model, layer)
    indices = parse_filter_spec(filters, weight.shape[0])
    mode = mode or ("rgb" if weight.shape[1] == 3 else "channels")
    if mode == "rgb" and weight.shape[1] != 3:
        raise InputError(f"layer {layer!r} kernels have {weight.shape[1]} input channels; colour needs 3")
    layer_m = float(weight.abs().max())
    images, mags = [], []
    for i in indices:
        w = weight[i].float()
        m = layer_m if scale == "layer" else float(w.abs().max())
        mags.append(m)
        images.append(rgb_image(w, m) if mode == "rgb" else channel_grid(w, m))
    return FilterImages(layer, weight, tuple(indices), tuple(images), mode, scale, tuple(mags))


def default_zoom(image_size: int, target: int = 96) -> int:
    return max(1, target // max(1, image_size))


def save_filters(result: FilterImages, out_dir: str, zoom_factor: Optional[int] = None, max_grid_side: int = 4096,
                 *, folder: Optional[str] = None, weights: bool = True, grid: bool = True) -> dict:
    """Write ``<out>/<folder>/filters.png`` (the layer grid, with ``grid``), ``filter-NNNN.png`` per filter and,
    with ``weights``, ``weight.npy`` (exactly the layer's weight); ``folder`` defaults to the layer's file-safe name.
    Files that already hold the same bytes are left untouched. Returns the paths."""
    folder = os.path.join(out_dir, folder or safe_name(result.layer))
    side = max(max(im.shape[-2:]) for im in result.images)
    factor = default_zoom(side) if zoom_factor is None else int(zoom_factor)
    if factor < 1 or side * factor > MAX_FILTER_SIDE:
        raise InputError(
            f"--zoom {zoom_factor} does not fit layer {result.layer}: its filter images are {side} px, so the zoom "
            f"must be 1..{max(1, MAX_FILTER_SIDE // side)} (at most {MAX_FILTER_SIDE} px per image)"
        )
    paths = {"filters": [], "weight": save_npy(result.weight.numpy(), os.path.join(folder, "weight.npy"), keep_identical=True)
             if weights else None}
    for i, im in zip(result.indices, result.images):
        paths["filters"].append(save_png(zoom(im, factor), os.path.join(folder, f"filter-{i:04d}.png"), keep_identical=True))
    paths["grid"] = None
    if grid:
        image = make_grid(list(result.images), pad=1 if result.mode == "rgb" else 3, pad_value=1.0)
        grid_factor = factor
        while grid_factor > 1 and max(image.shape[-2:]) * grid_factor > max_grid_side:
            grid_factor -= 1
        paths["grid"] = save_png(zoom(image, grid_factor), os.path.join(folder, "filters.png"), keep_identical=True)
    return paths
