"""The cached probe pass: shapes of every layer, the model's output, one message for a failing forward."""

import pytest
import torch
from torch import nn

import cnnvis
from cnnvis.synthesis.objectives import OUTPUT
from cnnvis.model.probing import probe, select_output


class Twice(nn.Module):
    """A module used twice and a classifier that only fits 8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 8 * 8, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        x = self.conv(self.conv(x))
        return self.head(x.flatten(1))


def test_shapes_calls_order_output_and_cache():
    net = Twice()
    lm = cnnvis.load_model(net, size=8)
    p = probe(lm)
    assert p.shapes == {"conv": (3, 8, 8), "head": (4,)} and p.calls == {"conv": 2, "head": 1}
    assert [name for name, _ in p.order] == ["conv", "conv#1", "head"]
    assert p.output == (4,) and p.shape(OUTPUT) == (4,) and p.output_from == "tensor"
    assert probe(lm) is p and probe(net, 8) is p and net.calls == 1  # cached per module and size
    assert probe(lm, 10) is not p and net.calls == 2


def test_a_pass_that_fails_after_a_layer_still_knows_that_layer():
    lm = cnnvis.load_model(Twice(), size=12)  # the head needs 8x8
    p = probe(lm)
    assert p.shape("conv") == (3, 12, 12)
    with pytest.raises(cnnvis.ModelError, match=r"forward pass of Twice failed on a 1x3x12x12 input .*--size"):
        p.shape(OUTPUT)
    with pytest.raises(cnnvis.ModelError):
        cnnvis.list_layers(lm)


class Exits(nn.Module):
    def __init__(self, exc):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.exc = exc

    def forward(self, x):
        raise self.exc


@pytest.mark.parametrize("exc, words", [(SystemExit(0), "SystemExit"), (RecursionError("deep"), "recurses"),
                                        (ValueError("odd"), "ValueError: odd")])
def test_any_failure_of_the_forward_pass_is_one_model_error(exc, words):
    p = probe(cnnvis.load_model(Exits(exc), size=8))
    with pytest.raises(cnnvis.ModelError, match=words) as info:
        p.check()
    assert "--size" not in str(info.value)


def test_output_forms():
    t = torch.ones(1, 3)
    assert select_output(t)[1] == "tensor"
    assert select_output((None, t, torch.zeros(1)))[0] is t
    assert select_output({"out": t, "aux": torch.zeros(1)}) == (t, "['out']")
    assert select_output({"logits": t})[1] == "['logits']"
    with pytest.raises(cnnvis.ModelError, match="keys 'a', 'b'"):
        select_output({"a": t, "b": t}, "net")
    with pytest.raises(cnnvis.ModelError, match="not a tensor"):
        select_output("text", "net")


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        h = self.conv(x)
        return {"a": h.mean((2, 3)), "b": h.amax((2, 3))}


def test_an_unusable_output_stops_only_what_needs_the_output():
    lm = cnnvis.load_model(_TwoHeads(), size=8)
    assert [row.output_shape for row in cnnvis.list_layers(lm)] == [(2, 6, 6)]  # layers do not need the output
    with pytest.raises(cnnvis.ModelError, match="keys 'a', 'b'"):
        probe(lm).shape(OUTPUT)
