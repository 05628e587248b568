"""Dataset examples of a unit: where in an image set it answers most and least, as receptive-field crops.

For every unit of the chosen layers, one streaming pass over an image set finds each image's
strongest and weakest response of the unit (over the positions of its map) and keeps the ``k``
images where those are largest and smallest (Zeiler & Fergus's "top activations", one example per
image), each with its image, the position ``(y, x)`` in the layer's map and the value. The patch of the input that unit position sees — its theoretical receptive field
(:func:`cnnvis.receptive_fields`) — is the example shown; with :func:`example_saliency`, the
unit's input gradient over that patch says which pixels of it mattered.

The value of an example is the unit's response, what the next layer reads: the layer's output after
its batch norm and activation (:func:`cnnvis.model.probing.unit_output`), the same quantity as the unit's
pictures, statistics and histogram. Images are ranked by the response *before* the activation
(``pre``, kept with each example): the activation keeps that order where it does not clip, and where
a ReLU clips many images to 0 the response before it still says which switch the unit off most.
The strongest examples are what the unit fires for, the weakest what switches it off — the dataset
twins of the positive and negative pictures.

Without an image set, :func:`sample_images` cuts a fixed sample of crops from the photographs
that scikit-image and scikit-learn ship (:func:`cnnvis.synthesis.quality.natural_crops`).

Example:
    >>> import torch, cnnvis
    >>> lm = cnnvis.load_model("lenet-digits")
    >>> ex = collect_examples(lm, ["conv1"], torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0)), k=2)
    >>> e = ex["conv1"]
    >>> len(e.top[3]), e.top[3][0].value >= e.top[3][1].value >= e.bottom[3][1].value >= e.bottom[3][0].value
    (2, True)
    >>> tuple(e.crop(e.top[3][0]).shape)                  # conv1's receptive field is 5 x 5 (no padding)
    (1, 5, 5)
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from cnnvis.core.errors import InputError
from cnnvis.model.hooks import first_output_tensor, frozen, record
from cnnvis.core.files import write_bytes
from cnnvis.core.memory import images_per_batch
from cnnvis.core.io import colorize, encode_image, find_images, load_image, zoom
from cnnvis.model.loading import load_model
from cnnvis.model.probing import call_model, pre_activation, probe, select_output, unit_output
from cnnvis.atlas.store import files_fingerprint, fingerprint
from cnnvis.attribution.receptive import receptive_fields

#: Examples kept per unit at each end (the Distill appendix and Microscope show ten).
TOP_K = 10
#: Crops cut from the bundled photographs when no image set is given.
SAMPLE_COUNT = 320


@dataclass(frozen=True)
class Example:
    """One response of a unit: the image (its index and name), the map position and the value."""

    image: int
    y: int
    x: int
    value: float
    name: str = ""
    pre: Optional[float] = None  # the response before the unit's activation, at the same position


@dataclass
class LayerExamples:
    """The strongest (``top``) and weakest (``bottom``) responses of each unit of one layer.

    ``top[u]`` is sorted strongest first, ``bottom[u]`` weakest first. ``peaks[u]`` holds the
    unit's largest response in each image (for its histogram). ``images`` are the inputs (in
    [0, 1], as the model saw them), so crops can be cut; ``rf`` is the layer's receptive field.
    """

    layer: str
    reads: str  # the module whose output is the unit's response (its activation, batch norm or itself)
    top: Dict[int, List[Example]]
    bottom: Dict[int, List[Example]]
    peaks: Dict[int, torch.Tensor]
    images: torch.Tensor
    names: List[str]
    rf: object = None  # the layer's ReceptiveField
    before: Optional[str] = None  # the module whose output is the response before the activation
    strongest: Optional[torch.Tensor] = None  # channel x image: the largest response before the activation
    strongest_at: Optional[torch.Tensor] = None  # channel x image: where (flat position in the map)
    map_size: Tuple[int, int] = (0, 0)  # the layer's map (height, width)
    windows_agree: Optional[bool] = None  # saliency on windows checked against whole images (example_saliency)

    def box(self, example: Example) -> Tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of the input patch the example's unit position sees (inclusive),
        cut to the image (a deep layer's field reaches past it)."""
        h, w = self.images.shape[-2:]
        if self.rf is None or self.rf.is_global:
            return (0, 0, h - 1, w - 1)
        t, l, b, r = self.rf.region(example.y, example.x)
        return (max(t, 0), max(l, 0), min(b, h - 1), min(r, w - 1))

    def crop(self, example: Example) -> torch.Tensor:
        """The example's receptive-field patch of its image (``C x h x w``)."""
        return crop_box(self.images[example.image], self.box(example))


