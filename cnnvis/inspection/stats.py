"""Per-channel statistics of a layer's activations over a population of inputs, streamed.

One batch is in memory at a time. Per channel the statistics run over every image and every
spatial position, accumulate in float64 with Chan et al.'s pairwise update (stable), and two
partial results :meth:`LayerStats.merge` into exactly the result of one run over the union —
the basis for sharding. The top-k inputs per channel (by spatial mean) and a mergeable
histogram come along.

Example:
    >>> import torch
    >>> s = LayerStats(2)
    >>> s.update(torch.tensor([[[1.0, 3.0], [0.0, -2.0]]]), ["a"])
    >>> s.mean.tolist(), s.fraction_active.tolist(), s.top_items
    ([2.0, -1.0], [1.0, 0.0], [['a'], ['a']])
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from cnnvis.core.errors import BadImageError, InputError
from cnnvis.model.hooks import first_output_tensor, frozen, record
from cnnvis.core.files import write_json
from cnnvis.core.io import find_images, load_image, safe_name, save_figure
from cnnvis.model.layers import resolve_layers
from cnnvis.core.progress import Progress
from cnnvis.model.loading import load_model
from cnnvis.model.probing import call_model


class Histogram:
    """A streaming, mergeable histogram with bins of width ``2**e`` aligned at zero.

    When values fall outside the span ``max_bins`` bins can cover, neighbouring bins merge
    (the width doubles), so memory stays fixed whatever the population. It is a picture of
    the distribution: a batch with more than ``max_sample`` values contributes an evenly
    strided sample of them (``sampled`` becomes True); the statistics themselves are exact.
    """

    def __init__(self, max_bins: int = 256, max_sample: int = 1 << 20):
        self.max_bins = max_bins
        self.max_sample = max_sample
        self.sampled = False
        self.exp: Optional[int] = None
        self.start = 0  # index of the first bin: it covers [start * w, (start + 1) * w)
        self.counts = torch.zeros(0, dtype=torch.float64)

    @property
    def width(self) -> float:
        return 2.0 ** self.exp if self.exp is not None else 1.0

    def edges(self) -> torch.Tensor:
        return (torch.arange(len(self.counts) + 1, dtype=torch.float64) + self.start) * self.width

    def _fit(self, lo: float, hi: float) -> None:
        if self.exp is None:
            span = max(hi - lo, 1e-12)
            self.exp = math.floor(math.log2(span / (self.max_bins - 2))) if span > 0 else -30
            self.start = math.floor(lo / self.width)
            self.counts = torch.zeros(1, dtype=torch.float64)
        while True:
            first = min(self.start, math.floor(lo / self.width))
            last = max(self.start + len(self.counts) - 1, math.floor(hi / self.width))
            if last - first + 1 <= self.max_bins:
                break
            self._coarsen()
        first = min(self.start, math.floor(lo / self.width))
        last = max(self.start + len(self.counts) - 1, math.floor(hi / self.width))
        grown = torch.zeros(last - first + 1, dtype=torch.float64)
        grown[self.start - first : self.start - first + len(self.counts)] = self.counts
        self.start, self.counts = first, grown

    def _coarsen(self) -> None:
        """Double the bin width: bin k -> floor(k / 2)."""
        if self.start % 2:
            self.counts = torch.cat([torch.zeros(1, dtype=torch.float64), self.counts])
            self.start -= 1
        if len(self.counts) % 2:
            self.counts = torch.cat([self.counts, torch.zeros(1, dtype=torch.float64)])
        self.counts = self.counts.view(-1, 2).sum(1)
        self.start //= 2
        self.exp += 1

    def update(self, values: torch.Tensor) -> None:
        """Count ``values``; past ``max_sample`` values a batch is sampled at an even stride."""
        values = values.detach().flatten()
        if values.numel() > self.max_sample:
            values = values[:: -(-values.numel() // self.max_sample)]
            self.sampled = True
        if values.numel() == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        self._fit(lo, hi)
        w = self.width
        lo_edge = self.start * w
        hi_edge = (self.start + len(self.counts)) * w
        counts = torch.histc(values.float(), bins=len(self.counts), min=lo_edge, max=hi_edge)
        self.counts += counts.double()

    def copy(self) -> "Histogram":
        h = Histogram(self.max_bins, self.max_sample)
        h.exp, h.start, h.counts, h.sampled = self.exp, self.start, self.counts.clone(), self.sampled
        return h

    def merge(self, other: "Histogram") -> "Histogram":
        """The histogram of both populations (bins align because widths are powers of two)."""
        parts = [h.copy() for h in (self, other) if h.exp is not None]
        out = Histogram(max(self.max_bins, other.max_bins), max(self.max_sample, other.max_sample))
        out.sampled = self.sampled or other.sampled
        if not parts:
            return out
        exp = max(h.exp for h in parts)
        for h in parts:
            while h.exp < exp:
                h._coarsen()
        while True:
            first = min(h.start for h in parts)
            last = max(h.start + len(h.counts) - 1 for h in parts)
            if last - first + 1 <= out.max_bins:
                break
            for h in parts:
                h._coarsen()
        out.exp, out.start = parts[0].exp, first
        out.counts = torch.zeros(last - first + 1, dtype=torch.float64)
        for h in parts:
            out.counts[h.start - first : h.start - first + len(h.counts)] += h.counts
        return out


@dataclass
class LayerStats:
    """Running per-channel statistics of one layer (float64). Merge shards with :meth:`merge`."""

    channels: int
    top_k: int = 8
    count: int = 0  # images
    n: torch.Tensor = None  # values per channel
    mean: torch.Tensor = None
    m2: torch.Tensor = None
    min: torch.Tensor = None
    max: torch.Tensor = None
    active: torch.Tensor = None
    top_scores: List[List[float]] = None
    top_items: List[List[str]] = None
    histogram: Histogram = field(default_factory=Histogram)

    def __post_init__(self):
        c = self.channels
        if self.n is None:
            self.n = torch.zeros(c, dtype=torch.float64)
            self.mean = torch.zeros(c, dtype=torch.float64)
            self.m2 = torch.zeros(c, dtype=torch.float64)
            self.min = torch.full((c,), math.inf, dtype=torch.float64)
            self.max = torch.full((c,), -math.inf, dtype=torch.float64)
            self.active = torch.zeros(c, dtype=torch.float64)
            self.top_scores = [[] for _ in range(c)]
            self.top_items = [[] for _ in range(c)]

    def update(self, act: torch.Tensor, items: Sequence[str]) -> None:
        """Add a batch: ``act`` is N x C x ... (any spatial dims); ``items`` names the N inputs."""
        if act.shape[1] != self.channels:
            raise InputError(f"expected {self.channels} channels, got {act.shape[1]}")
        n_img = act.shape[0]
        flat = act.detach().reshape(n_img, self.channels, -1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        positions = flat.shape[2]
        # one pass per image and channel (torch's Welford), then exact pairwise combination in float64
        var, mean = torch.var_mean(flat, dim=2, correction=0)
        mean, m2 = mean.double().cpu(), var.double().cpu() * positions
        bmean = mean.mean(0)
        bm2 = m2.sum(0) + positions * ((mean - bmean) ** 2).sum(0)
        bn = torch.full((self.channels,), float(n_img * positions), dtype=torch.float64)
        bmin = flat.amin(dim=(0, 2)).double().cpu()
        bmax = flat.amax(dim=(0, 2)).double().cpu()
        bactive = flat.gt(0).sum(dim=(0, 2)).double().cpu()
        self._combine(bn, bmean, bm2, bmin, bmax, bactive)
        self.count += n_img
        self._add_top(mean, list(items))
        self.histogram.update(act)

    def _combine(self, bn, bmean, bm2, bmin, bmax, bactive) -> None:
        total = self.n + bn
        delta = bmean - self.mean
        safe = torch.where(total > 0, total, torch.ones_like(total))
        self.mean = self.mean + delta * bn / safe
        self.m2 = self.m2 + bm2 + delta ** 2 * self.n * bn / safe
        self.n = total
        self.min = torch.minimum(self.min, bmin)
        self.max = torch.maximum(self.max, bmax)
        self.active = self.active + bactive

    def _add_top(self, scores: torch.Tensor, items: List[str]) -> None:
        k = self.top_k
        if k <= 0:
            return
        for c in range(self.channels):
            pairs = list(zip(self.top_scores[c], self.top_items[c])) + list(zip(scores[:, c].tolist(), items))
            pairs.sort(key=lambda p: (-p[0], p[1]))
            self.top_scores[c] = [p[0] for p in pairs[:k]]
            self.top_items[c] = [p[1] for p in pairs[:k]]

    def merge(self, other: "LayerStats") -> "LayerStats":
        """The statistics of the union of both populations (neither operand changes)."""
        if other.channels != self.channels:
            raise InputError(f"cannot merge statistics of {self.channels} and {other.channels} channels")
        out = LayerStats(self.channels, max(self.top_k, other.top_k))
        for part in (self, other):
            if part.count == 0:
                continue
            out._combine(part.n, part.mean, part.m2, part.min, part.max, part.active)
            out.count += part.count
        # top-k from both sides (scores differ per channel, so merge channel by channel)
        for c in range(self.channels):
            pairs = list(zip(self.top_scores[c], self.top_items[c])) + list(zip(other.top_scores[c], other.top_items[c]))
            pairs.sort(key=lambda p: (-p[0], p[1]))
            out.top_scores[c] = [p[0] for p in pairs[: out.top_k]]
            out.top_items[c] = [p[1] for p in pairs[: out.top_k]]
        out.histogram = self.histogram.merge(other.histogram)
        return out

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation (ddof 0)."""
        return (self.m2 / self.n.clamp(min=1)).clamp(min=0).sqrt()

    @property
    def fraction_active(self) -> torch.Tensor:
        return self.active / self.n.clamp(min=1)

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
            "fraction_active": self.fraction_active.tolist(),
            "top": [list(t) for t in self.top_items],
            "top_scores": [list(t) for t in self.top_scores],
        }


