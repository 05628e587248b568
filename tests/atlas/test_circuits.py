"""Strongest inputs: rankings equal the sorted weight norms, also through depthwise/pointwise pairs."""

import pytest
import torch
from torch import nn

import cnnvis
from cnnvis.atlas.circuits import strongest_inputs


class HandSet(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 2, 3, padding=1)
        with torch.no_grad():
            w = torch.zeros(2, 4, 3, 3)
            w[0, 0, 0, 0], w[0, 0, 1, 1] = 3.0, -0.5  # channel 0: strong positive, small negative
            w[0, 1] = -1.0  # channel 1: all negative, norm 3
            w[0, 2, 2, 2] = 2.0
            w[0, 3, 0, 1], w[0, 3, 2, 1] = 1.0, -4.0
            self.second.weight.copy_(w)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def test_ranking_equals_the_sorted_weight_norms():
    s = strongest_inputs(cnnvis.load_model(HandSet(), size=8), "second", 0, k=4)
    assert s.source == "first" and s.through is None
    assert [(l.channel, round(l.strength, 4)) for l in s.excitatory] == [(0, 3.0), (2, 2.0), (3, 1.0)]
    assert [(l.channel, round(l.strength, 4)) for l in s.inhibitory] == [(3, 4.0), (1, 3.0), (0, 0.5)]


def test_the_first_layer_listens_to_colour_channels():
    lm = cnnvis.load_model(HandSet(), size=8)
    s = strongest_inputs(lm, "first", 1, k=3)
    assert s.source is None
    expected = lm.model.first.weight[1].detach().flatten(1).clamp(min=0).norm(dim=1).sort(descending=True)
    assert [l.channel for l in s.excitatory] == [int(i) for v, i in zip(*expected) if v > 0]


class Inverted(nn.Module):
    """A pointwise expansion, a batch norm, a depthwise convolution (the MobileNet/EfficientNet block)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.expand = nn.Conv2d(5, 6, 1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.depthwise = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        with torch.no_grad():
            self.bn.running_var.copy_(torch.linspace(0.5, 2.0, 6))
            self.bn.weight.copy_(torch.linspace(-1.0, 2.0, 6))

    def forward(self, x):
        return self.depthwise(torch.relu(self.bn(self.expand(self.stem(x)))))


def test_a_depthwise_unit_is_looked_at_through_its_expansion():
    lm = cnnvis.load_model(Inverted(), size=8)
    m = lm.model
    u = 4
    s = strongest_inputs(lm, "depthwise", u, k=5)
    assert s.source == "stem" and s.through == "expand"
    scale = m.bn.weight[u] / torch.sqrt(m.bn.running_var[u] + m.bn.eps)
    effective = (m.expand.weight[u, :, 0, 0].view(-1, 1, 1) * scale * m.depthwise.weight[u, 0]).detach().flatten(1)
    pos, neg = effective.clamp(min=0).norm(dim=1), (-effective).clamp(min=0).norm(dim=1)
    assert [l.channel for l in s.excitatory] == [int(i) for i in pos.argsort(descending=True) if pos[i] > 0]
    assert [l.strength for l in s.inhibitory] == pytest.approx(sorted([float(v) for v in neg if v > 0], reverse=True))
