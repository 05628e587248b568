"""Receptive fields: the arithmetic against hand-computed and textbook values, and against gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnvis
from cnnvis.core.errors import InputError
from cnnvis.model.hooks import count_hooks, record
from cnnvis.attribution.receptive import (
    ReceptiveField,
    effective_receptive_fields,
    mass_radius,
    measure_effective,
    receptive_fields,
)


def by_name(rows):
    return {r.name: r for r in rows}


def test_vgg16_textbook_sizes():
    lm = cnnvis.load_model("vgg16", "none")
    names = ["features.0", "features.5", "features.10", "features.17", "features.24", "features.28"]
    rows = receptive_fields(lm, names)
    assert [r.name for r in rows] == names
    assert [r.size for r in rows] == [(s, s) for s in (3, 10, 24, 60, 132, 196)]  # conv1_1 … conv5_3
    assert [r.jump for r in rows] == [(j, j) for j in (1, 2, 4, 8, 16, 16)]
    assert [r.to_dict()["size"] for r in rows] == [3, 10, 24, 60, 132, 196]
    assert count_hooks(lm.model) == 0


class Hand(nn.Module):
    """Stride, padding, dilation, a residual add, a concat with a functional pool, ceil_mode, a
    non-square kernel, asymmetric padding, then a global head. Expected values in the test."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(2, 2, 3, padding=2, dilation=2)
        self.b = nn.Conv2d(2, 2, 1)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.c3 = nn.Conv2d(4, 2, (3, 1))
        self.pad = nn.ZeroPad2d((1, 0, 2, 0))  # left, right, top, bottom
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        s = self.c2(a) + self.b(a)
        s = torch.cat([s, F.avg_pool2d(s, 3, 1, 1)], 1)
        y = self.pad(self.c3(self.pool(s)))
        return self.fc(self.gap(y).flatten(1))


def test_hand_computed_small_network():
    # (size, jump, start) per axis; pixel i has its centre at i.
    # c1  k3 s2 p1:        size 1 + 2*1 = 3,  jump 2, start 0 + (1 - 1)*1 = 0
    # c2  k3 d2 p2 (k'=5): size 3 + 4*2 = 11, jump 2, start 0 + (2 - 2)*2 = 0
    # b   k1:              size 3;  c2 + b -> union of [-5, 5] and [-1, 1] = 11
    # avg_pool k3 s1 p1:   size 11 + 2*2 = 15; cat -> union = 15, jump 2, start 0
    # pool k2 s2 ceil:     size 15 + 1*2 = 17, jump 4, start 0 + 0.5*2 = 1
    # c3 k(3,1):           h 17 + 2*4 = 25, start 1 + 1*4 = 5;  w 17, start 1
    # pad top 2, left 1:   start h 5 - 2*4 = -3, w 1 - 1*4 = -3
    torch.manual_seed(0)
    rows = by_name(receptive_fields(cnnvis.load_model(Hand(), size=32)))
    assert (rows["c1"].size, rows["c1"].jump, rows["c1"].start) == ((3, 3), (2, 2), (0, 0))
    assert (rows["c2"].size, rows["c2"].jump, rows["c2"].start) == ((11, 11), (2, 2), (0, 0))
    assert rows["b"].size == (3, 3)
    assert (rows["pool"].size, rows["pool"].jump, rows["pool"].start) == ((17, 17), (4, 4), (1, 1))
    assert (rows["c3"].size, rows["c3"].jump, rows["c3"].start) == ((25, 17), (4, 4), (5, 1))
    assert (rows["pad"].size, rows["pad"].start) == ((25, 17), (-3, -3))
    assert rows["c3"].to_dict()["size"] == [25, 17] and rows["pool"].to_dict()["start"] == 1
    for name in ("gap", "fc"):
        assert rows[name].is_global and rows[name].size == (32, 32) and rows[name].jump is None
    assert rows["fc"].to_dict()["global"] is True and rows["fc"].to_dict()["jump"] is None
    assert rows["pool"].output_shape == (4, 8, 8)


