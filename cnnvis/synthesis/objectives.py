"""What to maximise: small objective values that compose with ``+``, ``-`` and scalar ``*``.

An objective is a plain object (no nested closures) with two things: ``layers``, the layer names
whose outputs it reads, and ``__call__(outputs)``, which takes the recorded outputs (a dict from
layer name to tensor, batch first) and returns **one value per batch element** (a 1-D tensor).

``index`` arguments take one channel for every batch element, or a sequence with one channel
per batch element, so many filters of one layer are optimised in one batch: element ``i``
drives channel ``index[i]``.

The model's own output (the logits) is named :data:`OUTPUT`.

Example:
    >>> import torch
    >>> obj = channel_l2("conv1", [0, 2]) - 0.5 * channel_mean("conv1", 1)
    >>> obj.layers
    ('conv1',)
    >>> h = torch.ones(2, 3, 4, 4)
    >>> obj({"conv1": h}).tolist()       # ||ones(4x4)||_2 = 4, minus 0.5 * mean 1
    [3.5, 3.5]
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from cnnvis.core.errors import InputError
from cnnvis.core.outputs import OUTPUT, first_output_tensor  # OUTPUT: the model's final output (class logits)

#: The objective names the command line accepts, and the ones that make one image per unit of a
#: layer (what ``gallery`` can show; ``class`` targets the model's output instead).
OBJECTIVES = ("channel-l2", "channel-mean", "channel-relu", "neuron", "class")
UNIT_OBJECTIVES = ("channel-l2", "channel-mean", "channel-relu", "neuron")

Index = Union[int, Sequence[int]]


class Objective:
    """Base class: ``layers`` it needs, ``__call__(outputs) -> (batch,)``, and arithmetic."""

    layers: Tuple[str, ...] = ()

    def __call__(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __add__(self, other: "Objective") -> "Objective":
        return Sum((self, _as_objective(other)), (1.0, 1.0))

    def __sub__(self, other: "Objective") -> "Objective":
        return Sum((self, _as_objective(other)), (1.0, -1.0))

    def __mul__(self, k: float) -> "Objective":
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Sum((self,), (float(k),))

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return Sum((self,), (-1.0,))

    def __truediv__(self, k: float) -> "Objective":
        return self * (1.0 / float(k))

    @property
    def name(self) -> str:
        return repr(self)

    @property
    def reported(self) -> "Objective":
        """The objective whose value records report (a term that only steers, like diversity, is left out)."""
        return self

    def select(self, rows: Sequence[int]) -> Optional["Objective"]:
        """The same objective for a subset of the batch's elements (``rows``), or ``None`` when it
        cannot say (the optimiser then keeps evaluating the whole batch)."""
        return None


def _as_objective(value) -> Objective:
    if not isinstance(value, Objective):
        raise TypeError(f"objectives combine with objectives, not {type(value).__name__}")
    return value


class Sum(Objective):
    """``sum_k weights[k] * terms[k]``: what ``+``, ``-`` and ``*`` build."""

    def __init__(self, terms: Sequence[Objective], weights: Sequence[float]):
        flat_terms, flat_weights = [], []
        for term, w in zip(terms, weights):
            if isinstance(term, Sum):  # keep sums flat: a - b + c is one level deep
                flat_terms += list(term.terms)
                flat_weights += [w * v for v in term.weights]
            else:
                flat_terms.append(term)
                flat_weights.append(float(w))
        self.terms = tuple(flat_terms)
        self.weights = tuple(flat_weights)
        self.layers = tuple(dict.fromkeys(layer for t in self.terms for layer in t.layers))

    def select(self, rows):
        terms = [t.select(rows) for t in self.terms]
        return None if any(t is None for t in terms) else Sum(terms, self.weights)

    def __call__(self, outputs):
        total = None
        for term, w in zip(self.terms, self.weights):
            value = w * term(outputs)
            total = value if total is None else total + value
        return total

    def __repr__(self):
        parts = []
        for term, w in zip(self.terms, self.weights):
            sign = "-" if w < 0 else "+"
            a = abs(w)
            body = repr(term) if a == 1.0 else f"{a:g} * {term!r}"
            parts.append(f"{sign} {body}")
        text = " ".join(parts)
        return text[2:] if text.startswith("+ ") else text


def _select(activation: torch.Tensor, index: Index, layer: str) -> torch.Tensor:
    """Channel ``index`` (one, or one per batch element) of a batch-first activation."""
    if activation.ndim < 2:
        raise InputError(f"layer {layer} has no channel dimension (output shape {tuple(activation.shape)})")
    channels = activation.shape[1]
    idx = [index] * activation.shape[0] if isinstance(index, int) else list(index)
    if len(idx) != activation.shape[0]:
        raise InputError(f"{len(idx)} channel indices for a batch of {activation.shape[0]} at layer {layer}")
    bad = [i for i in idx if not 0 <= i < channels]
    if bad:
        raise InputError(f"filter {bad[0]} is out of range: layer {layer} has {channels} channels (0..{channels - 1})")
    rows = torch.arange(activation.shape[0], device=activation.device)
    return activation[rows, torch.as_tensor(idx, device=activation.device)]


def _index_repr(index: Index) -> str:
    return str(index) if isinstance(index, int) else "[" + ",".join(str(i) for i in index) + "]"


class _Unit(Objective):
    """An objective on one channel (per batch element) of one layer."""

    kind = ""

    def __init__(self, layer: str, index: Index):
        self.layer = str(layer)
        self.index = index if isinstance(index, int) else tuple(int(i) for i in index)
        self.layers = (self.layer,)

    def select(self, rows):
        import copy

        out = copy.copy(self)
        if not isinstance(self.index, int):
            out.index = tuple(self.index[r] for r in rows)
        return out

    def _activation(self, outputs, layer: Optional[str] = None) -> torch.Tensor:
        """This objective's channels of ``layer``'s output (default: its own layer)."""
        layer = layer or self.layer
        value = outputs[layer]
        if not isinstance(value, torch.Tensor):
            value = first_output_tensor(value)
        return _select(value, self.index, layer)

    def __repr__(self):
        return f"{self.kind}({self.layer!r}, {_index_repr(self.index)})"


class ChannelL2(_Unit):
    """``||h_l,d(x)||_2``: the L2 norm of channel d's activation map (the textbook objective)."""

    kind = "channel_l2"

    def __call__(self, outputs):
        a = self._activation(outputs)
        if a.ndim < 3:
            raise InputError(
                f"channel-l2 needs a layer with spatial output (N x C x H x W); {self.layer} gives one number "
                f"per channel (shape {tuple(outputs[self.layer].shape)}), so its 'activation map' is a single "
                f"unit: use --objective neuron (or channel-mean), or pick a convolutional layer"
            )
        return a.flatten(1).norm(dim=1)


