"""How good is a maximum-response image? Degeneracy, strength against natural images, selectivity.

Measures for feature-visualisation pictures (``C x H x W`` in [0, 1]) of units ``layer:channel``:

* **degenerate** — a near-uniform or saturated picture: every channel's pixel standard deviation
  is below :data:`DEGENERATE_STD`, or more than :data:`SATURATED_SHARE` of the pixels lie within
  :data:`SATURATION_TOL` of 0 or 1 in every channel (:func:`degeneracy`, :func:`is_degenerate`).
* **act_ratio** — how far the unit's spatial-mean response ``act`` to the picture goes beyond
  natural images: ``(act - mean_nat) / (max_nat - mean_nat)``, where ``mean_nat`` and ``max_nat``
  are the mean and the maximum of the unit's spatial-mean response over many random crops of the
  photographs that ship with scikit-image and scikit-learn, taken at the size the picture was
  optimised at (:func:`natural_crops`, :func:`natural_baselines`). 1 means "as strong as the best
  natural crop", 0 "as strong as an average crop". A unit whose response does not vary over the
  crops has no natural spread: its ratio is NaN and :func:`has_spread` is False for it (report it
  apart). A visualisation that excites its unit less than some natural image does not explain the
  unit (Zimmermann et al., 2021; Geirhos et al., 2023, on feature visualisations).
* **selectivity** — each unit's picture excites that unit more than the other units' pictures do
  (:func:`selectivity`).

Responses are spatial means of the layer's output (for a ``N x C`` output, the value itself),
measured in eval mode without gradients; images go through a :class:`cnnvis.LoadedModel`'s
normalisation (via ``cnnvis.record(...).run``). scikit-image and scikit-learn are needed only for
the natural crops (they are test and benchmark dependencies, imported when first used).

Example:
    >>> import torch
    >>> is_degenerate(torch.full((3, 8, 8), 0.5)), is_degenerate(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)))
    (True, False)
    >>> act_ratio(5.0, 1.0, 3.0), act_ratio(2.0, 1.0, 1.0)     # twice the best crop's lead; no spread
    (2.0, nan)
    >>> selectivity([[3.0, 0.0], [1.0, 2.0]]).count             # rows: pictures, columns: units
    2
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from cnnvis.core.outputs import first_output_tensor
from cnnvis.model.hooks import record
from cnnvis.model.probing import normalised_output, pre_activation, probe, unit_output

#: A picture whose every channel has a pixel standard deviation (ddof 0) below this is near-uniform.
DEGENERATE_STD = 0.04
#: A pixel value within this of 0 or 1 is pinned (saturated).
SATURATION_TOL = 2.0 / 255.0
#: A picture with more than this share of pixels pinned in every channel is saturated.
SATURATED_SHARE = 0.60
#: Relative tolerance below which ``max_nat - mean_nat`` counts as no natural spread.
SPREAD_RTOL = 1e-6

#: Colour photographs bundled with scikit-image (``skimage.data``): astronaut (NASA, public domain),
#: chelsea and coffee (CC0 by their photographers), rocket (SpaceX, public domain).
SKIMAGE_COLOR = ("astronaut", "chelsea", "coffee", "rocket")
#: Grey photographs bundled with scikit-image (replicated to RGB for 3-channel models): camera (CC0),
#: coins (no known copyright restrictions), grass, gravel and brick (CC0 Textures, CC0).
SKIMAGE_GREY = ("camera", "coins", "grass", "gravel", "brick")
#: Photographs bundled with scikit-learn (``sklearn.datasets.load_sample_images``), CC BY 2.0 (see the README).
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
#: A crop's side is this share of the photograph's shorter side, drawn log-uniformly.
CROP_SCALE = (0.15, 1.0)

Size = Union[int, Sequence[int]]


# ------------------------------------------------------------------ degenerate pictures


def degeneracy(image: torch.Tensor) -> dict:
    """``{"std", "saturated", "degenerate"}`` of one ``C x H x W`` picture in [0, 1].

    ``std`` is the largest per-channel pixel standard deviation (ddof 0), so a flat picture of any
    colour has ``std`` 0; ``saturated`` is the share of pixels within :data:`SATURATION_TOL` of 0 or 1
    in every channel (pure red counts, mid grey does not).

    Example:
        >>> d = degeneracy(torch.zeros(3, 4, 4))
        >>> d["std"], d["saturated"], d["degenerate"]
        (0.0, 1.0, True)
    """
    x = torch.as_tensor(image).detach().to("cpu", torch.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected one C x H x W picture, got shape {tuple(x.shape)}")
    std = float(x.flatten(1).std(dim=1, unbiased=False).max())
    tol = SATURATION_TOL + 1e-9  # 2/255 itself counts, whatever the rounding
    pinned = ((x <= tol) | (x >= 1.0 - tol)).all(dim=0)
    saturated = float(pinned.double().mean())
    return {"std": std, "saturated": saturated, "degenerate": std < DEGENERATE_STD or saturated > SATURATED_SHARE}


def corner_contrast(image: torch.Tensor, share: float = 0.125) -> float:
    """How far a picture's corners stray from the rest of it: over its four corner squares (``share`` of
    the side each, at least one pixel), the largest difference, in any channel, between a corner's
    mean colour and the mean colour of the rest of the picture (0–1 for pictures in [0, 1]). Random
    shifts and rotations leave corners no step optimises (grey, black or white); an optimised picture
    keeps them like the rest.

    Example:
        >>> x = torch.full((3, 16, 16), 0.5)
        >>> y = x.clone()
        >>> y[:, :2, :2] = 1.0                               # a white top-left corner
        >>> corner_contrast(x), corner_contrast(y)
        (0.0, 0.5)
    """
    x = torch.as_tensor(image).detach().to("cpu", torch.float64)
    x = x[None] if x.ndim == 2 else x
    _, h, w = x.shape
    k, m = max(1, round(h * share)), max(1, round(w * share))
    worst = 0.0
    for ys in (slice(0, k), slice(h - k, h)):
        for xs in (slice(0, m), slice(w - m, w)):
            mask = torch.zeros(h, w, dtype=torch.bool)
            mask[ys, xs] = True
            corner, rest = x[:, mask].mean(1), x[:, ~mask].mean(1)
            worst = max(worst, float((corner - rest).abs().max()))
    return worst


def is_degenerate(image: torch.Tensor) -> bool:
    """Whether a ``C x H x W`` picture in [0, 1] is near-uniform or saturated (see :func:`degeneracy`)."""
    return bool(degeneracy(image)["degenerate"])


# ------------------------------------------------------------------ natural images


def _photo_libraries():
    """Import scikit-image's data and scikit-learn's sample images, or say how to install them."""
    try:
        from skimage import data
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise ImportError(
            f"natural crops need scikit-image and scikit-learn ({exc.name} is missing): "
            "pip install scikit-image scikit-learn (both are in cnnvis[test])"
        ) from None
    return data, load_sample_images


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """An H x W or H x W x 3 uint8/bool array -> C x H x W float32 in [0, 1]."""
    a = np.asarray(array)
    x = torch.from_numpy(a.astype(np.float32) / (1.0 if a.dtype == bool else 255.0))
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1)[:3].contiguous()


@functools.lru_cache(maxsize=None)
def _photos() -> Tuple[Tuple[str, torch.Tensor], ...]:
    """Every bundled photograph as ``(name, C x H x W)`` in [0, 1] (C is 3 or 1), cached."""
    data, load_sample_images = _photo_libraries()
    out = []
    for name in SKIMAGE_COLOR + SKIMAGE_GREY:
        a = getattr(data, name)()
        out.append((name, _to_tensor(a[0] if isinstance(a, tuple) else a)))
    sample = load_sample_images()
    for name, a in zip(sample.filenames, sample.images):
        base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
        if base in SKLEARN_PHOTOS:
            out.append((base, _to_tensor(a)))
    return tuple(out)


def _with_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """A 1- or 3-channel picture -> ``channels`` channels (ITU-R 601 luma for grey, replicated for RGB)."""
    if channels == x.shape[0]:
        return x
    if channels == 1:
        return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    if channels == 3:
        return x.expand(3, -1, -1)
    raise ValueError(f"natural crops come with 1 or 3 channels, not {channels}")


def photographs(channels: int = 3) -> Dict[str, torch.Tensor]:
    """The photographs the crops come from, by name, as ``channels x H x W`` in [0, 1]."""
    return {name: _with_channels(x, channels) for name, x in _photos()}


def _size(size: Size) -> Tuple[int, int]:
    """``128`` or ``(h, w)`` -> ``(h, w)``."""
    if isinstance(size, int):
        return (size, size)
    h, w = (int(s) for s in size)
    return (h, w)


def _one_crop(photos: Sequence[torch.Tensor], size: Tuple[int, int], seed: int, index: int) -> torch.Tensor:
    """Crop ``index`` of the stream ``seed``: its photograph, scale, place and flip depend on nothing else."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
    x = photos[int(rng.integers(len(photos)))]
    h, w = size
    _, ph, pw = x.shape
    side = min(ph / h, pw / w)  # the largest crop of the target's aspect ratio that fits
    lo, hi = CROP_SCALE
    k = side * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    ch, cw = max(1, min(ph, round(k * h))), max(1, min(pw, round(k * w)))
    top, left = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
    crop = x[:, top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    crop = F.interpolate(crop[None], size=size, mode="bilinear", align_corners=False, antialias=(ch > h or cw > w))
    return crop[0].clamp(0.0, 1.0)


def natural_crops(size: Size, channels: int = 3, count: int = 1000, seed: int = 0, *, start: int = 0) -> torch.Tensor:
    """Crops ``start .. start+count-1`` of a deterministic stream: ``count x channels x H x W`` in [0, 1].

    Each crop picks one of the bundled photographs (:func:`photographs`) at random, a square (or
    ``size``-shaped) window whose side is a log-uniform share in :data:`CROP_SCALE` of the largest
    that fits, a random place and a random horizontal flip, then resizes it to ``size`` (bilinear,
    antialiased when shrinking). Crop ``i`` depends only on ``(seed, i)``, so any crop can be made
    again alone (``start=i, count=1``). Grey photographs are replicated for 3-channel models; colour
    ones become luma for 1-channel models.

    Example:
        >>> x = natural_crops(32, 3, count=4, seed=0)
        >>> tuple(x.shape), bool(x.min() >= 0 and x.max() <= 1)
        ((4, 3, 32, 32), True)
        >>> torch.equal(natural_crops(32, 3, count=1, seed=0, start=2)[0], x[2])
        True
    """
    h, w = _size(size)
    photos = [_with_channels(x, channels) for _, x in _photos()]
    if count <= 0:
        return torch.zeros((0, channels, h, w))
    return torch.stack([_one_crop(photos, (h, w), seed, i) for i in range(start, start + count)])


def _crop_batches(size: Size, channels: int, count: int, seed: int, batch_size: int) -> Iterator[torch.Tensor]:
    """:func:`natural_crops` in batches of ``batch_size``."""
    for start in range(0, count, batch_size):
        yield natural_crops(size, channels, min(batch_size, count - start), seed, start=start)


# ------------------------------------------------------------------ responses


def _module(model) -> torch.nn.Module:
    """The ``nn.Module`` inside a :class:`cnnvis.LoadedModel` (or the module itself)."""
    return model.model if hasattr(model, "preprocessing") and hasattr(model, "model") else model


def _device(model) -> torch.device:
    """Where the model's weights live (CPU for a model without any)."""
    for t in list(_module(model).parameters()) + list(_module(model).buffers()):
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """Eval mode while open; the module's own train/eval flags come back afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield module
    finally:
        for m, training in modes:
            m.training = training


def spatial_mean(output: torch.Tensor) -> torch.Tensor:
    """``N x C x ...`` -> ``N x C``: the mean over every dimension after the channel one."""
    return output.flatten(2).mean(dim=2) if output.ndim > 2 else output


#: What a unit's response is: ``unit``, what the next layer reads (the layer's output after its batch
#: norm and activation, :func:`cnnvis.model.probing.unit_output`: the quantity the gallery shows); ``before``,
#: the same before the activation (:func:`cnnvis.model.probing.pre_activation`: where an off-unit's picture is
#: judged, below the activation's floor); ``raw``, the layer's output as it is; ``positive``, the positive
#: part of the response after the batch norm (the previous convention, kept for comparisons).
RESPONSES = ("unit", "before", "raw", "positive")


def _response_layer(model, layer: str, response: str) -> str:
    if response not in RESPONSES:
        raise ValueError(f"response must be one of {', '.join(RESPONSES)}, got {response!r}")
    if response == "raw":
        return layer

    found = probe(model)
    return {"unit": unit_output, "before": pre_activation, "positive": normalised_output}[response](found, layer)


#: The largest value an activation can give, by module type (ReLU6: 6); see :func:`response_ceiling`.
CEILINGS = {"ReLU6": 6.0, "Sigmoid": 1.0, "Tanh": 1.0, "Hardsigmoid": 1.0, "Softsign": 1.0}


def response_ceiling(model, layer: str) -> float:
    """The largest response a unit of ``layer`` can give (:data:`RESPONSES` ``unit``): its activation's
    upper bound (a ReLU6's 6, a Hardtanh's ``max_val``), ``inf`` when it has none. A picture that
    reaches it everywhere cannot be beaten, only tied, by a natural crop that does too.

    Example:
        >>> import cnnvis
        >>> response_ceiling(cnnvis.load_model("efficientnet-lite0", "none"), "conv_stem"), response_ceiling(cnnvis.load_model("lenet-digits"), "conv1")
        (6.0, inf)
    """
    name = _response_layer(model, layer, "unit")
    module = dict(_module(model).named_modules()).get(name)
    kind = type(module).__name__
    if kind == "Hardtanh":
        return float(module.max_val)
    return CEILINGS.get(kind, math.inf)


def layer_responses(model, layers: Sequence[str], images: torch.Tensor, *, batch_size: int = 64,
                    response: str = "unit") -> Dict[str, torch.Tensor]:
    """Each layer's spatial-mean response to each image: ``{layer: N x C}`` (float32, CPU).

    ``images`` are ``N x C x H x W`` in [0, 1]; a :class:`cnnvis.LoadedModel` normalises them first.
    One forward pass per batch serves every layer, stopped after the last of them. ``response``:
    see :data:`RESPONSES`.
    """
    layers = list(layers)
    reads = {layer: _response_layer(model, layer, response) for layer in layers}
    out: Dict[str, List[torch.Tensor]] = {layer: [] for layer in layers}
    device = _device(model)
    with _eval_mode(_module(model)), torch.no_grad(), \
            record(model, list(dict.fromkeys(reads.values())), stop=True, detach=True) as rec:
        for k in range(0, len(images), batch_size):
            rec.run(images[k : k + batch_size].to(device, torch.float32))
            for layer in layers:
                t = first_output_tensor(rec[reads[layer]])
                if t is None:
                    raise ValueError(f"layer {layer} produces no tensor")
                if response == "positive":
                    t = torch.relu(t)
                out[layer].append(spatial_mean(t).float().cpu())
    return {layer: torch.cat(v) if v else torch.zeros(0, 0) for layer, v in out.items()}


def unit_responses(model, layer: str, images: torch.Tensor, channels: Optional[Sequence[int]] = None, *,
                   batch_size: int = 64, response: str = "unit") -> torch.Tensor:
    """Spatial-mean responses of ``layer``'s ``channels`` (default: all) to ``images``: ``N x len(channels)``.

    Example:
        >>> import cnnvis
        >>> lm = cnnvis.load_model("lenet-digits")
        >>> tuple(unit_responses(lm, "conv2", torch.rand(5, 1, 32, 32), [0, 3, 7]).shape)
        (5, 3)
    """
    r = layer_responses(model, [layer], images, batch_size=batch_size, response=response)[layer]
    return r if channels is None else r[:, list(channels)]


# ------------------------------------------------------------------ against natural images


@dataclass(frozen=True)
class NaturalBaseline:
    """Each channel's spatial-mean response over ``count`` natural crops of ``size``.

    ``mean``, ``max``, ``min`` (float64, one per channel), ``argmax`` (the index of the strongest
    crop in the stream ``seed``; :meth:`best_crop` makes it again).
    """

    layer: str
    size: Tuple[int, int]
    image_channels: int
    count: int
    seed: int
    mean: torch.Tensor
    max: torch.Tensor
    min: torch.Tensor
    argmax: torch.Tensor

    @property
    def spread(self) -> torch.Tensor:
        """``max - mean`` per channel."""
        return self.max - self.mean

    @property
    def live(self) -> torch.Tensor:
        """Per channel: whether the response varies over the crops (see :func:`has_spread`)."""
        return has_spread(self.mean, self.max)

    def ratio(self, act, channels: Optional[Sequence[int]] = None):
        """:func:`act_ratio` of responses ``act`` of ``channels`` (default: every channel, in order)."""
        idx = list(range(len(self.mean))) if channels is None else list(channels)
        return act_ratio(torch.as_tensor(act, dtype=torch.float64), self.mean[idx], self.max[idx])

    def best_crop(self, channel: int) -> torch.Tensor:
        """The natural crop that excites ``channel`` most: ``C x H x W`` in [0, 1]."""
        return natural_crops(self.size, self.image_channels, 1, self.seed, start=int(self.argmax[channel]))[0]


def natural_baselines(model, layers: Sequence[str], *, size: Size, count: int = 1000, seed: int = 0,
                      batch_size: int = 64, channels: Optional[int] = None,
                      response: str = "unit") -> Dict[str, NaturalBaseline]:
    """:class:`NaturalBaseline` of each layer from one pass over ``count`` crops (:func:`natural_crops`).

    ``channels`` is the image's channel count (default: the model's preprocessing, else 3).

    Example:
        >>> import cnnvis
        >>> lm = cnnvis.load_model("lenet-digits")
        >>> b = natural_baselines(lm, ["conv2"], size=32, count=16)["conv2"]
        >>> tuple(b.mean.shape), bool((b.max >= b.mean).all())
        ((16,), True)
    """
    h, w = _size(size)
    if channels is None:
        pre = getattr(model, "preprocessing", None)
        channels = pre.channels if pre is not None else 3
    layers = list(layers)
    total: Dict[str, torch.Tensor] = {}
    best: Dict[str, torch.Tensor] = {}
    worst: Dict[str, torch.Tensor] = {}
    where: Dict[str, torch.Tensor] = {}
    done = 0
    for batch in _crop_batches((h, w), channels, count, seed, batch_size):
        responses = layer_responses(model, layers, batch, batch_size=batch_size, response=response)
        for layer in layers:
            r = responses[layer].double()
            top, arg = r.max(dim=0)
            low = r.min(dim=0).values
            arg = arg + done
            if layer not in total:
                total[layer], best[layer], worst[layer], where[layer] = r.sum(0), top, low, arg
            else:
                total[layer] += r.sum(0)
                better = top > best[layer]
                best[layer] = torch.where(better, top, best[layer])
                where[layer] = torch.where(better, arg, where[layer])
                worst[layer] = torch.minimum(worst[layer], low)
        done += len(batch)
    if done == 0:
        raise ValueError("a natural baseline needs at least one crop (count >= 1)")
    return {
        layer: NaturalBaseline(layer, (h, w), channels, done, int(seed), total[layer] / done, best[layer],
                               worst[layer], where[layer])
        for layer in layers
    }


def natural_baseline(model, layer: str, **kwargs) -> NaturalBaseline:
    """:func:`natural_baselines` for one layer."""
    return natural_baselines(model, [layer], **kwargs)[layer]


def has_spread(mean_nat, max_nat) -> torch.Tensor:
    """Whether ``max_nat - mean_nat`` exceeds :data:`SPREAD_RTOL` of the values' magnitude (at least 1)."""
    mean = torch.as_tensor(mean_nat, dtype=torch.float64)
    top = torch.as_tensor(max_nat, dtype=torch.float64)
    scale = torch.maximum(torch.maximum(mean.abs(), top.abs()), torch.ones_like(mean))
    return (top - mean) > SPREAD_RTOL * scale