def crop_box(image: torch.Tensor, box: Tuple[int, int, int, int], fill: float = 0.5) -> torch.Tensor:
    """``image[:, top:bottom+1, left:right+1]`` where the box may leave the image (filled with ``fill``).

    Example:
        >>> crop_box(torch.ones(1, 2, 2), (-1, 0, 0, 1)).tolist()
        [[[0.5, 0.5], [1.0, 1.0]]]
    """
    c, h, w = image.shape
    t, l, b, r = box
    out = torch.full((c, b - t + 1, r - l + 1), float(fill), dtype=image.dtype)
    y0, y1, x0, x1 = max(t, 0), min(b, h - 1), max(l, 0), min(r, w - 1)
    if y0 <= y1 and x0 <= x1:
        out[:, y0 - t : y1 - t + 1, x0 - l : x1 - l + 1] = image[:, y0 : y1 + 1, x0 : x1 + 1].cpu()
    return out


def load_images(lm, paths: Sequence[str], *, skip_bad: bool = False) -> Tuple[torch.Tensor, List[str], List[Tuple[str, str]]]:
    """Image files as the model sees them (``N x C x H x W`` in [0, 1], at the model's input size),
    their names, and the files skipped with ``skip_bad`` (path, why). Kept as 8-bit in memory."""
    size = tuple(lm.preprocessing.input_size())
    kept, names, skipped = [], [], []
    for path in paths:
        try:
            x = lm.preprocessing.prepare(load_image(path))
        except InputError as exc:
            if not skip_bad:
                raise
            skipped.append((path, str(exc).split(";")[0]))
            continue
        if tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        kept.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
        names.append(path)
    if not kept:
        raise InputError("none of the inputs could be read as an image")
    return torch.stack(kept).float() / 255.0, names, skipped


def sample_images(lm, count: int = SAMPLE_COUNT, seed: int = 0) -> Tuple[torch.Tensor, List[str]]:
    """The built-in image set: ``count`` crops of the photographs bundled with scikit-image and
    scikit-learn, at the model's input size, as ``N x C x H x W`` in [0, 1] with a name each."""
    try:
        from cnnvis.synthesis.quality import natural_crops
    except ImportError as exc:  # pragma: no cover - the dependency is installed with cnnvis
        raise InputError(f"the built-in sample images need scikit-image and scikit-learn ({exc}); "
                         f"install them or pass --images DIR") from None
    size = tuple(lm.preprocessing.input_size())
    images = natural_crops(size, lm.preprocessing.channels, count, seed)
    return images, [f"sample crop {i}" for i in range(len(images))]


