"""Receptive fields: theoretical (conv/pool arithmetic) and effective (measured from gradients).

Theoretical field of a layer, per axis, for the units of its output grid:

* ``size``: how many input pixels one unit can see;
* ``jump``: input pixels between two neighbouring units (the effective stride);
* ``start``: the centre of unit 0's field in input pixel coordinates (pixel ``i`` has its
  centre at ``i``; negative where padding reaches outside the image). Unit ``k`` is centred
  at ``start + k * jump``.

A convolution or pooling with kernel ``k``, stride ``s``, padding ``p`` and dilation ``d``
(``k' = d (k - 1) + 1``) maps ``(size, jump, start)`` to
``(size + (k' - 1) jump, jump s, start + ((k' - 1) / 2 - p) jump)``; ``ceil_mode`` only adds
units at the far edge and changes none of the three.

The arithmetic follows the model's real computation graph, not its module list: one forward
pass runs under a :class:`torch.overrides.TorchFunctionMode` that tags every tensor with the
field of its units. So residual adds, concatenations (Inception), functional calls
(``F.max_pool2d`` in ``forward``), ``F.pad`` and slicing are all followed. The rules:

* ``conv2d``, ``max_pool2d``, ``avg_pool2d``, ``lp_pool2d``, ``pad``, ``adaptive_*_pool2d``
  (exact when the input size is a multiple of the output size; otherwise its largest bin and
  the mean stride) and basic slicing of the last two dimensions use the arithmetic above;
* any other op whose output keeps the last two dimensions of its inputs is pointwise in
  space (ReLU, batch norm, ``+``, ``cat`` along channels, channel shuffles): its field is the
  union of its inputs' fields (the widest extent), so a residual block sees what its widest
  branch sees;
* an op that collapses or changes the spatial grid in any other way (flatten, ``Linear``,
  global pooling, a mean over H and W, interpolation, transposed convolutions) makes its output
  *global*: it sees the whole input, ``size`` is the input size and ``jump``/``start`` are
  ``None``. A squeeze-and-excitation gate is global too, and so is everything it multiplies
  (their units truly depend on every pixel).

The effective field (Luo et al., 2016) is measured: the gradient of the layer's centre unit
(summed over channels) with respect to the input, in absolute value, summed over input channels
and averaged over random inputs in [0, 1]. Its ``size`` is the side of the smallest square,
centred on the unit's theoretical centre, that holds 95% of that gradient mass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from cnnvis.core.errors import InputError
from cnnvis.model.loading import load_model
from cnnvis.model.probing import call_model
from cnnvis.model.hooks import first_output_tensor, frozen, record
from cnnvis.core.io import colorize, safe_name, save_npy, save_png
from cnnvis.model.layers import layer_names, resolve_layers, type_name
from cnnvis.model.preprocess import parse_size

#: Attribute under which a tensor carries its field during the tracing pass.
_ATTR = "_cnnvis_receptive_field"


class _Axis(NamedTuple):
    size: float
    jump: float
    start: float

    def extent(self) -> Tuple[float, float]:
        half = (self.size - 1) / 2
        return self.start - half, self.start + half


class _Field(NamedTuple):
    """The field of every unit of one tensor: per axis (height, width), and its grid size."""

    h: Optional[_Axis]
    w: Optional[_Axis]
    grid: Tuple[int, int]

    @property
    def is_global(self) -> bool:
        return self.h is None


_GLOBAL = _Field(None, None, (0, 0))


def _number(v: float) -> Union[int, float]:
    return int(v) if float(v).is_integer() else float(v)


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, (list, tuple, torch.Size)):
        if len(v) == 0:
            return None
        return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[-2]), int(v[-1]))
    return (int(v), int(v))


def _arg(args, kwargs, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _compose(axis: _Axis, kernel: int, stride: float, padding: float, dilation: int = 1) -> _Axis:
    k = dilation * (kernel - 1) + 1
    return _Axis(axis.size + (k - 1) * axis.jump, axis.jump * stride, axis.start + ((k - 1) / 2 - padding) * axis.jump)


def _union(fields: Sequence[_Field], grid) -> _Field:
    if any(f.is_global for f in fields):
        return _GLOBAL
    axes = []
    for which in ("h", "w"):
        parts = [getattr(f, which) for f in fields]
        lo = min(a.extent()[0] for a in parts)
        hi = max(a.extent()[1] for a in parts)
        axes.append(_Axis(hi - lo + 1, max(a.jump for a in parts), (lo + hi) / 2))
    return _Field(axes[0], axes[1], tuple(grid))


def _window(f: _Field, out_grid, kernel, stride, padding, dilation=(1, 1)) -> _Field:
    return _Field(
        _compose(f.h, kernel[0], stride[0], padding[0], dilation[0]),
        _compose(f.w, kernel[1], stride[1], padding[1], dilation[1]),
        tuple(out_grid),
    )


def _conv(f, out, args, kwargs):
    weight = _arg(args, kwargs, 1, "weight")
    kernel = tuple(int(k) for k in weight.shape[-2:])
    stride = _pair(_arg(args, kwargs, 3, "stride", 1))
    dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
    padding = _arg(args, kwargs, 4, "padding", 0)
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        padding = tuple((d * (k - 1)) // 2 for k, d in zip(kernel, dilation))
    return _window(f, out.shape[-2:], kernel, stride, _pair(padding), dilation)


def _pool(f, out, args, kwargs, *, has_dilation: bool, kernel_index: int = 1):
    kernel = _pair(_arg(args, kwargs, kernel_index, "kernel_size"))
    stride = _pair(_arg(args, kwargs, kernel_index + 1, "stride", None) or kernel) or kernel
    if kernel_index == 1:
        padding = _pair(_arg(args, kwargs, 3, "padding", 0))
        dilation = _pair(_arg(args, kwargs, 4, "dilation", 1)) if has_dilation else (1, 1)
    else:  # lp_pool2d(input, norm_type, kernel_size, stride, ceil_mode): no padding
        padding, dilation = (0, 0), (1, 1)
    return _window(f, out.shape[-2:], kernel, stride, padding, dilation)


def _adaptive(f, out, args, kwargs):
    sizes_in, sizes_out = f.grid, tuple(out.shape[-2:])
    if sizes_out == (1, 1) and sizes_in != (1, 1):
        return _GLOBAL
    kernel, stride = [], []
    for n_in, n_out in zip(sizes_in, sizes_out):
        if n_in % n_out == 0:
            kernel.append(n_in // n_out)
            stride.append(n_in // n_out)
        else:  # uneven bins: the largest bin and the mean stride
            bins = [math.ceil((i + 1) * n_in / n_out) - (i * n_in) // n_out for i in range(n_out)]
            kernel.append(max(bins))
            stride.append(n_in / n_out)
    return _window(f, sizes_out, kernel, stride, (0, 0))


def _pad(f, out, args, kwargs):
    pad = list(_arg(args, kwargs, 1, "pad"))
    left, top = (pad[0] if len(pad) > 0 else 0), (pad[2] if len(pad) > 2 else 0)
    return _window(f, out.shape[-2:], (1, 1), (1, 1), (top, left))


def _getitem(f, out, args, kwargs):
    """Basic slicing ``x[..., a:b:s, c:d:t]``: shifts the start and multiplies the jump."""
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    tensor = args[0]
    if any(i is None or isinstance(i, torch.Tensor) or isinstance(i, (list, bool)) for i in index):
        return None
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (tensor.dim() - len(index) + 1) + index[at + 1:]
    index = index + (slice(None),) * (tensor.dim() - len(index))
    last = index[-2:]
    if len(index) != tensor.dim() or not all(isinstance(s, slice) for s in last):
        return None
    starts, steps = [], []
    for s, n in zip(last, tensor.shape[-2:]):
        begin, _, step = s.indices(int(n))
        starts.append(begin)
        steps.append(step)
    return _window(f, out.shape[-2:], (1, 1), steps, (-starts[0], -starts[1]))


_RULES = {
    "conv2d": _conv,
    "max_pool2d": lambda f, o, a, k: _pool(f, o, a, k, has_dilation=True),
    "max_pool2d_with_indices": lambda f, o, a, k: _pool(f, o, a, k, has_dilation=True),
    "avg_pool2d": lambda f, o, a, k: _pool(f, o, a, k, has_dilation=False),
    "lp_pool2d": lambda f, o, a, k: _pool(f, o, a, k, has_dilation=False, kernel_index=2),
    "adaptive_avg_pool2d": _adaptive,
    "adaptive_max_pool2d": _adaptive,
    "adaptive_max_pool2d_with_indices": _adaptive,
    "pad": _pad,
    "__getitem__": _getitem,
}
#: Ops that keep the grid size but mix positions in a way the arithmetic does not cover.
_UNKNOWN_SAME_GRID = {"conv_transpose2d", "interpolate", "upsample", "grid_sample", "roll", "flip", "rot90"}


class _FieldTracker(TorchFunctionMode):
    """Tags each op's output tensors with their receptive field (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        fields = [getattr(t, _ATTR) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and hasattr(t, _ATTR)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not fields or not outputs:
            return out
        name = getattr(func, "__name__", "")
        main = outputs[0]
        new = None
        rule = _RULES.get(name)
        if any(f.is_global for f in fields):
            new = _GLOBAL
        elif rule is not None and isinstance(args[0], torch.Tensor) and hasattr(args[0], _ATTR) and main.dim() >= 2:
            new = rule(getattr(args[0], _ATTR), main, args, kwargs)
        if new is None:
            keeps_grid = all(t.dim() >= 2 and tuple(t.shape[-2:]) == f.grid for t in outputs for f in fields)
            new = _union(fields, fields[0].grid) if keeps_grid and name not in _UNKNOWN_SAME_GRID else _GLOBAL
        for t in outputs:
            try:
                setattr(t, _ATTR, new)
            except (AttributeError, RuntimeError):  # pragma: no cover - exotic tensor types
                pass
        return out