class ChannelMean(_Unit):
    """The mean of channel d's activation map (lucid's ``channel``)."""

    kind = "channel_mean"

    def __call__(self, outputs):
        a = self._activation(outputs)
        return a.flatten(1).mean(dim=1) if a.ndim > 1 else a


#: How much a picture climbing :class:`ChannelRelu` still earns past its activation's ceiling (a ReLU6's 6),
#: per unit of the response before the activation: enough to prefer the picture the unit answers to most
#: among those that saturate it, small enough that reaching the ceiling at every position comes first.
BEYOND = 0.1


class ChannelRelu(_Unit):
    """The mean of ``max(0, h)`` over channel d's map: its positive response (``negative``: of ``-h``).

    Read on a unit's response — what the next layer reads, after its batch norm and activation
    (:func:`cnnvis.model.probing.unit_output`) — this is the unit's positive response (lucid's and
    Microscope's convention): a strongly negative response earns nothing. With ``negative``, read
    before the activation, it measures how strongly the unit is switched off, which is what a
    negative picture maximises.

    ``through`` names the module before the activation (the batch norm). The picture then climbs the
    response plus :data:`BEYOND` times ``max(0, h')`` of that module's output ``h'``: past a ReLU6's
    ceiling of 6, where every picture that reaches it ties, it still prefers the one the unit answers
    to most (instead of keeping the noise it started from), while reaching the ceiling everywhere comes
    first. What the records report, :attr:`reported`, is the response itself. Either way, where the
    response is clipped to 0 or below the gradient leaks through as if nothing clipped it (lucid
    redirects a ReLU's gradient the same way), so every position of the picture keeps rising until
    the unit answers there; the values are unchanged, only the gradient leaks.

    Example:
        >>> import torch
        >>> h = torch.tensor([[[[-1.0, 3.0]]]], requires_grad=True)
        >>> v = ChannelRelu("c", 0)({"c": h})
        >>> v.tolist(), torch.autograd.grad(v.sum(), h)[0].flatten().tolist()    # value 1.5; both positions rise
        ([1.5], [0.5, 0.5])
        >>> bn = torch.tensor([[[[-1.0, 9.0]]]])                                  # before a ReLU6
        >>> o = ChannelRelu("act", 0, through="bn")
        >>> [round(float(v(dict(act=bn.clamp(0, 6), bn=bn))), 4) for v in (o, o.reported)]   # 3 + 0.1 * 4.5; 3
        [3.45, 3.0]
    """

    kind = "channel_relu"

    def __init__(self, layer: str, index: Index, negative: bool = False, through: Optional[str] = None,
                 report: bool = False):
        super().__init__(layer, index)
        self.negative = bool(negative)
        self.through = str(through) if through else None
        self.report = bool(report)
        self.layers = (self.layer,) + ((self.through,) if self.through else ())

    @property
    def reported(self) -> "ChannelRelu":
        if self.through is None or self.report:
            return self
        out = ChannelRelu(self.layer, self.index, self.negative, self.through, report=True)
        return out

    def __call__(self, outputs):
        sign = -1.0 if self.negative else 1.0
        a = sign * self._activation(outputs)
        pre = sign * self._activation(outputs, self.through) if self.through else a
        value = torch.relu(a)
        if not self.report and self.through is not None:  # past the activation's ceiling, still a little higher
            value = value + BEYOND * torch.relu(pre)
        value = value.flatten(1).mean(dim=1) if value.ndim > 1 else value
        if not torch.is_grad_enabled():
            return value
        leak = pre * (a <= 0).to(pre.dtype)
        leak = leak.flatten(1).mean(dim=1) if leak.ndim > 1 else leak
        return value + (leak - leak.detach())

    def __repr__(self):
        sign = ", negative=True" if self.negative else ""
        through = f", through={self.through!r}" if self.through else ""
        return f"{self.kind}({self.layer!r}, {_index_repr(self.index)}{sign}{through})"