def act_ratio(act, mean_nat, max_nat):
    """``(act - mean_nat) / (max_nat - mean_nat)``; NaN where the unit has no natural spread.

    1 is as strong as the best natural crop, 0 as an average one, negative weaker than average.
    Takes numbers (returns a float) or tensors (returns float64, broadcast). Units without spread
    (:func:`has_spread` False: the response is the same for every crop) get NaN: report them apart.

    Example:
        >>> act_ratio(torch.tensor([3.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([3.0, 3.0, 1.0]))
        tensor([1., 0., nan], dtype=torch.float64)
    """
    scalar = all(isinstance(v, (int, float)) for v in (act, mean_nat, max_nat))
    a = torch.as_tensor(act, dtype=torch.float64)
    mean = torch.as_tensor(mean_nat, dtype=torch.float64)
    top = torch.as_tensor(max_nat, dtype=torch.float64)
    ok = has_spread(mean, top)
    ratio = torch.where(ok, (a - mean) / torch.where(ok, top - mean, torch.ones_like(top)), torch.full_like(a - mean, math.nan))
    return float(ratio) if scalar else ratio


# ------------------------------------------------------------------ selectivity


class Selectivity(NamedTuple):
    """Per unit, whether its own picture excites it most (``selective``), and how many do (``count``)."""

    selective: torch.Tensor
    count: int