@dataclass(frozen=True)
class ReceptiveField:
    """The theoretical receptive field of one layer's units; per axis as (height, width).

    ``jump`` and ``start`` are ``None`` for a *global* layer (one that sees the whole input,
    ``size`` then being the input size). ``effective`` is the measured effective size (side
    of the square holding 95% of the centre unit's gradient) when it was asked for.
    """

    name: str
    type: str
    size: Tuple[int, int]
    jump: Optional[Tuple[float, float]]
    start: Optional[Tuple[float, float]]
    output_shape: Optional[Tuple[int, ...]] = None
    input_size: Tuple[int, int] = (0, 0)
    effective: Optional[float] = None

    @property
    def is_global(self) -> bool:
        return self.jump is None

    @property
    def has_centre(self) -> bool:
        """Whether the layer has a spatial output grid (so a centre unit and an effective field)."""
        return not self.is_global and self.output_shape is not None and len(self.output_shape) == 3

    def region(self, y: int = 0, x: int = 0) -> Tuple[int, int, int, int]:
        """Input pixels ``(top, left, bottom, right)`` (inclusive, maybe outside the image) seen by unit (y, x).

        Example:
            >>> rf = ReceptiveField("c", "Conv2d", (3, 3), (2, 2), (0, 0))
            >>> rf.region(0, 0), rf.region(1, 2)
            ((-1, -1, 1, 1), (1, 3, 3, 5))
        """
        if self.is_global:
            return (0, 0, self.input_size[0] - 1, self.input_size[1] - 1)
        cy, cx = self.start[0] + y * self.jump[0], self.start[1] + x * self.jump[1]
        hy, hx = (self.size[0] - 1) / 2, (self.size[1] - 1) / 2
        return (round(cy - hy), round(cx - hx), round(cy + hy), round(cx + hx))

    def to_dict(self) -> dict:
        """JSON-ready: a single number where height and width agree, else ``[height, width]``."""

        def one(v):
            if v is None:
                return None
            v = tuple(_number(a) for a in v)
            return v[0] if v[0] == v[1] else list(v)

        d = {"name": self.name, "type": self.type, "size": one(self.size), "jump": one(self.jump),
             "start": one(self.start), "global": self.is_global,
             "output_shape": list(self.output_shape) if self.output_shape is not None else None}
        if self.effective is not None:
            d["effective"] = _number(self.effective)
        return d


