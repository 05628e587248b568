"""Strongest inputs: which channels of the previous layer a unit listens to most (the Circuits view).

For a unit ``u`` of a convolution ``L``, the previous layer is the convolution that produced
``L``'s input: in forward order, the last convolution before ``L`` with as many output channels
as ``L`` takes in. The weight from that layer's channel ``c`` to ``u`` is the kernel slice
``W_L[u, c]`` (``k x k``); its excitatory and inhibitory strengths are the L2 norms of its
positive and of its negative part, ranked separately.

A depthwise convolution (one input channel per unit) sees only channel ``u`` of the layer
before it, which is the expansion (usually 1x1) that widened the previous block's output.
Strongest inputs then look through the pair: from the expansion's input channel ``c`` the
weight is ``W_P[u, c] * s_u * W_L[u]`` (``s_u`` the batch norm's scale of channel ``u`` between
them, 1 without one), and the previous layer is the convolution before the expansion. The first
convolution of a network listens to the image: its inputs are colour channels.

Example:
    >>> import cnnvis
    >>> s = strongest_inputs(cnnvis.load_model("lenet-digits"), "conv2", 0, k=3)
    >>> s.source, len(s.excitatory), s.excitatory[0].strength >= s.excitatory[1].strength
    ('conv1', 3, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from cnnvis.core.errors import InputError
from cnnvis.model.loading import load_model
from cnnvis.model.probing import normalised_output, probe

#: Strongest inputs kept per unit on each side (excitatory, inhibitory).
TOP_K = 4


@dataclass(frozen=True)
class Link:
    """One input channel of the source layer and the strength of its weight into the unit."""

    channel: int
    strength: float


@dataclass(frozen=True)
class StrongestInputs:
    """A unit's strongest inputs: ``source`` is the layer they are channels of (``None``: the image's
    colour channels); ``through`` names the 1x1 expansion a depthwise unit was looked through."""

    layer: str
    unit: int
    source: Optional[str]
    excitatory: Tuple[Link, ...]
    inhibitory: Tuple[Link, ...]
    through: Optional[str] = None


def _convs_in_order(lm, size=None) -> List[Tuple[str, nn.Conv2d]]:
    modules = dict(lm.model.named_modules())
    out = []
    for name, _shape in probe(lm, size).check().order:
        if "#" not in name and isinstance(modules.get(name), nn.Conv2d):
            out.append((name, modules[name]))
    return out


def _previous(convs: List[Tuple[str, nn.Conv2d]], index: int, channels: int) -> Optional[Tuple[str, nn.Conv2d]]:
    for name, conv in reversed(convs[:index]):
        if conv.out_channels == channels:
            return name, conv
    return None


def _bn_scale(lm, conv_name: str, channels: int, size=None) -> torch.Tensor:
    """The per-channel scale ``gamma / sqrt(var + eps)`` of the batch norm right after a convolution (1 if none)."""
    bn = dict(lm.model.named_modules()).get(normalised_output(probe(lm, size), conv_name))
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_var is not None:
        weight = bn.weight.detach() if bn.weight is not None else torch.ones(channels)
        return weight / torch.sqrt(bn.running_var.detach() + bn.eps)
    return torch.ones(channels)


def strongest_inputs(model, layer: str, unit: int, *, k: int = TOP_K, size=None) -> StrongestInputs:
    """The ``k`` channels of the previous layer with the largest positive and negative weight into ``unit``."""
    lm = load_model(model)
    convs = _convs_in_order(lm, size)
    names = [n for n, _ in convs]
    if layer not in names:
        raise InputError(f"layer {layer!r} is not a convolution that runs in {lm.name}; strongest inputs "
                         f"are weights of convolutions")
    i = names.index(layer)
    conv = convs[i][1]
    w = conv.weight.detach().float().cpu()  # out x in/groups x kh x kw
    if not 0 <= unit < w.shape[0]:
        raise InputError(f"filter {unit} is out of range: layer {layer} has {w.shape[0]} channels (0..{w.shape[0] - 1})")
    through = None
    if conv.groups > 1 and conv.groups == conv.in_channels:  # depthwise: look through the expansion
        expansion = _previous(convs, i, conv.in_channels)
        per_group = conv.out_channels // conv.groups
        g = unit // per_group
        if expansion is not None:
            through, pw = expansion
            p = pw.weight.detach().float().cpu()  # in_channels(of L) x c x kh x kw
            scale = float(_bn_scale(lm, through, p.shape[0], size)[g])
            slices = p[g] * scale  # c x kh' x kw'
            if slices.shape[-2:] == (1, 1):
                weights = slices[:, 0, 0].view(-1, 1, 1) * w[unit, 0]  # c x kh x kw
            else:  # a wider expansion: weigh each input by its kernel's L2 norm (signed sum)
                weights = slices.flatten(1).sum(1).view(-1, 1, 1) * w[unit, 0]
            source = _previous(convs, names.index(through), pw.in_channels)
            return _rank(layer, unit, source[0] if source else None, weights, k, through)
    groups = conv.groups
    per_group_in = w.shape[1]
    first = (unit // (conv.out_channels // groups)) * per_group_in
    weights = torch.zeros(conv.in_channels, *w.shape[2:])
    weights[first : first + per_group_in] = w[unit]
    source = _previous(convs, i, conv.in_channels)
    return _rank(layer, unit, source[0] if source else None, weights, k, through)


def _rank(layer, unit, source, weights: torch.Tensor, k: int, through) -> StrongestInputs:
    flat = weights.flatten(1)
    positive = flat.clamp(min=0).norm(dim=1)
    negative = (-flat).clamp(min=0).norm(dim=1)

    def top(strength):
        kk = min(k, len(strength))
        values, index = strength.topk(kk)
        return tuple(Link(int(c), float(v)) for v, c in zip(values, index) if v > 0)

    return StrongestInputs(layer, int(unit), source, top(positive), top(negative), through)
