"""Input gradients: captum's results against gradients computed here independently."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnvis
from cnnvis.core.errors import InputError
from cnnvis.attribution.gradients import METHODS, Unit, parse_unit, saliency
from cnnvis.model.hooks import count_hooks, record
from cnnvis.attribution.receptive import receptive_fields


def backward_hooks(model):
    return sum(len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def class_grad(lm, x, index):
    """d logit[index] / d x for x in [0, 1] (C x H x W), computed without captum."""
    x = x.clone().unsqueeze(0).requires_grad_(True)
    (g,) = torch.autograd.grad(lm.forward(x)[0, index], x)
    return g[0]


def unit_grad(lm, x, layer, channel, y=None, xx=None):
    x = x.clone().unsqueeze(0).requires_grad_(True)
    with record(lm, [layer], stop=True) as rec:
        rec.run(x)
    out = rec[layer][0, channel]
    (g,) = torch.autograd.grad(out.sum() if y is None else out[y, xx], x)
    return g[0]


@pytest.fixture(scope="module")
def lenet():
    return cnnvis.load_model("lenet-digits")


@pytest.fixture
def digit():
    torch.manual_seed(5)
    return torch.rand(1, 32, 32)


def test_saliency_is_absolute_gradient_of_the_class(lenet, digit):
    r = saliency(lenet, digit)  # default target: the predicted class
    with torch.no_grad():
        logits = lenet.forward(digit.unsqueeze(0))
    assert r.predicted == int(logits.argmax()) and r.target.index == r.predicted
    assert r.target.name == lenet.class_names[r.predicted] and r.predicted_name == r.target.name
    assert r.score == pytest.approx(float(logits[0, r.predicted]))
    g = class_grad(lenet, digit, r.predicted)
    assert torch.allclose(r.attribution, g.abs(), atol=1e-7)  # captum's convention: |gradient|
    signed = saliency(lenet, digit, target="3", abs=False)  # a class name (digits are named "0".."9")
    assert signed.target.index == 3 and torch.allclose(signed.attribution, class_grad(lenet, digit, 3), atol=1e-7)
    assert (signed.attribution < 0).any()


def test_unit_targets_are_the_derivative_of_the_filter_response(lenet, digit):
    r = saliency(lenet, digit, unit="conv2:5", abs=False)
    assert r.target == cnnvis.attribution.gradients.Target("unit", unit=Unit("conv2", 5))
    assert torch.allclose(r.attribution, unit_grad(lenet, digit, "conv2", 5), atol=1e-6)
    with torch.no_grad():
        conv2 = lenet.model.conv2(lenet.model.pool1(lenet.model.relu1(lenet.model.conv1(digit.unsqueeze(0)))))
    assert r.score == pytest.approx(float(conv2[0, 5].sum()), rel=1e-5)
    one = saliency(lenet, digit, unit="conv2:5:3:6", abs=False)
    g = unit_grad(lenet, digit, "conv2", 5, 3, 6)
    assert torch.allclose(one.attribution, g, atol=1e-7)
    # one spatial unit sees only its receptive field: conv2 has size 14, jump 2, start 6.5, so unit (3, 6)
    # is centred at (12.5, 18.5) and sees rows 6..19, columns 12..25
    rf = {f.name: f for f in receptive_fields(lenet, ["conv2"])}["conv2"]
    top, left, bottom, right = rf.region(3, 6)
    assert (top, left, bottom, right) == (6, 12, 19, 25)
    outside = one.attribution[0].clone()
    outside[top:bottom + 1, left:right + 1] = 0
    assert float(outside.abs().max()) == 0.0 and float(one.attribution.abs().max()) > 0


def test_input_x_gradient_and_integrated_gradients(lenet, digit):
    g = class_grad(lenet, digit, 7)
    ixg = saliency(lenet, digit, target=7, method="input-x-gradient")
    assert torch.allclose(ixg.attribution, digit * g, atol=1e-7)
    # completeness: attributions add up to f(x) - f(baseline)
    for baseline, value in (("black", 0.0), ("white", 1.0), (0.5, 0.5)):
        ig = saliency(lenet, digit, target=7, method="integrated-gradients", steps=128, baseline=baseline, batch_size=128)
        with torch.no_grad():
            delta = lenet.forward(digit.unsqueeze(0))[0, 7] - lenet.forward(torch.full((1, 1, 32, 32), value))[0, 7]
        assert float(ig.attribution.sum()) == pytest.approx(float(delta), rel=2e-2, abs=2e-3)
        assert ig.params == {"steps": 128, "baseline": baseline}


def test_smoothgrad_noise_seed_and_global_rng(lenet, digit):
    plain = saliency(lenet, digit, target=2)
    noiseless = saliency(lenet, digit, target=2, method="smoothgrad", samples=3, noise=0.0)
    assert torch.allclose(noiseless.attribution, plain.attribution, atol=1e-7)
    state = torch.get_rng_state()
    a = saliency(lenet, digit, target=2, method="smoothgrad", samples=6, noise=0.2, seed=1)
    b = saliency(lenet, digit, target=2, method="smoothgrad", samples=6, noise=0.2, seed=1, batch_size=4)
    c = saliency(lenet, digit, target=2, method="smoothgrad", samples=6, noise=0.2, seed=2)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone
    assert torch.allclose(a.attribution, b.attribution, atol=1e-6) and not torch.allclose(a.attribution, c.attribution)
    # the mean of |gradient| at noisy copies: independent of the sample order, bounded by their extremes
    assert a.params == {"samples": 6, "noise": 0.2, "abs": True, "seed": 1}


class TwoLayer(nn.Module):
    """x (3x2x2) -> Linear(12, 4) -> ReLU module -> Linear(4, 2): guided backprop by hand."""

    def __init__(self, functional=False):
        super().__init__()
        self.fc1 = nn.Linear(12, 4)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(4, 2)
        self.functional = functional

    def forward(self, x):
        z = self.fc1(x.flatten(1))
        return self.fc2(F.relu(z) if self.functional else self.relu(z))


def test_guided_backprop_by_hand():
    torch.manual_seed(0)
    net = TwoLayer()
    x = torch.rand(3, 2, 2)
    r = saliency(net, x, target=1, method="guided-backprop")
    z = net.fc1(x.flatten().unsqueeze(0))[0]
    w2 = net.fc2.weight[1]
    expected = net.fc1.weight.t() @ torch.relu(w2 * (z > 0))  # ReLU passes positive gradients of active units
    assert (z > 0).any() and (w2 < 0).any()
    assert torch.allclose(r.attribution.flatten(), expected.detach(), atol=1e-6)
    assert count_hooks(net) == 0 and backward_hooks(net) == 0


class _GuidedReLU(torch.autograd.Function):
    """Guided backprop's ReLU, written out: forward max(x, 0), backward max(g, 0) where x > 0."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.clamp(min=0) * (x > 0)