def _input_size(lm, size) -> Tuple[int, int]:
    return parse_size(size) if size is not None else lm.preprocessing.input_size()


def receptive_fields(
    model,
    layers: Union[str, Sequence[str], None] = None,
    *,
    size=None,
    effective: bool = False,
    samples: int = 8,
    seed: int = 0,
) -> List[ReceptiveField]:
    """The theoretical receptive field of each layer (all by default), in model order.

    Args:
        model: a :class:`cnnvis.LoadedModel` or an ``nn.Module``.
        layers: layer specs (names, globs, ``type:Conv2d``); layers that do not run are left out.
        size: input size of the tracing pass (default: the model's; it matters only for
            global layers and for ``effective``).
        effective: also measure the effective size (see :func:`effective_receptive_fields`).

    Example:
        >>> import cnnvis
        >>> [(r.name, r.size[0], r.jump[0]) for r in receptive_fields(cnnvis.load_model("lenet-digits"), "type:Conv2d")]
        [('conv1', 5, 1), ('conv2', 14, 2)]
    """
    lm = load_model(model)
    names = resolve_layers(lm, layers if layers is not None else layer_names(lm))
    h, w = _input_size(lm, size)
    x = torch.rand(1, lm.preprocessing.channels, h, w, generator=torch.Generator().manual_seed(seed)).to(lm.device)
    setattr(x, _ATTR, _Field(_Axis(1, 1, 0), _Axis(1, 1, 0), (h, w)))
    modules = dict(lm.model.named_modules())
    with frozen(lm.model), torch.no_grad(), record(lm.model, names, detach=True) as rec, _FieldTracker():
        call_model(lm, x, rec.run)  # a failing forward pass is one ModelError that blames the model
    rows = []
    for name in names:
        if not rec.calls[name]:
            continue
        t = first_output_tensor(rec[name])
        f = getattr(t, _ATTR, None) if t is not None else None
        if f is None:
            continue
        shape = tuple(t.shape[1:])
        if f.is_global:
            rows.append(ReceptiveField(name, type_name(modules[name]), (h, w), None, None, shape, (h, w)))
        else:
            rows.append(ReceptiveField(
                name, type_name(modules[name]), (_number(f.h.size), _number(f.w.size)),
                (_number(f.h.jump), _number(f.w.jump)), (_number(f.h.start), _number(f.w.start)), shape, (h, w),
            ))
    if effective:
        rows = merge_effective(rows, measure_effective(lm, [r for r in rows if r.has_centre], samples=samples, seed=seed))
    return rows