def selectivity(responses) -> Selectivity:
    """Which units are excited by their own picture more than by any other unit's picture.

    ``responses[i, j]`` is the response of unit ``j`` to picture ``i`` (picture ``i`` was made for
    unit ``i``). Unit ``j`` is selective when ``responses[j, j] > responses[i, j]`` for every
    ``i != j``: the diagonal holds the strict maximum of column ``j``. Ties and NaN are not selective;
    with a single unit there is nothing to compare and it counts as selective.

    Example:
        >>> R = [[5.0, 1.0, 0.0],
        ...      [4.0, 2.0, 9.0],
        ...      [6.0, 0.0, 3.0]]
        >>> s = selectivity(R)                 # unit 0 prefers picture 2, unit 2 picture 1
        >>> s.selective.tolist(), s.count
        ([False, True, False], 1)
    """
    r = torch.as_tensor(responses, dtype=torch.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"responses must be an N x N matrix (pictures x units), got shape {tuple(r.shape)}")
    n = r.shape[0]
    own = r.diagonal()
    others = r.masked_fill(torch.eye(n, dtype=torch.bool), -math.inf)
    best_other = others.max(dim=0).values if n > 1 else torch.full((n,), -math.inf, dtype=torch.float64)
    selective = own > torch.nan_to_num(best_other, nan=math.inf)
    return Selectivity(selective, int(selective.sum()))