@dataclass(frozen=True)
class StatsResult:
    """Statistics per layer, plus the inputs that could not be read (with ``skip_bad``)."""

    layers: Dict[str, LayerStats]
    skipped: Tuple[Tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        return {name: s.to_dict() for name, s in self.layers.items()}

    def merge(self, other: "StatsResult") -> "StatsResult":
        if set(self.layers) != set(other.layers):
            raise InputError("cannot merge statistics of different layers")
        return StatsResult({n: self.layers[n].merge(other.layers[n]) for n in self.layers}, self.skipped + other.skipped)


def _batches(model, paths: Sequence[str], batch_size: int, skip_bad: bool, skipped: list) -> Iterable[Tuple[torch.Tensor, List[str]]]:
    """Load, prepare and stack images ``batch_size`` at a time (equal sizes only go together)."""
    buf: List[torch.Tensor] = []
    names: List[str] = []

    def flush():
        groups: Dict[tuple, list] = {}
        for t, p in zip(buf, names):
            groups.setdefault(tuple(t.shape), []).append((t, p))
        for group in groups.values():
            yield torch.stack([t for t, _ in group]), [p for _, p in group]

    for path in paths:
        try:
            buf.append(model.preprocessing.prepare(load_image(path)))
            names.append(path)
        except InputError as exc:  # not an image, not a regular file, too large, not convertible
            if not skip_bad:
                raise
            skipped.append((path, exc.note if isinstance(exc, BadImageError) else str(exc).split(";")[0]))
        if len(buf) == batch_size:
            yield from flush()
            buf, names = [], []
    if buf:
        yield from flush()


@torch.no_grad()
def compute_stats(
    model,
    inputs: Sequence,
    layers,
    *,
    batch_size: int = 32,
    limit: Optional[int] = None,
    top_k: int = 8,
    skip_bad: bool = False,
    progress: Progress = None,
) -> StatsResult:
    """Per-channel activation statistics of ``layers`` over image files and folders.

    ``model`` is a spec, an ``nn.Module`` or a ``LoadedModel``.
    ``inputs`` are files or folders (searched recursively; an ImageFolder tree works). Each
    record in ``top`` is the path of an input, ranked by the channel's spatial mean. With
    ``skip_bad`` files that cannot be used (not images, not regular files such as FIFOs, too large
    to open safely) are left out and listed in the result's ``skipped``; otherwise the first one
    is a :class:`cnnvis.core.errors.BadImageError`.
    ``progress(done, total)`` is called after each batch.
    """
    model = load_model(model)
    skipped: list = []
    paths = find_images([os.fspath(p) for p in inputs], skip_bad=skip_bad, skipped=skipped)
    if limit is not None:
        paths = paths[: max(0, int(limit))]
    if not paths:
        raise InputError("no images to compute statistics over" + (" (every input was skipped)" if skipped else ""))
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    return stats_from_batches(model, _batches(model, paths, batch_size, skip_bad, skipped), layers,
                              total=len(paths), top_k=top_k, progress=progress, skipped=skipped)


def add_batch(stats: Dict[str, "LayerStats"], outputs: Dict[str, torch.Tensor], items: Sequence[str], top_k: int) -> None:
    """Add one batch's layer outputs (``{layer: N x C x ...}``, ``items`` naming the N inputs) to ``stats``;
    a layer's :class:`LayerStats` is made on its first batch. The streaming core of every statistics pass
    (:func:`stats_from_batches`, the gallery's shared dataset pass)."""
    for name, act in outputs.items():
        if name not in stats:
            stats[name] = LayerStats(act.shape[1], top_k)
        stats[name].update(act, items)


@torch.no_grad()
def stats_from_batches(model, batches: Iterable[Tuple[torch.Tensor, List[str]]], layers, *, total: int = 0,
                       top_k: int = 8, progress: Progress = None, skipped: Optional[list] = None) -> StatsResult:
    """The streaming core: ``batches`` yields ``(N x C x H x W in [0, 1], names)``."""
    model = load_model(model)
    names = resolve_layers(model, layers)
    stats: Dict[str, LayerStats] = {}
    device = model.device
    done = 0
    with frozen(model.model), record(model.model, names, stop=True, detach=True) as rec:
        for x, items in batches:
            call_model(model, x.to(device), rec.run)
            for n in names:
                if not rec.calls[n]:
                    raise InputError(f"layer {n!r} did not run in the forward pass, so it has no statistics")
            add_batch(stats, {n: first_output_tensor(rec.outputs[n]) for n in names}, items, top_k)
            done += len(items)
            if progress is not None:
                progress(done, total)
    if not stats:
        raise InputError("none of the inputs could be read as an image")
    return StatsResult(stats, tuple(skipped or ()))


def save_stats(result: StatsResult, out_dir: str) -> dict:
    """Write ``stats.json`` (without whitespace: a value per channel, machine-read) and per layer
    ``<layer>-histogram.png`` and ``<layer>-channels.png``."""
    paths = {"json": write_json(result.to_dict(), os.path.join(out_dir, "stats.json"), compact=True), "layers": {}}
    for name, s in result.layers.items():
        base = os.path.join(out_dir, safe_name(name))
        paths["layers"][name] = {
            "histogram": save_figure(_histogram_figure(s, name), base + "-histogram.png"),
            "channels": save_figure(_channels_figure(s, name), base + "-channels.png"),
        }
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _histogram_figure(s: LayerStats, name: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    edges = s.histogram.edges().numpy()
    ax.stairs(s.histogram.counts.numpy(), edges, fill=True, color="#3b6ea5")
    ax.set_yscale("log")
    ax.set_xlabel("activation")
    ax.set_ylabel("count (log" + (", sampled)" if s.histogram.sampled else ")"))
    ax.set_title(f"{name}: {s.count} images, {int(s.n.sum()):,} values")
    return fig


def _channels_figure(s: LayerStats, name: str):
    plt = _pyplot()
    c = range(s.channels)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(min(14, 3 + 0.08 * s.channels), 5), sharex=True)
    ax1.errorbar(c, s.mean.numpy(), yerr=s.std.numpy(), fmt="o", markersize=2, linewidth=0.6, color="#3b6ea5")
    ax1.set_ylabel("mean ± std")
    ax1.set_title(name)
    ax2.bar(c, s.fraction_active.numpy(), width=1.0, color="#d1495b")
    ax2.set_ylabel("fraction > 0")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("channel")
    return fig