def merge_effective(rows: Sequence[ReceptiveField], measured: Sequence["EffectiveField"]) -> List[ReceptiveField]:
    """The rows with ``effective`` filled in from measured fields (by layer name)."""
    from dataclasses import replace

    sizes = {e.layer: e.size for e in measured}
    return [replace(r, effective=sizes[r.name]) if r.name in sizes else r for r in rows]


@dataclass(frozen=True, eq=False)
class EffectiveField:
    """The measured effective receptive field of one layer's centre unit.

    ``map`` is H x W (the input size): the mean absolute input gradient of the unit, summed
    over input channels, scaled to sum 1. ``radius`` is the smallest Chebyshev distance from
    ``center`` (input pixels) within which ``mass`` of it lies; ``size = 2 * radius + 1``.
    """

    layer: str
    unit: Tuple[int, int]
    center: Tuple[float, float]
    map: torch.Tensor
    radius: float
    size: float
    mass: float
    samples: int
    theoretical: ReceptiveField = field(repr=False, default=None)

    def render(self, gamma: float = 0.5) -> torch.Tensor:
        """3 x H x W image: the map (``map ** gamma``, magma) with the theoretical field outlined
        in white and the effective square in cyan."""
        m = self.map / self.map.max() if float(self.map.max()) > 0 else self.map
        img = colorize(m.clamp(min=0) ** gamma, "magma", 0.0, 1.0)
        if self.theoretical is not None and not self.theoretical.is_global:
            _outline(img, self.theoretical.region(*self.unit), (1.0, 1.0, 1.0))
        cy, cx = self.center
        r = self.radius
        _outline(img, (round(cy - r), round(cx - r), round(cy + r), round(cx + r)), (0.0, 1.0, 1.0))
        return img


def _outline(img: torch.Tensor, box, colour) -> None:
    _, h, w = img.shape
    top, left, bottom, right = box
    c = torch.tensor(colour).view(3, 1)
    t, b = max(top, 0), min(bottom, h - 1)
    l, r = max(left, 0), min(right, w - 1)
    if t > b or l > r:
        return
    for row in (top, bottom):
        if 0 <= row < h:
            img[:, row, l:r + 1] = c
    for col in (left, right):
        if 0 <= col < w:
            img[:, t:b + 1, col] = c.view(3, 1)


