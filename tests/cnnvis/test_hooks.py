import pytest
import torch
from torch import nn

import cnnvis
from cnnvis.hooks import count_hooks, frozen, preserved, record


class Counting(nn.Module):
    """Identity that counts how often it runs."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * 1.0


def _chain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), Counting(), nn.Conv2d(4, 2, 3), Counting())


def test_outputs_equal_hand_run_prefix():
    lm = cnnvis.load_model("lenet-digits")
    m = lm.model
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad(), record(lm, ["conv1", "conv2", "fc1"]) as rec:
        out = rec.run(x)
        expected_conv2 = m.conv2(m.pool1(m.relu1(m.conv1(x))))
        assert torch.allclose(rec["conv2"], expected_conv2, atol=1e-6)
        assert torch.allclose(rec["conv1"], m.conv1(x), atol=1e-6)
        assert torch.allclose(out, m(x))
    assert count_hooks(m) == 0


def test_clone_protects_against_inplace_relu():
    net = _chain()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), record(net, ["0"]) as rec:
        net(x)  # plain calls inside the context are recorded too
    expected = net[0](x)
    assert (expected < 0).any()  # the in-place ReLU would have zeroed these
    assert torch.equal(rec["0"], expected)


def test_early_stop_skips_later_layers():
    net = _chain()
    x = torch.rand(1, 3, 8, 8)
    with record(net, ["1"], stop=True) as rec:
        assert rec.run(x) is None and rec.stopped
    assert net[2].calls == 0 and net[4].calls == 0
    with record(net, ["1"], stop=False) as rec:
        assert rec.run(x) is not None and not rec.stopped
    assert net[2].calls == 1 and net[4].calls == 1
    # stop waits for every requested layer
    with record(net, ["3", "0"], stop=True) as rec:
        rec.run(x)
    assert net[2].calls == 2 and net[4].calls == 1
    assert set(rec.outputs) == {"0", "3"}
    # a plain model(x) inside the context is never cut short
    with record(net, ["0"], stop=True):
        net(x)
    assert net[4].calls == 2


def test_outputs_keep_the_graph_for_input_gradients():
    net = _chain()
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    with record(net, ["3"], stop=True) as rec:
        rec.run(x)
        rec["3"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        a = self.act(self.conv(x))
        return self.act(a - 0.5)


def test_module_called_twice_gets_stable_names():
    net = Twice()
    x = torch.rand(1, 1, 4, 4)
    for _ in range(2):  # names are the same on every pass
        with torch.no_grad(), record(net, ["act"]) as rec:
            out = rec.run(x)
        assert set(rec.outputs) == {"act", "act#1"}
        first = torch.relu(net.conv(x))
        assert torch.allclose(rec["act"], first)
        assert torch.allclose(rec["act#1"], out)
        assert len(rec.calls["act"]) == 2


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_no_hooks_left_after_exception(exc):
    net = _chain()
    with pytest.raises(type(exc)):
        with record(net, ["0", "3"], stop=True) as rec:
            rec.run(torch.rand(1, 3, 8, 8))
            assert count_hooks(net) == 2
            raise exc
    assert count_hooks(net) == 0


def test_no_hooks_left_after_failing_forward():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Linear(5, 5))
    with pytest.raises(RuntimeError):
        with record(net, ["0"]) as rec:
            rec.run(torch.rand(1, 3, 8, 8))
    assert count_hooks(net) == 0


def test_unknown_layer_raises_before_any_hook():
    net = _chain()
    with pytest.raises(cnnvis.UnknownLayerError):
        with record(net, ["0", "9"]):
            pass
    assert count_hooks(net) == 0


def test_preserved_and_frozen_restore_state_even_on_error():
    net = _chain()
    net.train()
    net[3].weight.requires_grad_(False)
    before = [(p.requires_grad) for p in net.parameters()]
    with pytest.raises(ValueError):
        with frozen(net):
            assert not net.training and not any(p.requires_grad for p in net.parameters())
            raise ValueError()
    assert net.training and [p.requires_grad for p in net.parameters()] == before
    with preserved(net):
        net.eval()
        net[0].weight.requires_grad_(False)
    assert net.training and [p.requires_grad for p in net.parameters()] == before


def test_loaded_model_run_normalizes():
    lm = cnnvis.load_model("efficientnet-lite0", "none")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad(), record(lm, ["conv_stem"], stop=True) as rec:
        rec.run(x)
        assert torch.allclose(rec["conv_stem"], lm.model.conv_stem((x - 0.5) / 0.5), atol=1e-6)