class ImageSet:
    """An analysis's image set: the user's files (``paths``: files and folders), or crops of the
    bundled photographs (:func:`sample_images`); loaded once, on first use. ``enabled=False``: none."""

    def __init__(self, lm, paths: Sequence[str] = (), *, enabled: bool = True, skip_bad: bool = False):
        self.lm, self.skip_bad = lm, skip_bad
        self.enabled = bool(paths) or enabled
        self.paths: List[str] = find_images(list(paths)) if paths else []
        self.skipped: List[Tuple[str, str]] = []
        self._images = None

    def fingerprint(self) -> str:
        if self.paths:
            return files_fingerprint(self.paths)

        return fingerprint("sample", SAMPLE_COUNT, list(self.lm.preprocessing.input_size()), self.lm.preprocessing.channels)

    def load(self) -> Tuple[torch.Tensor, List[str]]:
        if self._images is None:
            if self.paths:
                images, names, self.skipped = load_images(self.lm, self.paths, skip_bad=self.skip_bad)
            else:
                images, names = sample_images(self.lm)
            self._images = (images, names)
        return self._images

    def release(self) -> None:
        """Forget the bundled photographs' crops (320 float crops, 0.2 GB at 224 px; made again in about a second
        when next needed), so processes forked meanwhile do not carry them. A user's images, kept as 8-bit and
        slower to read again, stay."""
        if not self.paths:
            self._images = None

    def top_classes(self, count: int) -> List[int]:
        """The classes the model gives the highest mean probability over the image set (or over noise)."""
        found = probe(self.lm)
        if found.failure is not None or found.output is None or len(found.output) != 1 or found.output[0] < 2:
            return []
        if self.enabled:
            images, _ = self.load()
            images = images[:: max(1, len(images) // 64)][:64]
        else:
            images = torch.rand((16, self.lm.preprocessing.channels) + tuple(found.size),
                                generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            with frozen(self.lm.model):
                step = images_per_batch(images.shape[-2:], most=16)
                logits = torch.cat([select_output(call_model(self.lm, images[i : i + step].to(self.lm.device)))[0].cpu()
                                    for i in range(0, len(images), step)])
        mean = torch.softmax(logits.float(), dim=1).mean(0)
        return sorted(int(c) for c in mean.topk(min(count, len(mean))).indices)


def _batches(images: torch.Tensor, batch_size: int) -> Iterable[Tuple[int, torch.Tensor]]:
    for start in range(0, len(images), batch_size):
        yield start, images[start : start + batch_size]


def collect_examples(lm, layers: Sequence[str], images: torch.Tensor, *, names: Optional[Sequence[str]] = None,
                     k: int = TOP_K, batch_size: Optional[int] = None, progress=None, also: Sequence[str] = (),
                     on_batch: Optional[Callable[[Dict[str, torch.Tensor], List[str]], None]] = None
                     ) -> Dict[str, LayerExamples]:
    """The ``k`` images with the strongest and the weakest response of every unit of ``layers``.

    ``images`` is ``N x C x H x W`` in [0, 1] at one size (as the model sees them). One forward pass
    per batch records every layer at once; per image and unit only the extreme values and their
    positions are kept. ``batch_size`` defaults to :func:`cnnvis.core.memory.images_per_batch` of the size
    (5 images at 224 px, 32 at 96 px or less).

    The same pass serves other readers of the images: the outputs of the layers ``also`` (resolved names)
    go to ``on_batch(outputs, names of the batch's images)`` after each batch (the gallery's statistics).
    """
    lm = load_model(lm)
    if images.ndim != 4 or len(images) == 0:
        raise InputError("no images to collect examples from")
    size = tuple(images.shape[-2:])
    batch_size = batch_size or images_per_batch(size)
    found = probe(lm, size)
    reads = {layer: unit_output(found, layer) for layer in layers}
    before = {layer: pre_activation(found, layer) for layer in layers}
    fields = {f.name: f for f in receptive_fields(lm, list(layers), size=size)}
    names = list(names) if names is not None else [str(i) for i in range(len(images))]
    peaks: Dict[str, List[torch.Tensor]] = {layer: [] for layer in layers}  # per image: the largest response
    peak_at: Dict[str, List[torch.Tensor]] = {layer: [] for layer in layers}  # … and where (flat position)
    lows: Dict[str, List[torch.Tensor]] = {layer: [] for layer in layers}
    low_at: Dict[str, List[torch.Tensor]] = {layer: [] for layer in layers}
    values: Dict[str, List[torch.Tensor]] = {layer: [] for layer in layers}  # the response at both positions
    shapes: Dict[str, Tuple[int, int]] = {}
    wanted = list(dict.fromkeys(list(reads.values()) + list(before.values()) + list(also)))
    with frozen(lm.model), torch.no_grad(), record(lm.model, wanted, stop=True, detach=True) as rec:
        for start, batch in _batches(images, batch_size):
            call_model(lm, batch.to(lm.device), rec.run)
            if on_batch is not None and also:
                missing = [n for n in also if not rec.calls[n]]
                if missing:
                    raise InputError(f"layer {missing[0]!r} did not run in the forward pass, so it has no statistics")
                on_batch({n: first_output_tensor(rec.outputs[n]) for n in also}, names[start : start + len(batch)])
            for layer in layers:
                a = first_output_tensor(rec[reads[layer]]).float()
                b = first_output_tensor(rec[before[layer]]).float()
                if a.ndim != 4:
                    raise InputError(f"layer {layer} has no spatial output, so it has no receptive-field examples")
                shapes[layer] = tuple(a.shape[-2:])
                flat = b.flatten(2).cpu()  # image x channel x position, before the activation
                high, high_at = flat.max(2)
                low, where_low = flat.min(2)
                response = a.flatten(2).cpu()
                values[layer].append(torch.stack([response.gather(2, high_at[..., None])[..., 0],
                                                  response.gather(2, where_low[..., None])[..., 0]], 2))
                peaks[layer].append(high)
                peak_at[layer].append(high_at)
                lows[layer].append(low)
                low_at[layer].append(where_low)
            if progress is not None:
                progress(min(start + len(batch), len(images)), len(images))
    out = {}
    for layer in layers:
        h, w = shapes[layer]
        high, high_at = torch.cat(peaks[layer]).t(), torch.cat(peak_at[layer]).t()  # channel x image
        low, where_low = torch.cat(lows[layer]).t(), torch.cat(low_at[layer]).t()
        response = torch.cat(values[layer]).permute(1, 0, 2)  # channel x image x (at high, at low)
        kk = min(k, high.shape[1])

        def pick(ranked, where, largest, side):
            best, image = ranked.topk(kk, dim=1, largest=largest)  # one position per image: distinct images
            at = where.gather(1, image)
            value = response[..., side].gather(1, image)
            return {u: [Example(int(i), int(p) // w, int(p) % w, float(v), names[int(i)], float(r))
                        for v, r, i, p in zip(value[u].tolist(), best[u].tolist(), image[u].tolist(), at[u].tolist())]
                    for u in range(ranked.shape[0])}

        out[layer] = LayerExamples(layer, reads[layer], pick(high, high_at, True, 0), pick(low, where_low, False, 1),
                                   dict(enumerate(response[..., 0])), images, names, fields.get(layer), before[layer],
                                   high, high_at, (h, w))
    return out


#: Pixels of the images one saliency pass differentiates at once: two 224-px images.
SALIENCY_PIXELS = 2 * 224 * 224
#: A unit's gradient is computed on a window of its image (see :func:`saliency_window`) when the window has at
#: most this share of the image's pixels; larger windows save too little to pay for their one-by-one passes.
WINDOW_SHARE = 0.5
#: The largest difference, relative to the map's largest value, between a window's gradient and the whole
#: image's on a layer's first example before the layer's other examples use windows (rounding, not geometry).
WINDOW_TOLERANCE = 1e-4


def saliency_window(examples: LayerExamples, example: Example) -> Optional[Tuple[int, int, int, int]]:
    """``(top, left, bottom, right)`` (exclusive ends) of the part of the example's image whose gradient is the
    whole image's inside the example's box, or None where that part is not much smaller than the image.

    A unit reads only its receptive field, so the gradient of its value is zero outside the field and, inside it,
    is computed from the field's pixels alone. The window holds the field and one stride more on each side, and
    starts and ends on multiples of the layer's stride (or at the image's edge): every layer before it then sees
    the same grid, with the same padding at the image's edges (also "same" padding that depends on the size's
    parity), and the unit sits at ``(y - top / stride, x - left / stride)`` of the window's map.
    """
    rf = examples.rf
    h, w = examples.images.shape[-2:]
    if rf is None or rf.is_global or rf.jump is None:
        return None
    jy, jx = rf.jump
    if jy != int(jy) or jx != int(jx) or jy < 1 or jx < 1:
        return None
    jy, jx = int(jy), int(jx)
    t, l, b, r = rf.region(example.y, example.x)
    top = max(0, (t - jy) // jy * jy)
    left = max(0, (l - jx) // jx * jx)
    bottom = min(h, -(-(b + 1 + jy) // jy) * jy)
    right = min(w, -(-(r + 1 + jx) // jx) * jx)
    if (bottom - top) * (right - left) > WINDOW_SHARE * h * w:
        return None
    return (top, left, bottom, right)


def _gradient(lm, where: str, unit: int, x: torch.Tensor, ys: Sequence[int], xs: Sequence[int]) -> torch.Tensor:
    """``|d a[i, unit, ys[i], xs[i]] / d x[i]|`` summed over colour channels, for each image ``x[i]``."""
    x = x.to(lm.device).contiguous().clone().requires_grad_(True)
    with frozen(lm.model), record(lm.model, [where], stop=True) as rec:
        call_model(lm, x, rec.run)
        a = first_output_tensor(rec[where])
        rows = torch.arange(len(ys))
        value = a[rows, unit, torch.tensor(list(ys)), torch.tensor(list(xs))].sum()
        (grad,) = torch.autograd.grad(value, x)
    return grad.abs().sum(1, keepdim=True).detach().cpu()


def _window_saliency(lm, examples: LayerExamples, where: str, unit: int, e: Example, window) -> torch.Tensor:
    """The example's saliency (``h x w`` of its box) computed on its image's ``window`` alone."""
    top, left, bottom, right = window
    jy, jx = (int(j) for j in examples.rf.jump)
    part = examples.images[e.image][:, top:bottom, left:right].unsqueeze(0)
    grad = _gradient(lm, where, unit, part, [e.y - top // jy], [e.x - left // jx])[0]
    t, l, b, r = examples.box(e)
    return crop_box(grad, (t - top, l - left, b - top, r - left), fill=0.0)[0]


def example_saliency(lm, examples: LayerExamples, unit: int, which: Sequence[Example]) -> List[torch.Tensor]:
    """The unit's input gradient (``|d response(y, x) / d image|`` summed over colour channels,
    ``h x w``) over each example's receptive-field patch; a few examples per backward pass. The response is
    read before the unit's activation, whose gradient is zero where it clips (a ReLU at 0, a ReLU6 at 6).

    Where the receptive field is much smaller than the image, the gradient is computed on a window around it
    (:func:`saliency_window`); the layer's first such example is also computed on its whole image and the
    windows are used only when both agree (:data:`WINDOW_TOLERANCE`), so a model whose fields the arithmetic
    gets wrong falls back to whole images."""
    lm = load_model(lm)
    if not which:
        return []
    where = examples.before or examples.reads
    out: List[Optional[torch.Tensor]] = [None] * len(which)
    windows = [saliency_window(examples, e) for e in which]
    if examples.windows_agree is None and any(windows):
        k = next(i for i, win in enumerate(windows) if win)
        e = which[k]
        whole = crop_box(_gradient(lm, where, unit, examples.images[e.image].unsqueeze(0), [e.y], [e.x])[0],
                         examples.box(e), fill=0.0)[0]
        part = _window_saliency(lm, examples, where, unit, e, windows[k])
        scale = float(whole.abs().max())
        examples.windows_agree = bool(part.shape == whole.shape and
                                      float((part - whole).abs().max()) <= WINDOW_TOLERANCE * max(scale, 1e-30))
        out[k] = whole
    if examples.windows_agree:
        for i, (e, win) in enumerate(zip(which, windows)):
            if win is not None and out[i] is None:
                out[i] = _window_saliency(lm, examples, where, unit, e, win)
    rest = [i for i in range(len(which)) if out[i] is None]
    # each image's gradient is its own: a few at a time (two at 224 px: their activations and gradients
    # through a deep layer are about 0.2 GB an image)
    step = images_per_batch(examples.images.shape[-2:], pixels=SALIENCY_PIXELS)
    for k in range(0, len(rest), step):
        part = [which[i] for i in rest[k : k + step]]
        x = torch.stack([examples.images[e.image] for e in part])
        maps = _gradient(lm, where, unit, x, [e.y for e in part], [e.x for e in part])
        for i, m, e in zip(rest[k : k + step], maps, part):
            out[i] = crop_box(m, examples.box(e), fill=0.0)[0]
    return out


#: The side, in CSS pixels, at which a unit page shows a dataset example (gallery.css ``.examples img``):
#: examples are stored at that size.
EXAMPLE_SIDE = 96
#: WebP quality of a scaled example (as faithful as the JPEG 4:4:4 at 85 it replaced, a third fewer bytes).
EXAMPLE_QUALITY = 85


def example_file(folder: str, crop: torch.Tensor) -> str:
    """Store one example at the size it is shown, once however many units
    show it (the file is named by its content), as WebP: a small crop enlarged by whole pixels, lossless
    (crisp pixels), a larger one scaled to :data:`EXAMPLE_SIDE`, at quality :data:`EXAMPLE_QUALITY`.
    Returns its path in the folder."""
    side = max(crop.shape[-2:])
    if side * 2 <= EXAMPLE_SIDE:
        data = encode_image(zoom(crop, EXAMPLE_SIDE // side), "WEBP", lossless=True)
    else:
        h, w = crop.shape[-2:]
        size = (max(1, round(h * EXAMPLE_SIDE / side)), max(1, round(w * EXAMPLE_SIDE / side)))
        small = torch.nn.functional.interpolate(crop[None].float(), size=size, mode="bilinear", antialias=True,
                                                align_corners=False)[0].clamp(0, 1) if side != EXAMPLE_SIDE else crop
        data = encode_image(small, "WEBP", quality=EXAMPLE_QUALITY)
    rel = f"examples/{hashlib.sha256(data).hexdigest()[:20]}.webp"
    write_bytes(os.path.join(folder, rel), data, keep_identical=True)
    return rel


#: A saliency overlay's longest side: the input gradient averaged over cells of the patch, drawn by the page
#: over the example (the heat blended into each 96 px example cost 2.0 KB a crop; this, about 0.4 KB).
OVERLAY_SIDE = 48
#: The levels of heat an overlay keeps (a 16-colour palette with transparency).
OVERLAY_LEVELS = 16
#: The overlay's opacity where the heat is largest (:func:`cnnvis.attribution.gradients.overlay`'s alpha).
OVERLAY_ALPHA = 0.6


def overlay_levels(heat: torch.Tensor, side: int = OVERLAY_SIDE) -> torch.Tensor:
    """An ``H x W`` heat map in [0, 1] as the overlay keeps it: averaged over cells down to at most ``side``
    pixels on its longest side (the crop's aspect kept; then scaled so the hottest cell is 1) and quantised
    to levels ``0 .. OVERLAY_LEVELS - 1``.

    Example:
        >>> overlay_levels(torch.ones(96, 72)).shape, int(overlay_levels(torch.ones(4, 4)).max())
        (torch.Size([48, 36]), 15)
    """
    h, w = heat.shape[-2:]
    longest = max(h, w)
    heat = heat.float()
    if longest > side:
        size = (max(1, round(h * side / longest)), max(1, round(w * side / longest)))
        heat = torch.nn.functional.adaptive_avg_pool2d(heat[None, None], size)[0, 0]
        top = float(heat.max())
        heat = heat / top if top > 0 else heat  # the hottest cell as hot as the hottest pixel was
    return (heat.clamp(0, 1) * (OVERLAY_LEVELS - 1)).round().to(torch.uint8)


@functools.lru_cache(maxsize=1)
def _overlay_palette() -> Tuple[List[int], bytes]:
    """The overlay's palette (inferno at each level, flat RGB) and each level's opacity (PNG transparency)."""
    steps = torch.arange(OVERLAY_LEVELS, dtype=torch.float32) / (OVERLAY_LEVELS - 1)
    colours = (colorize(steps[None], "inferno", 0.0, 1.0)[:, 0].t() * 255).round().to(torch.uint8)  # levels x 3
    return colours.flatten().tolist(), bytes(int(round(255 * OVERLAY_ALPHA * float(v))) for v in steps)


def saliency_file(folder: str, heat: torch.Tensor) -> str:
    """Store a saliency overlay (:func:`overlay_levels`) once, named by its content: a palette PNG whose
    colour is the inferno scale at the level and whose opacity grows with it to :data:`OVERLAY_ALPHA`,
    so the page, drawing it over the example, shows what :func:`cnnvis.attribution.gradients.overlay`
    blends. Returns its path in the folder."""
    from PIL import Image

    palette, alpha = _overlay_palette()
    image = Image.fromarray(overlay_levels(heat).numpy(), mode="P")
    image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, format="PNG", transparency=alpha, optimize=True)
    data = buf.getvalue()
    rel = f"examples/{hashlib.sha256(data).hexdigest()[:20]}.png"
    write_bytes(os.path.join(folder, rel), data, keep_identical=True)
    return rel