def _unit_gradient(model, layer, x, y, xx):
    model = model.eval()
    x = x.clone().requires_grad_(True)
    with record(model, [layer], stop=True) as rec:
        rec.run(x)
    (g,) = torch.autograd.grad(rec[layer][:, :, y, xx].sum(), x)
    return g.abs().sum((0, 1))


def _nonzero_box(g):
    ys, xs = torch.nonzero(g, as_tuple=True)
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())


class Linear(nn.Module):
    """No ReLU, no max: with random weights every pixel of the field has a non-zero gradient."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(3, 3, 3, padding=2, dilation=2)
        self.skip = nn.Conv2d(3, 3, 1)
        self.c3 = nn.Conv2d(3, 4, (3, 5), stride=(1, 2))

    def forward(self, x):
        a = self.c1(x)
        return self.c3(F.avg_pool2d(self.c2(a) + self.skip(a), 2))


@pytest.mark.parametrize("net, layer, size", [(Linear, "c3", 48), (Hand, "c3", 48), (Hand, "pool", 40)])
def test_gradient_vanishes_outside_field_and_reaches_its_border(net, layer, size):
    torch.manual_seed(3)
    model = net()
    rf = by_name(receptive_fields(model, [layer], size=size))[layer]
    _, h, w = rf.output_shape
    y, x = h // 2, w // 2
    top, left, bottom, right = rf.region(y, x)
    assert top > 0 and left > 0 and bottom < size - 1 and right < size - 1  # the field fits the image
    g = _unit_gradient(model, layer, torch.rand(4, 1, size, size), y, x)
    inside = torch.zeros_like(g, dtype=torch.bool)
    inside[top:bottom + 1, left:right + 1] = True
    assert float(g[~inside].abs().max()) == 0.0  # exactly zero outside
    if net is Linear:  # non-zero on every side of the border
        assert _nonzero_box(g) == (top, left, bottom, right)
        assert g[top].any() and g[bottom].any() and g[:, left].any() and g[:, right].any()


def test_real_graphs_resnet_and_googlenet():
    resnet = cnnvis.load_model("resnet18", "none", size=96)
    rows = by_name(receptive_fields(resnet, ["layer1.0", "layer1.0.conv2", "maxpool", "layer1.1.conv2", "fc"]))
    # conv1 k7 s2 p3: 7, jump 2; maxpool k3 s2 p1: 11, jump 4; each 3x3 conv adds 2*4
    assert rows["maxpool"].size == (11, 11) and rows["maxpool"].jump == (4, 4)
    assert rows["layer1.0.conv2"].size == (27, 27)
    assert rows["layer1.0"].size == rows["layer1.0.conv2"].size  # residual add: the widest branch
    assert rows["layer1.1.conv2"].size == (43, 43)
    assert rows["fc"].is_global
    g = _unit_gradient(resnet.model, "layer1.0.conv2", torch.rand(8, 3, 96, 96), 12, 12)
    top, left, bottom, right = rows["layer1.0.conv2"].region(12, 12)
    assert _nonzero_box(g) == (top, left, bottom, right)  # random ReLU net: still fills its field here

    goog = cnnvis.load_model("googlenet", "none", size=64)
    rows = by_name(receptive_fields(goog, "inception3a*"))
    branches = [rows[n].size for n in rows if n.count(".") == 1]
    assert rows["inception3a"].size == max(branches)  # concatenation: union of the branches
    assert rows["inception3a.branch4.0"].size[0] == rows["inception3a.branch1"].size[0] + 2 * 8


def test_region_and_model_unchanged():
    net = Hand().train()
    net.c1.weight.requires_grad_(False)
    rows = receptive_fields(net, size=32)
    assert net.training and all(m.training for m in net.modules())
    assert not net.c1.weight.requires_grad and net.c2.weight.requires_grad and count_hooks(net) == 0
    rf = by_name(rows)["c1"]
    assert rf.region(0, 0) == (-1, -1, 1, 1) and rf.region(3, 1) == (5, 1, 7, 3)
    assert by_name(rows)["fc"].region(5, 5) == (0, 0, 31, 31)


def test_forward_failure_is_a_model_error_and_leaves_no_hooks(user_module):
    lm = cnnvis.load_model("usernets:Broken")
    with pytest.raises(cnnvis.ModelError, match=r"forward pass of usernets:Broken failed on a 1x3x20x20 input "
                                                r"\(RuntimeError: forward exploded\)$"):
        receptive_fields(lm, size=20)
    assert count_hooks(lm.model) == 0
    with pytest.raises(cnnvis.ModelError, match="forward pass of usernets:Broken failed"):
        effective_receptive_fields(lm, ["conv"], size=20, samples=1)
    assert count_hooks(lm.model) == 0


def test_size_mismatch_names_size(user_module):
    with pytest.raises(cnnvis.ModelError, match="pass the size it expects with --size"):
        receptive_fields(cnnvis.load_model("lenet-digits"), size=20)


# ---------------------------------------------------------------- effective field


def test_mass_radius_exact():
    m = torch.zeros(11, 11)
    m[5, 5], m[5, 7], m[1, 5] = 0.875, 0.0625, 0.0625  # exact in binary
    assert mass_radius(m, (5, 5), 0.875) == 0.0
    assert mass_radius(m, (5, 5), 0.9) == 2.0
    assert mass_radius(m, (5, 5), 0.95) == 4.0
    assert mass_radius(torch.ones(4, 4), (1.5, 1.5), 0.25) == 0.5  # fractional centre: the 2x2 middle


def _single_conv(kernel):
    conv = nn.Conv2d(1, 1, kernel.shape[-1], bias=False)
    with torch.no_grad():
        conv.weight.copy_(kernel.view(1, 1, *kernel.shape))
    return nn.Sequential(conv)


def test_effective_field_of_known_kernels():
    delta = torch.zeros(5, 5)
    delta[2, 2] = 1.0
    e = effective_receptive_fields(_single_conv(delta), ["0"], size=15, samples=2)[0]
    assert e.size == 1 and e.unit == (5, 5) and e.center == (7.0, 7.0)
    assert float(e.map[7, 7]) == pytest.approx(1.0) and float(e.map.sum()) == pytest.approx(1.0)
    flat = effective_receptive_fields(_single_conv(torch.ones(5, 5)), ["0"], size=15, samples=2)[0]
    assert flat.size == 5 and flat.theoretical.size == (5, 5)  # radius 1 holds only 9/25
    img = flat.render()
    assert img.shape == (3, 15, 15) and torch.equal(img[:, 5, 5], torch.tensor([0.0, 1.0, 1.0]))


def test_effective_field_is_smaller_and_grows_with_depth():
    torch.manual_seed(0)
    layers, c = [], 1
    for _ in range(8):
        layers += [nn.Conv2d(c, 8, 3, padding=1), nn.ReLU()]
        c = 8
    net = nn.Sequential(*layers)
    names = [str(2 * i) for i in range(8)]
    fields = effective_receptive_fields(net, names, size=48, samples=8, seed=0)
    sizes = [f.size for f in fields]
    theory = [f.theoretical.size[0] for f in fields]
    assert theory == [3, 5, 7, 9, 11, 13, 15, 17]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # grows with depth
    assert all(s <= t for s, t in zip(sizes, theory)) and sizes[-1] < theory[-1]
    # the same through receptive_fields(effective=True), and reproducible with the seed
    rows = receptive_fields(net, names, size=48, effective=True, samples=8, seed=0)
    assert [r.effective for r in rows] == sizes and rows[0].to_dict()["effective"] == sizes[0]
    again = measure_effective(net, rows[-1:], samples=8, seed=0)[0]
    assert torch.equal(again.map, fields[-1].map)
    assert count_hooks(net) == 0 and all(p.requires_grad for p in net.parameters())


def test_effective_field_needs_a_spatial_layer():
    with pytest.raises(InputError, match="layer fc1 has no spatial output"):
        effective_receptive_fields(cnnvis.load_model("lenet-digits"), ["conv1", "fc1"])


def test_receptive_field_dataclass_json():
    rf = ReceptiveField("x", "Conv2d", (7, 7), (2, 2), (0.5, 0.5), (4, 3, 3), (16, 16), 5.0)
    assert rf.to_dict() == {"name": "x", "type": "Conv2d", "size": 7, "jump": 2, "start": 0.5, "global": False,
                            "output_shape": [4, 3, 3], "effective": 5}
