import numpy as np
import pytest
import torch
from torch import nn

import cnnvis
from cnnvis.model.hooks import count_hooks, frozen, preserved, record


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


# ------------------------------------------------- the user's model comes back as given


class _Aliased(nn.Module):
    """A small CNN whose first kernel is a numpy array (shared memory) and whose second is a view of
    another tensor: storage that a careless ``.to(memory_format=…)`` or ``.data =`` would replace."""

    def __init__(self, array, backing: torch.Tensor):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1.weight = nn.Parameter(torch.from_numpy(array))
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv2.weight = nn.Parameter(backing[: 6 * 4 * 9].view(6, 4, 3, 3))
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        return self.head(self.bn(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


@pytest.fixture
def aliased(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    array = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    backing = torch.randn(6 * 4 * 9 + 7) * 0.3
    net = _Aliased(array, backing)
    net.train()  # the user's mode: every call must give it back
    net.head.weight.requires_grad_(False)
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    return net, array, backing, str(tmp_path / "a.png")


def _state(net):
    return {
        "ptrs": {n: p.data_ptr() for n, p in net.named_parameters()},
        "ids": {n: id(p) for n, p in net.named_parameters()},
        "buffers": {n: b.data_ptr() for n, b in net.named_buffers()},
        "grads": {n: p.requires_grad for n, p in net.named_parameters()},
        "modes": {n: m.training for n, m in net.named_modules()},
        "strides": {n: p.stride() for n, p in net.named_parameters()},
    }


def _calls(image, out):
    return {
        "maximize": lambda m: cnnvis.maximize(m, "conv2", "0-1", steps=1, size=16),
        "maximize-robust": lambda m: cnnvis.maximize(m, "conv2", "0", steps=1, size=16, preset="robust"),
        "saliency": lambda m: cnnvis.saliency(m, image, method="smoothgrad", samples=2),
        "guided": lambda m: cnnvis.saliency(m, image, unit="conv2:1", method="guided-backprop"),
        "stats": lambda m: cnnvis.compute_stats(m, [image], ["conv1", "bn"]),
        "gallery": lambda m: cnnvis.build_gallery(m, out, layers=["conv1"], filters=2, steps=1, size=16,
                                                  images=[image], preset="plain"),
        "run_maximize": lambda m: cnnvis.run_maximize(m, ["conv2"], "0", out_dir=out + "-m", steps=1, size=16),
        "receptive": lambda m: cnnvis.receptive_fields(m, size=16, effective=True, samples=1),
        "activations": lambda m: cnnvis.compute_activations(m, image, ["bn"]),
    }


@pytest.mark.parametrize("call", list(_calls("", "")))
@pytest.mark.parametrize("form", ["module", "loaded"])
def test_the_model_comes_back_with_its_own_storage(aliased, tmp_path, call, form):
    net, array, backing, image = aliased
    before = _state(net)
    model = net if form == "module" else cnnvis.load_model(net)
    _calls(image, str(tmp_path / "out"))[call](model)
    assert _state(net) == before
    # still the very same memory: writing through the numpy array and the backing tensor shows in the model
    array[0, 0, 0, 0] = 7.0
    backing[0] = -7.0
    assert float(net.conv1.weight.detach()[0, 0, 0, 0]) == 7.0 and float(net.conv2.weight.detach()[0, 0, 0, 0]) == -7.0
    assert count_hooks(net) == 0


def test_forms_of_the_model_for_hooks():
    lm = cnnvis.load_model("lenet-digits")
    x = torch.rand(1, 1, 32, 32)
    for form in ("lenet-digits", lm, lm.model):
        with torch.no_grad(), record(form, ["conv1"], stop=True) as rec:
            rec.run(x)
        assert torch.allclose(rec["conv1"], lm.model.conv1(x), atol=1e-6)
    lm.model.train()
    with frozen(lm) as module:
        assert module is lm.model and not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert lm.model.training and all(p.requires_grad for p in lm.model.parameters())
    with preserved(lm) as module:
        module.eval()
    assert lm.model.training
    with frozen("lenet-digits") as module:  # a spec loads a model of its own
        assert isinstance(module, nn.Module) and module is not lm.model
    assert count_hooks(lm) == 0 and count_hooks("lenet-digits") == 0
