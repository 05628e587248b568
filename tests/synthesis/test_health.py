"""Live, off and flat units: decided by measurement, and drawn for what they are."""

import json

import pytest
import torch
from torch import nn

import cnnvis
from cnnvis.gallery.site import build_gallery
from cnnvis.synthesis.health import unit_health
from cnnvis.synthesis.quality import corner_contrast, natural_crops
from cnnvis.synthesis.settings import make_settings
from cnnvis.synthesis.units import maximize, select_units


class OffNet(nn.Module):
    """conv1 (1x1, then a ReLU): channels 0 and 1 are the image's brightness, channel 2 is never active.
    conv2 (3x3 depthwise, then a ReLU): unit 0 has an all-negative kernel on its non-negative input (an
    off-unit: it answers most where channel 0 is silent), unit 1 an all-positive one (an ordinary unit),
    unit 2 reads the channel that is never active (its response never varies: flat)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.relu2 = nn.ReLU()
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[:2] = 1.0 / 3
            self.conv1.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
            self.conv2.weight.copy_(torch.stack([-torch.ones(1, 3, 3), torch.ones(1, 3, 3), torch.ones(1, 3, 3)]) / 9)
            self.conv2.bias.copy_(torch.tensor([1.0, -0.5, 0.3]))

    def forward(self, x):
        return self.relu2(self.conv2(self.relu1(self.conv1(x))))


class ZeroKernel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight[1].zero_()
            self.conv.bias[1] = 0.2

    def forward(self, x):
        return self.relu(self.conv(x))


@pytest.fixture(scope="module")
def offnet():
    return cnnvis.load_model(OffNet(), size=16)


def test_units_are_live_off_or_flat_by_measurement(offnet):
    h = unit_health(offnet, select_units(offnet, "conv2", "all", "channel-relu"), (16, 16))
    assert h.kinds == {0: "off", 1: "live", 2: "flat"}
    assert "works against it" in h.reasons[0] and "never active" in h.reasons[2]
    # independently: unit 0 answers to black at least as much as to any natural crop (before its ReLU)
    crops = natural_crops(16, 3, 64, seed=1)
    with torch.no_grad(), cnnvis.record(offnet, ["conv2"], stop=True) as rec:
        rec.run(torch.cat([crops, torch.zeros(1, 3, 16, 16)]))
    means = rec["conv2"].flatten(2).mean(2)
    assert float(means[-1, 0]) >= float(means[:-1, 0].max())
    assert float(means[:, 2].max() - means[:, 2].min()) < 1e-6  # unit 2 never varies


def test_one_pass_over_the_crops_serves_every_selection_of_a_layer(monkeypatch):
    import cnnvis.synthesis.health as health

    lm = cnnvis.load_model(OffNet(), size=16)  # a model of its own: nothing measured yet
    calls = []
    measure = health._measure_many
    monkeypatch.setattr(health, "_measure_many", lambda *a: calls.append(a[1:]) or measure(*a))
    whole = unit_health(lm, select_units(lm, "conv2", "all", "channel-relu"), (16, 16))
    part = unit_health(lm, select_units(lm, "conv2", "0,2", "channel-relu"), (16, 16))
    assert len(calls) == 1  # the second selection (the off-units' pictures, a worker's chunk) reuses it
    assert {u: part.kinds[u] for u in (0, 2)} == {0: whole.kinds[0], 2: whole.kinds[2]}
    assert part.natural[0] == whole.natural[0] and part.scale == whole.scale
    unit_health(lm, select_units(lm, "conv2", "all", "channel-relu"), (24, 24))
    other = cnnvis.load_model(lm.model, size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    unit_health(other, select_units(other, "conv2", "all", "channel-relu"), (16, 16))
    assert len(calls) == 3  # another size, and the same network fed other numbers, are measured again


def test_one_pass_over_the_crops_measures_every_layer_of_a_size_as_its_own_pass_would(monkeypatch):
    import cnnvis.synthesis.health as health

    lm = cnnvis.load_model(OffNet(), size=16)
    sels = [select_units(lm, layer, "all", "channel-relu") for layer in ("conv1", "conv2")]
    specs = {s.layer: (s.reads or s.layer, s.before or s.reads or s.layer, s.objective) for s in sels}
    alone = {layer: health._measure_many(lm, [spec], (16, 16))[spec] for layer, spec in specs.items()}
    passes = []
    many = health._measure_many
    monkeypatch.setattr(health, "_measure_many", lambda *a: passes.append(a[2]) or many(*a))
    monkeypatch.setattr(health, "_MEASURED", {})  # nothing measured yet (a model's key is its id, which can recur)
    monkeypatch.setattr(health, "_HEALTH", {})
    fresh = lm
    health.measure_health(fresh, [(s, (16, 16)) for s in sels] + [(sels[0], (24, 24))])
    assert sorted(passes) == [(16, 16), (24, 24)]  # one pass per size, both layers in the first
    for s in sels:
        h = unit_health(fresh, s, (16, 16))  # measured already: no further pass
        crops, black, noise = alone[s.layer]
        reads = s.reads or s.layer
        assert h.natural[1]["max"] == float(crops[reads][:, 1].max()) and h.natural[1]["black"] == float(black[reads][1])
        assert h.scale == float(noise.abs().amax(0).median())
    assert len(passes) == 2
    unit_health(fresh, sels[1], (24, 24))
    assert len(passes) == 3  # conv2 at 24 px was not asked for


def test_a_zero_kernel_unit_is_flat():
    lm = cnnvis.load_model(ZeroKernel(), size=16)
    out = maximize(lm, "conv", "all", preset="robust", objective="channel-relu", steps=8)
    live, zero = out.records
    assert zero["status"] == "flat" and "kernel" in zero["reason"] and zero["unit_kind"] == "flat"
    assert live["status"] == "ok" and live["unit_kind"] == "live"


def test_an_off_unit_is_live_and_drawn_switched_off_below_its_natural_minimum(offnet, tmp_path):
    s = build_gallery(offnet, str(tmp_path), layers=["conv2"], filters="all", steps=64, classes=0, inputs=0,
                      dreams=False)
    assert (s.off, s.flat) == (1, 1)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    records = {(r["filter"], r["variant"]): r for r in manifest["records"]}
    positive, negative = records[(0, "channel-relu-robust")], records[(0, "channel-relu-robust-negative")]
    assert positive["status"] == "ok" and positive["unit_kind"] == "off"  # live, not flat
    assert negative["objective_layer"] == "conv2"  # switched off below its ReLU's floor, where that shows
    assert (1, "channel-relu-robust-negative") not in records  # an ordinary unit gets no negative picture
    # the off picture drives the unit below every natural crop (spatial means before its ReLU)
    from PIL import Image
    import numpy as np

    off = torch.from_numpy(np.asarray(Image.open(tmp_path / negative["image"]), dtype=np.float32) / 255).permute(2, 0, 1)
    crops = natural_crops(16, 3, 256, seed=2)
    with torch.no_grad(), cnnvis.record(offnet, ["conv2"], stop=True) as rec:
        rec.run(torch.cat([crops, off[None]]))
    means = rec["conv2"][:, 0].flatten(1).mean(1)
    assert float(means[-1]) < float(means[:-1].min())
    # its tile and its page lead with that picture, and say what kind of unit it is
    layer_page = (tmp_path / "layers/conv2.html").read_text()
    assert 'src="../conv2/channel-relu-robust-negative/0000.png"' in layer_page and ">off</span>" in layer_page
    page = (tmp_path / "units/conv2/0.html").read_text()
    assert "This is an <strong>off-unit</strong>" in page
    assert page.index("channel-relu-robust-negative/0000.png") < page.index("channel-relu-robust/0000.png")
    assert "<code>conv2 → relu2</code>" in page
    flat_page = (tmp_path / "units/conv2/2.html").read_text()
    assert "<strong>flat</strong>" in flat_page and "never active" in flat_page


def test_a_layer_nothing_follows_is_read_as_it_is(tmp_path):
    lm = cnnvis.load_model(nn.Sequential(nn.Conv2d(3, 2, 3)), size=16)
    build_gallery(lm, str(tmp_path), layers=["0"], filters="all", steps=4, classes=0, inputs=0, dreams=False)
    page = (tmp_path / "units/0/1.html").read_text()
    assert "<code>0</code> (its own output: no batch norm or activation follows it)" in page


@pytest.mark.slow
def test_first_layer_pictures_are_optimised_to_their_corners():
    # every pixel of a first layer's picture is optimised: no corner left grey, black or white by shifts
    lm = cnnvis.load_model("efficientnet-lite0")
    out = maximize(lm, "conv_stem", "all", preset="robust", objective="channel-relu", steps=128, size=32)
    assert out.settings.transforms is False and out.settings.param == "pixel"
    worst = [corner_contrast(x) for x, r in zip(out.images, out.records) if r["status"] != "flat"]
    assert max(worst) <= 0.35, worst


def test_robust_first_layer_settings_on_a_small_field():
    lm = cnnvis.load_model("lenet-digits")
    s = make_settings("robust")
    from cnnvis.synthesis.settings import field_settings

    first, second = field_settings(lm, "conv1", s), field_settings(lm, "conv2", s)
    assert (first.param, first.transforms, first.decorrelate, first.size) == ("pixel", False, False, (32, 32))
    assert (second.param, second.transforms, second.jitter) == ("fourier", True, 2)  # a small canvas: less jitter
    big = make_settings("robust", size=128)
    assert field_settings(lm, "conv2", big) == big
    assert field_settings(lm, "conv1", s, keep=["param"]).param == "fourier"  # what the caller set stays


def test_maximize_counts_off_units(offnet, tmp_path):
    from cnnvis.gallery.site import run_maximize

    s = run_maximize(offnet, ["conv2"], "all", objective="channel-relu", preset="robust", steps=8, out_dir=str(tmp_path))
    assert (s.off, s.flat) == (1, 1)
    assert [r["unit_kind"] for r in s.records] == ["off", "live", "flat"]


class SilentForGrey(nn.Module):
    """conv2's unit reads a channel that only bright pixels switch on: for a grey start it answers 0.3
    everywhere, with no gradient at all."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 1, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(1, 1, 3, padding=1)
        self.relu2 = nn.ReLU()
        with torch.no_grad():
            self.conv1.weight.fill_(10.0)
            self.conv1.bias.fill_(-20.0)
            self.conv2.weight.fill_(1.0 / 9)
            self.conv2.bias.fill_(0.3)

    def forward(self, x):
        return self.relu2(self.conv2(self.relu1(self.conv1(x))))


def test_a_picture_with_no_gradient_at_its_start_starts_again():
    lm = cnnvis.load_model(SilentForGrey(), size=16)
    with torch.no_grad():  # independently: grey gives 0.3 everywhere, white far more
        assert torch.allclose(lm.forward(torch.full((1, 3, 16, 16), 0.5)), torch.tensor(0.3))
        assert float(lm.forward(torch.ones(1, 3, 16, 16)).mean()) > 5
    (rec,) = maximize(lm, "conv2", "0", preset="robust", objective="channel-relu", steps=32, size=64,
                      param="fourier", decorrelate=True).records  # a grey start (a first layer would start from noise)
    assert rec["attempts"] > 1 and rec["status"] == "ok"
    assert rec["objective_final"] > 2 * rec["objective_initial"] > 0