class Neuron(_Unit):
    """One spatial unit of channel d: the centre one unless ``y``, ``x`` say otherwise."""

    kind = "neuron"

    def __init__(self, layer: str, index: Index, y: Optional[int] = None, x: Optional[int] = None):
        super().__init__(layer, index)
        self.y, self.x = y, x

    def position(self, height: int, width: int) -> Tuple[int, int]:
        """The (y, x) this objective reads in an ``height`` x ``width`` map."""
        return (height // 2 if self.y is None else self.y, width // 2 if self.x is None else self.x)

    def __call__(self, outputs):
        a = self._activation(outputs)
        if a.ndim == 1:
            return a
        if a.ndim != 3:
            raise InputError(f"neuron needs a N x C x H x W or N x C output at {self.layer}, got {tuple(a.shape)}")
        y, x = self.position(a.shape[1], a.shape[2])
        if not (0 <= y < a.shape[1] and 0 <= x < a.shape[2]):
            raise InputError(f"neuron position ({y}, {x}) is outside {self.layer}'s {a.shape[1]}x{a.shape[2]} map")
        return a[:, y, x]


class ClassLogit(_Unit):
    """A class logit: unit ``index`` of the model's output (or of ``layer``'s output)."""

    kind = "class_logit"

    def __init__(self, index: Index, layer: str = OUTPUT):
        super().__init__(layer, index)

    def __call__(self, outputs):
        a = self._activation(outputs)
        return a.flatten(1).mean(dim=1) if a.ndim > 1 else a

    def __repr__(self):
        where = "" if self.layer == OUTPUT else f", layer={self.layer!r}"
        return f"class_logit({_index_repr(self.index)}{where})"


class Direction(Objective):
    """A direction in a layer's channel space: per position ``dot(h[:, y, x], v)``, times
    ``cos(h[:, y, x], v) ** cossim_pow``, averaged over positions (lucid's ``direction``).

    ``vector`` has one value per channel (every batch element uses it) or one row per batch
    element. ``cossim_pow > 0`` rewards pointing the same way over mere magnitude (lucid's
    caricature uses 1). For a layer without spatial output the value is the dot product itself.
    """

    def __init__(self, layer: str, vector, cossim_pow: float = 0.0):
        self.layer = str(layer)
        self.layers = (self.layer,)
        self.vector = torch.as_tensor(vector, dtype=torch.float32).detach()
        if self.vector.ndim not in (1, 2):
            raise InputError(f"a direction is one value per channel (or one row per batch element), got shape "
                             f"{tuple(self.vector.shape)}")
        self.cossim_pow = float(cossim_pow)

    def __call__(self, outputs):
        a = outputs[self.layer]
        if not isinstance(a, torch.Tensor):
            a = first_output_tensor(a)
        v = self.vector.to(device=a.device, dtype=a.dtype)
        if v.shape[-1] != a.shape[1]:
            raise InputError(f"the direction has {v.shape[-1]} values but layer {self.layer} has {a.shape[1]} channels")
        v = v.expand(a.shape[0], -1) if v.ndim == 1 else v
        if v.shape[0] != a.shape[0]:
            raise InputError(f"{v.shape[0]} direction rows for a batch of {a.shape[0]} at layer {self.layer}")
        shape = (a.shape[0], a.shape[1]) + (1,) * (a.ndim - 2)
        v = v.reshape(shape)
        dot = (a * v).sum(1)
        if self.cossim_pow:
            cos = dot / (a.norm(dim=1) * v.norm(dim=1) + 1e-8)
            dot = dot * cos.clamp(min=1e-1) ** self.cossim_pow
        return dot.flatten(1).mean(1) if dot.ndim > 1 else dot

    def select(self, rows):
        if self.vector.ndim == 1:
            return self
        return Direction(self.layer, self.vector[list(rows)], self.cossim_pow)

    def __repr__(self):
        extra = f", cossim_pow={self.cossim_pow:g}" if self.cossim_pow else ""
        return f"direction({self.layer!r}, <{self.vector.shape[-1]} values>{extra})"


class Diverse(Objective):
    """An objective with lucid's diversity term: pictures of the same unit pushed apart.

    ``groups[i]`` says which unit batch element ``i`` belongs to. For each element the Gram matrix
    of ``layer``'s positive activations (``max(0, h)``, channels x channels over positions: what the
    next layer sees) is flattened and normalised;
    element ``i`` loses ``weight * s * mean_j cos(G_i, G_j)`` over the other elements ``j`` of its
    group. ``s`` is the group's current mean ``|objective|``, detached (or ``scale`` when that is
    larger), so the weight means the same whatever the unit's response: at ``weight`` 1, two
    identical pictures cost their whole objective. :attr:`reported` is the plain objective, the
    number records show.

    Example:
        >>> import torch
        >>> h = torch.ones(2, 1, 2, 2)                     # two identical pictures of one unit
        >>> Diverse(channel_mean("c", 0), "c", [0, 0], 0.5)({"c": h}).tolist()
        [0.5, 0.5]
    """

    def __init__(self, base: Objective, layer: str, groups: Sequence[int], weight: float = 1.0, scale: float = 0.0,
                 keep: float = 0.0):
        self.base = base
        self.keep = float(keep)
        self.layer = str(layer)
        self.groups = tuple(int(g) for g in groups)
        self.weight = float(weight)
        self.scale = float(scale)
        self.layers = tuple(dict.fromkeys(tuple(base.layers) + (self.layer,)))

    @property
    def reported(self) -> Objective:
        return self.base.reported

    def select(self, rows):
        base = self.base.select(rows)
        if base is None:
            return None
        return Diverse(base, self.layer, [self.groups[r] for r in rows], self.weight, self.scale, self.keep)

    def similarity(self, outputs) -> torch.Tensor:
        """Per element: the mean cosine between its normalised Gram matrix and its group's others'."""
        a = outputs[self.layer]
        if not isinstance(a, torch.Tensor):
            a = first_output_tensor(a)
        a = torch.relu(a)  # what the next layer sees (lucid reads post-ReLU layers)
        flat = a.flatten(2) if a.ndim > 2 else a.unsqueeze(-1)
        grams = torch.bmm(flat, flat.transpose(1, 2)).flatten(1)
        grams = grams / (grams.norm(dim=1, keepdim=True) + 1e-10)
        groups = torch.as_tensor(self.groups, device=a.device)
        same = (groups[:, None] == groups[None, :]) & ~torch.eye(len(self.groups), dtype=torch.bool, device=a.device)
        cos = grams @ grams.t()
        count = same.sum(1).clamp(min=1)
        return (cos * same).sum(1) / count

    def __call__(self, outputs):
        value = self.base(outputs)
        if len(set(self.groups)) == len(self.groups) or self.weight == 0:
            return value
        groups = torch.as_tensor(self.groups, device=value.device)
        size = value.detach().abs()
        scale = torch.zeros_like(size)
        best = torch.zeros_like(size)
        for g in set(self.groups):
            members = groups == g
            scale = torch.where(members, torch.clamp(size[members].mean(), min=self.scale), scale)
            best = torch.where(members, value.detach()[members].max(), best)
        gate = (value.detach() >= self.keep * best).to(value.dtype)  # a picture that lost too much climbs back
        return value - self.weight * scale * gate * self.similarity(outputs)

    def __repr__(self):
        return f"diverse({self.base!r}, {self.layer!r}, weight={self.weight:g})"


def direction(layer: str, vector, cossim_pow: float = 0.0) -> Direction:
    """A direction in ``layer``'s channel space (e.g. the difference of two classes' mean activations).

    Example:
        >>> import torch
        >>> h = torch.tensor([[[[1.0]], [[2.0]]]])          # 1 image, 2 channels, 1x1
        >>> direction("conv1", [3.0, -1.0])({"conv1": h}).tolist()
        [1.0]
    """
    return Direction(layer, vector, cossim_pow)


def channel_l2(layer: str, index: Index) -> ChannelL2:
    """``||h_l,d(x)||_2`` for channel ``index`` of ``layer``."""
    return ChannelL2(layer, index)


def channel_mean(layer: str, index: Index) -> ChannelMean:
    """The mean activation of channel ``index`` of ``layer``."""
    return ChannelMean(layer, index)


def channel_relu(layer: str, index: Index, negative: bool = False) -> ChannelRelu:
    """The mean of ``max(0, h)`` (``negative``: of ``max(0, -h)``) over channel ``index`` of ``layer``."""
    return ChannelRelu(layer, index, negative)


def neuron(layer: str, index: Index, y: Optional[int] = None, x: Optional[int] = None) -> Neuron:
    """The centre spatial unit (or ``y``, ``x``) of channel ``index`` of ``layer``."""
    return Neuron(layer, index, y, x)


def class_logit(index: Index, layer: str = OUTPUT) -> ClassLogit:
    """Logit ``index`` of the model's output (the classic "magpie" image)."""
    return ClassLogit(index, layer)


def make_objective(kind: str, layer: Optional[str], index: Index) -> Objective:
    """A command-line objective name (``channel-l2``, ``channel-mean``, ``neuron``, ``class``) -> objective.

    Example:
        >>> make_objective("neuron", "conv1", [0, 1])
        neuron('conv1', [0,1])
    """
    kind = str(kind).lower().replace("_", "-")
    if kind == "channel-l2":
        return ChannelL2(_need_layer(layer, kind), index)
    if kind == "channel-mean":
        return ChannelMean(_need_layer(layer, kind), index)
    if kind == "channel-relu":
        return ChannelRelu(_need_layer(layer, kind), index)
    if kind == "neuron":
        return Neuron(_need_layer(layer, kind), index)
    if kind in ("class", "class-logit"):
        return ClassLogit(index, layer or OUTPUT)
    raise InputError(f"unknown objective {kind!r}; use one of {', '.join(OBJECTIVES)}")


def _need_layer(layer: Optional[str], kind: str) -> str:
    if not layer:
        raise InputError(f"objective {kind} needs a layer: pass -l LAYER")
    return layer


# ------------------------------------------------------------------ whole-layer objectives (the techniques')


def layer_tensor(outputs, layer: str) -> torch.Tensor:
    """The tensor a layer recorded in ``outputs`` (its first tensor when it returns several)."""
    value = outputs[layer]
    if not isinstance(value, torch.Tensor):
        value = first_output_tensor(value)
    return value


def _as_batch(target, layer: str) -> torch.Tensor:
    t = torch.as_tensor(target).detach().float()
    if t.ndim == 0:
        raise InputError(f"the target activation of layer {layer} must have a channel dimension")
    return t


class LayerL2(Objective):
    """``||h_l(x)||_2`` over every channel and position of a layer: DeepDream's objective.

    DeepDream's classic loss is ``1/2 ||h||^2`` (gradient ``h``); with the gradient normalised
    per step the two give the same steps, and the norm reads on the scale of ``channel_l2``.
    """

    def __init__(self, layer: str):
        self.layer = str(layer)
        self.layers = (self.layer,)

    def __call__(self, outputs):
        return layer_tensor(outputs, self.layer).flatten(1).norm(dim=1)

    def select(self, rows):
        return self

    def __repr__(self):
        return f"layer_l2({self.layer!r})"


def layer_l2(layer: str) -> LayerL2:
    """The L2 norm of a whole layer's output, one value per batch element (works with ``synthesize``).

    Example:
        >>> import torch
        >>> layer_l2("conv1")({"conv1": torch.ones(2, 3, 2, 2)}).tolist()   # sqrt(12)
        [3.464101552963257, 3.464101552963257]
    """
    return LayerL2(layer)


class ActivationMatch(Objective):
    """``(h . t) / ||t||^2 * max(cos(h, t), 0.1) ** cossim_pow`` over the whole activation tensor.

    ``target`` is one activation (``C x H x W``, or ``C``) every batch element is compared with,
    or one per batch element. The target itself scores 1; ``cossim_pow > 0`` rewards pointing the
    same way over magnitude (lucid's caricature uses 1).
    """

    def __init__(self, layer: str, target, cossim_pow: float = 1.0):
        self.layer = str(layer)
        self.layers = (self.layer,)
        self.target = _as_batch(target, self.layer)
        self.cossim_pow = float(cossim_pow)

    def __call__(self, outputs):
        a = layer_tensor(outputs, self.layer)
        t = self.target.to(device=a.device, dtype=a.dtype)
        if t.ndim == a.ndim - 1:
            t = t.unsqueeze(0)
        if tuple(t.shape[1:]) != tuple(a.shape[1:]):
            raise InputError(f"the target has shape {tuple(t.shape[1:])} but layer {self.layer} outputs "
                             f"{tuple(a.shape[1:])}; compare activations of images of the same size")
        a, t = a.flatten(1), t.flatten(1)
        dot = (a * t).sum(1)
        t2 = (t * t).sum(1)
        value = dot / t2.clamp_min(1e-12)
        if self.cossim_pow:
            cos = dot / (a.norm(dim=1) * t2.sqrt() + 1e-12)
            value = value * cos.clamp(min=0.1) ** self.cossim_pow
        return value

    def __repr__(self):
        return f"match_activations({self.layer!r}, <{'x'.join(map(str, self.target.shape))}>, cossim_pow={self.cossim_pow:g})"


def match_activations(layer: str, target, cossim_pow: float = 1.0) -> ActivationMatch:
    """How well ``layer``'s activation matches ``target`` position by position (lucid's caricature).

    Example:
        >>> import torch
        >>> t = torch.tensor([[[1.0]], [[2.0]]])                   # 2 channels, 1x1
        >>> match_activations("conv1", t)({"conv1": torch.stack([t, 2 * t, -t])}).tolist()
        [1.0, 2.0, -0.10000000149011612]
    """
    return ActivationMatch(layer, target, cossim_pow)


class LayerDistance(Objective):
    """``mean_p ||h(x)[:, p] - t[:, p]||_2``: the mean over positions of the distance between
    activation vectors (faccent's ``l2_compare``); the plain vector distance without positions."""

    def __init__(self, layer: str, target):
        self.layer = str(layer)
        self.layers = (self.layer,)
        self.target = _as_batch(target, self.layer)

    def __call__(self, outputs):
        a = layer_tensor(outputs, self.layer)
        t = self.target.to(device=a.device, dtype=a.dtype)
        if t.ndim == a.ndim - 1:
            t = t.unsqueeze(0)
        d = (a - t).pow(2).sum(1)
        d = d.clamp_min(1e-30).sqrt()  # no gradient (rather than NaN) where the distance is 0
        return d.flatten(1).mean(1) if d.ndim > 1 else d

    def __repr__(self):
        return f"layer_distance({self.layer!r}, <{'x'.join(map(str, self.target.shape))}>)"


def layer_distance(layer: str, target) -> LayerDistance:
    """The mean per-position distance between ``layer``'s activation and ``target``.

    Example:
        >>> import torch
        >>> t = torch.zeros(1, 2, 1, 2)                           # 2 channels, 1x2 positions
        >>> h = torch.tensor([[[[3.0, 0.0]], [[4.0, 0.0]]]])      # distances 5 and 0
        >>> layer_distance("conv1", t)({"conv1": h}).tolist()
        [2.5]
    """
    return LayerDistance(layer, target)