class _Guided(torch.overrides.TorchFunctionMode):
    """Replace every functional ReLU by :class:`_GuidedReLU` (an independent guided backprop)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.relu, torch.relu, torch.Tensor.relu):
            return _GuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


def guided_grad(lm, x, layer, channel, *pos):
    x = x.clone().unsqueeze(0).requires_grad_(True)
    with _Guided(), record(lm, [layer], stop=True) as rec:
        rec.run(x)
        out = rec[layer][0, channel]
        value = out[pos[0], pos[1]] if pos else out.sum()
        (g,) = torch.autograd.grad(value, x)
    return g[0]


def test_guided_backprop_reaches_functional_relus():
    torch.manual_seed(0)
    functional, modular = TwoLayer(functional=True), TwoLayer()
    modular.load_state_dict(functional.state_dict())
    x = torch.rand(3, 2, 2)
    a = saliency(functional, x, target=1, method="guided-backprop")
    b = saliency(modular, x, target=1, method="guided-backprop")
    plain = saliency(modular, x, target=1, method="saliency", abs=False)
    assert torch.allclose(a.attribution, b.attribution, atol=1e-7)
    assert not torch.allclose(a.attribution, plain.attribution, atol=1e-6)
    assert count_hooks(functional) == 0 and backward_hooks(functional) == 0


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        z = x.flatten(1) - 0.5
        z.relu_()
        return self.fc(z)


def test_guided_backprop_refuses_what_it_cannot_reach():
    with pytest.raises(InputError) as err:
        saliency(InPlace(), torch.rand(3, 2, 2), method="guided-backprop")
    assert "applies ReLU in place 1 time(s) as a function call (relu_)" in str(err.value)
    assert "use saliency, smoothgrad" in str(err.value)
    no_relu = nn.Sequential(nn.Conv2d(3, 2, 3), nn.SiLU(), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(InputError, match="has no ReLU at all"):
        saliency(no_relu, torch.rand(3, 4, 4), method="guided-backprop")


def test_out_of_range_targets_name_the_range(lenet, digit):
    cases = [
        (dict(target=10), "class 10 is out of range: lenet-digits has 10 classes (0..9)"),
        (dict(target=-1), "class -1 is out of range: lenet-digits has 10 classes (0..9)"),
        (dict(unit="conv2:16"), "channel 16 is out of range: layer conv2 of lenet-digits has 16 channels (0..15)"),
        (dict(unit="conv1:0:28:0"), "position (28, 0) is out of range: layer conv1 of lenet-digits is 28x28 "
                                    "(y 0..27, x 0..27)"),
        (dict(unit="fc1:0:1:1"), "layer fc1 has no spatial output"),
        (dict(unit="conv*:1"), "must be one exact layer name"),
        (dict(unit="conv1"), "must look like LAYER:CHANNEL or LAYER:CHANNEL:Y:X"),
        (dict(target=1, unit="conv1:0"), "not both"),
        (dict(method="gradcam"), "unknown method 'gradcam'"),
        (dict(method="integrated-gradients", baseline="grey"), "baseline 'grey' must be black, white, mean"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError) as err:
            saliency(lenet, digit, **kwargs)
        assert message in str(err.value), (kwargs, str(err.value))
    with pytest.raises(cnnvis.UnknownLayerError, match=r"unknown layer 'conv3' in lenet-digits"):
        saliency(lenet, digit, unit="conv3:0")
    assert saliency(lenet, digit, unit="fc1:7").attribution.shape == (1, 32, 32)  # a Linear unit works without Y:X
    assert parse_unit("features.28:5:1:2") == Unit("features.28", 5, 1, 2)


def test_model_comes_back_unchanged_also_on_error(user_module):
    net = user_module.make_net().train()
    net.conv1.weight.requires_grad_(False)
    for method in METHODS:
        r = saliency(net, torch.rand(3, 12, 12), unit="conv2:1", method=method, samples=2, steps=4)
        assert r.attribution.shape == (3, 12, 12)
    assert net.training and net.act.training and not net.conv1.weight.requires_grad and net.conv2.weight.requires_grad
    assert count_hooks(net) == 0 and backward_hooks(net) == 0
    broken = user_module.Broken().train()
    for method in ("saliency", "guided-backprop"):
        with pytest.raises(cnnvis.ModelError, match="forward exploded"):
            saliency(broken, torch.rand(3, 8, 8), method=method)
        assert broken.training and count_hooks(broken) == 0 and backward_hooks(broken) == 0
        assert all(p.requires_grad for p in broken.parameters())
    with pytest.raises(InputError):
        saliency(net, torch.rand(3, 12, 12), unit="conv2:99", method="guided-backprop")
    assert count_hooks(net) == 0 and net.training


@pytest.fixture(scope="module")
def zoo_models():
    torch.manual_seed(0)  # the random weights do not depend on which tests ran before
    return {
        "lenet-digits": cnnvis.load_model("lenet-digits"),
        "resnet18": cnnvis.load_model("resnet18", "none", size=64),
        "googlenet": cnnvis.load_model("googlenet", "none", size=64),
    }


@pytest.mark.parametrize("name, unit", [("lenet-digits", "conv2:4"), ("resnet18", "layer2.0.conv1:3:2:2"),
                                        ("googlenet", "inception3a:10"), ("usernets:make_net", "conv2:1:2:2")])
def test_every_method_on_zoo_torchvision_and_user_models(name, unit, zoo_models, user_module):
    lm = zoo_models.get(name) or cnnvis.load_model(name, size=16)
    torch.manual_seed(1)
    x = torch.rand(lm.preprocessing.channels, *lm.preprocessing.input_size())
    g = unit_grad(lm, x, unit.split(":")[0], *map(int, unit.split(":")[1:]))
    assert float(g.abs().max()) > 0
    expected = {
        "saliency": g.abs(),
        "smoothgrad": g.abs(),  # noise 0: every copy is the image itself
        "input-x-gradient": x * g,
    }
    for method in METHODS:
        # integrated gradients' completeness holds as its Riemann sum converges: 64 steps keep it within 10%
        kwargs = dict(unit=unit, method=method, samples=2, noise=0.0, steps=64 if method == "integrated-gradients" else 16)
        r = saliency(lm, x, **kwargs)
        assert r.attribution.shape == x.shape and torch.isfinite(r.attribution).all()
        if method in expected:
            assert torch.allclose(r.attribution, expected[method], rtol=1e-4, atol=1e-6 * float(g.abs().max())), method
        if method == "integrated-gradients":
            with torch.no_grad(), record(lm, [unit.split(":")[0]]) as rec:
                rec.run(torch.stack([x, torch.zeros_like(x)]))
            c, *pos = map(int, unit.split(":")[1:])
            out = rec[unit.split(":")[0]][:, c]
            values = out[:, pos[0], pos[1]] if pos else out.flatten(1).sum(1)
            assert float(r.attribution.sum()) == pytest.approx(float(values[0] - values[1]), rel=0.1, abs=1e-3)
        if method == "guided-backprop":  # differs from the plain gradient where ReLUs block negative gradients
            assert not torch.allclose(r.attribution, g, atol=1e-7)
            if name == "googlenet":  # every ReLU is functional: routed, and equal to guided backprop by hand
                layer, *idx = unit.split(":")
                expected_guided = guided_grad(lm, x, layer, *map(int, idx))
                assert torch.allclose(r.attribution, expected_guided, rtol=1e-4,
                                      atol=1e-6 * float(expected_guided.abs().max()))
    assert count_hooks(lm.model) == 0 and backward_hooks(lm.model) == 0
    # the class target too: saliency equals |d logit / d x|
    r = saliency(lm, x, method="saliency")
    assert torch.allclose(r.attribution, class_grad(lm, x, r.target.index).abs(), rtol=1e-4, atol=1e-12)


def test_heatmap_overlay_and_save(lenet, digit, tmp_path):
    import json

    import numpy as np

    r = saliency(lenet, digit, target=4)
    heat = r.heatmap()
    assert heat.shape == (32, 32) and float(heat.max()) == 1.0 and float(heat.min()) >= 0
    over = r.overlay()
    assert over.shape == (3, 32, 32)
    cold = heat == 0
    if cold.any():  # where the map is zero the overlay is the image
        assert torch.allclose(over[:, cold], digit.expand(3, -1, -1)[:, cold])
    paths = cnnvis.attribution.gradients.save_saliency(r, tmp_path, "digit", {"model": "lenet-digits"})
    assert np.array_equal(np.load(paths["npy"]), r.attribution.numpy())
    doc = json.loads(open(paths["json"]).read())
    assert doc["model"] == "lenet-digits" and doc["method"] == "saliency" and doc["params"] == {"abs": True}
    assert doc["target"] == {"kind": "class", "index": 4, "name": "4"}
    assert doc["files"]["overlay"] == "digit.saliency.class-4.overlay.png"