def mass_radius(grad_map: torch.Tensor, center: Tuple[float, float], mass: float = 0.95) -> float:
    """Smallest Chebyshev radius around ``center`` holding ``mass`` of a non-negative H x W map.

    Example:
        >>> m = torch.zeros(9, 9); m[4, 4] = 0.875; m[4, 6] = 0.125
        >>> mass_radius(m, (4, 4), 0.875), mass_radius(m, (4, 4), 0.95)
        (0.0, 2.0)
    """
    h, w = grad_map.shape
    ys = torch.arange(h, dtype=torch.float64).view(-1, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, -1)
    dist = torch.maximum((ys - center[0]).abs(), (xs - center[1]).abs()).flatten()
    values = grad_map.double().flatten()
    total = float(values.sum())
    if total <= 0:
        return 0.0
    levels, inverse = torch.unique(dist, return_inverse=True)
    per_level = torch.zeros(len(levels), dtype=torch.float64).index_add_(0, inverse, values)
    reached = torch.nonzero(per_level.cumsum(0) >= mass * total * (1 - 1e-6))
    return float(levels[reached[0, 0]])


def effective_receptive_fields(
    model,
    layers: Union[str, Sequence[str]],
    *,
    samples: int = 8,
    seed: int = 0,
    size=None,
    mass: float = 0.95,
) -> List[EffectiveField]:
    """Measure the effective receptive field of each layer's centre unit (see the module docstring).

    One forward pass over ``samples`` random inputs (fixed by ``seed``), then one backward pass
    per layer. The model's weights as loaded are used (random ones with ``weights="none"``).

    Example:
        >>> import cnnvis
        >>> e = effective_receptive_fields(cnnvis.load_model("lenet-digits"), ["conv1"], samples=2)[0]
        >>> e.unit, e.center, e.size <= 5
        ((14, 14), (16.0, 16.0), True)
    """
    lm = load_model(model)
    theory = receptive_fields(lm, layers, size=size)
    flat = [r for r in theory if not r.has_centre]
    if flat:
        raise InputError(
            f"layer {flat[0].name} has no spatial output (it sees the whole input), so it has no centre unit; "
            f"pick a convolution or pooling layer"
        )
    return measure_effective(lm, theory, samples=samples, seed=seed, mass=mass)


def measure_effective(model, fields: Sequence[ReceptiveField], *, samples: int = 8, seed: int = 0,
                      mass: float = 0.95) -> List[EffectiveField]:
    """:func:`effective_receptive_fields` for layers whose theoretical fields are known already
    (rows of :func:`receptive_fields` with a centre unit, all at one input size)."""
    if not fields:
        return []
    if samples < 1:
        raise InputError(f"samples must be at least 1, got {samples}")
    lm = load_model(model)
    h, w = fields[0].input_size
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, lm.preprocessing.channels, h, w, generator=g).to(lm.device).requires_grad_(True)
    results = []
    with frozen(lm.model), record(lm.model, [r.name for r in fields], stop=True) as rec:
        call_model(lm, x, rec.run)
        for i, rf in enumerate(fields):
            out = first_output_tensor(rec[rf.name])
            uy, ux = out.shape[-2] // 2, out.shape[-1] // 2
            (grad,) = torch.autograd.grad(out[:, :, uy, ux].sum(), x, retain_graph=i < len(fields) - 1,
                                          allow_unused=True)
            grad_map = torch.zeros(h, w) if grad is None else grad.detach().abs().sum(1).mean(0).cpu()
            total = float(grad_map.sum())
            grad_map = grad_map / total if total > 0 else grad_map
            center = (float(rf.start[0] + uy * rf.jump[0]), float(rf.start[1] + ux * rf.jump[1]))
            radius = mass_radius(grad_map, center, mass)
            results.append(EffectiveField(rf.name, (uy, ux), center, grad_map, radius, 2 * radius + 1, mass,
                                          samples, rf))
    return results


def save_effective_fields(fields: Sequence[EffectiveField], output: str) -> Dict[str, str]:
    """Write ``erf-<layer>.png`` (see :meth:`EffectiveField.render`) and ``erf-<layer>.npy`` (the map)
    per layer into ``output``; returns layer -> PNG path."""
    import os

    paths = {}
    for f in fields:
        base = os.path.join(output, f"erf-{safe_name(f.layer)}")
        save_npy(f.map, base + ".npy")
        paths[f.layer] = save_png(f.render(), base + ".png")
    return paths
