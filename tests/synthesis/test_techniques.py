import doctest
import io
import json

import pytest
import torch
from PIL import Image
from torch import nn

import cnnvis
from cnnvis.core.errors import InputError
from cnnvis.model.hooks import count_hooks, record
from cnnvis.synthesis.techniques import (accentuate, caricature, default_reg_layer, dream, layer_l2, prepare_image,
                               run_technique, save_technique)


@pytest.fixture(scope="module")
def lenet():
    return cnnvis.load_model("lenet-digits")


@pytest.fixture(scope="module")
def seven():
    """A handwritten 7 from scikit-learn's digits, as lenet-digits sees it (1 x 32 x 32)."""
    from sklearn.datasets import load_digits

    from cnnvis.model.zoo.lenet import digits_to_tensor

    d = load_digits()
    return digits_to_tensor(d.images[d.target == 7][:1])[0]


def _acts(lm, x, layer):
    with torch.no_grad(), record(lm, [layer], stop=True) as rec:
        rec.run(x.reshape(1, *x.shape[-3:]))
    return rec[layer][0]


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_docstring_examples():
    import cnnvis.synthesis.techniques as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ accentuation


def test_accentuation_raises_the_unit_and_stays_closer_to_the_photo_than_a_plain_visualisation(lenet, seven):
    unit = 2
    r = accentuate(lenet, seven, "conv2", unit, steps=24, seed=0)
    rec = r.record
    reg = rec["layer_reg"]
    assert reg == "conv1"  # one resolution stage below conv2
    f = lambda img: float(_acts(lenet, img, "conv2")[unit].mean())  # channel-mean, measured here independently
    assert f(r.image) == pytest.approx(rec["objective_final"], rel=1e-4)
    assert f(r.image) > f(seven) + 0.5  # -0.51 -> about 0.6 here
    plain = cnnvis.maximize(lenet, "conv2", [unit], objective="channel-mean", steps=24, seed=0).images[0]
    assert f(plain) > f(r.image)  # the plain picture is free to go further...
    pixel = lambda img: float((img - seven).pow(2).mean().sqrt())
    layer = lambda img: _rel(_acts(lenet, img, reg), _acts(lenet, seven, reg))
    assert pixel(r.image) == pytest.approx(rec["pixel_distance"], rel=1e-4)
    assert layer(r.image) == pytest.approx(rec["layer_distance"], rel=1e-4)
    assert pixel(r.image) < 0.5 * pixel(plain)  # ...but the accentuation stays near the photo
    assert layer(r.image) < 0.5 * layer(plain)


def test_the_balanced_closeness_term_holds_the_image_near_the_photo(lenet, seven):
    free = accentuate(lenet, seven, "conv2", 2, steps=24, reg_weight=0.0).record
    held = accentuate(lenet, seven, "conv2", 2, steps=24, reg_weight=1.0).record
    tight = accentuate(lenet, seven, "conv2", 2, steps=24, reg_weight=4.0).record
    assert free["reg_balance"] == 0.0 and held["reg_balance"] > 0  # lam is measured, not a constant
    assert tight["layer_distance"] < held["layer_distance"] < free["layer_distance"]
    assert tight["objective_final"] < held["objective_final"] < free["objective_final"]
    assert held["objective_final"] > held["objective_initial"]


def test_accentuation_balance_equalises_the_two_gradients(lenet, seven):
    """lam = ||grad f||_1 / ||grad D||_1 where the first Adam step lands: recompute it by hand (pixels)."""
    from cnnvis.synthesis.objectives import channel_mean
    from cnnvis.synthesis.techniques import LayerDistance

    lr, unit = 0.01, 1
    rec = accentuate(lenet, seven, "conv2", unit, steps=0, param="pixel", lr=lr).record
    x = seven[None].clone().requires_grad_(True)
    with record(lenet, ["conv1", "conv2"], stop=True) as rec_:
        rec_.run(x)
        (gf,) = torch.autograd.grad(channel_mean("conv2", unit)(rec_.outputs).sum(), x)
        ref = rec_["conv1"].detach()
        moved = (seven[None] + lr * gf.sign()).clamp(0, 1).requires_grad_(True)
        rec_.run(moved)
        (gd,) = torch.autograd.grad(LayerDistance("conv1", ref)(rec_.outputs).sum(), moved)
    assert rec["reg_balance"] == pytest.approx(float(gf.abs().sum() / gd.abs().sum()), rel=1e-3)


def test_accentuation_default_reg_layer():
    lm = cnnvis.load_model("efficientnet-lite0", "none")
    assert default_reg_layer(lm, "blocks.10") == "blocks.3.depthwise_conv"  # 28x28, the stage before 14x14
    assert default_reg_layer(lm, "fc") == "blocks.11.depthwise_conv"  # the last stage for a logit
    assert default_reg_layer(lm, "conv_stem") == "conv_stem"


def test_accentuation_of_a_logit_and_bad_units(lenet, seven):
    r = accentuate(lenet, seven, "fc3", 3, steps=16)
    assert r.record["layer_reg"] == "conv2" and r.record["objective_final"] > r.record["objective_initial"]
    with pytest.raises(InputError, match=r"filter 16 is out of range: layer conv2 has 16 channels \(0..15\)"):
        accentuate(lenet, seven, "conv2", 16, steps=1)
    with pytest.raises(InputError, match="unknown objective"):
        accentuate(lenet, seven, "conv2", 1, objective="class", steps=1)
    with pytest.raises(InputError, match="matches 2 layers"):
        accentuate(lenet, seven, "conv*", 1, steps=1)


# ------------------------------------------------------------------ DeepDream


def test_dream_at_least_doubles_the_layers_response(lenet, seven):
    r = dream(lenet, seven, "relu2", octaves=2, steps=30, lr=0.05, seed=0)
    before = float(_acts(lenet, seven, "relu2").norm())
    after = float(_acts(lenet, r.image, "relu2").norm())
    assert after >= 2 * before
    assert r.record["objective_initial"] == pytest.approx(before, rel=1e-4)
    assert r.record["objective_final"] == pytest.approx(after, rel=1e-4)
    assert r.record["response_ratio"] == pytest.approx(after / before, rel=1e-4)
    assert float(r.image.min()) >= 0 and float(r.image.max()) <= 1 and r.image.shape == seven.shape


def test_dream_octaves_shrink_by_the_scale_and_stop_where_the_layer_is_out_of_reach(lenet, seven):
    r = dream(lenet, seven, "conv2", octaves=6, octave_scale=1.4, steps=1)
    # 32 / 1.4^k: 32, 23, 16, then 12 px, where conv2 (two 5x5 convolutions and a pooling) cannot run
    assert r.record["octave_sizes"] == [[32, 32], [23, 23], [16, 16]]
    assert len(r.record["loss_curve"]) == 3


def test_progress_counts_every_step_to_the_end(lenet, seven):
    seen = []
    dream(lenet, seven, "conv2", octaves=2, steps=3, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]
    seen.clear()
    accentuate(lenet, seven, "conv2", 0, steps=3, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 4) for i in range(1, 5)]  # the balance, then each step


def test_dream_refuses_a_layer_without_spatial_output(lenet, seven):
    with pytest.raises(InputError) as e:
        dream(lenet, seven, "fc1")
    message = str(e.value)
    assert "fc1 has no spatial output" in message and "convolutional layer" in message and "\n" not in message


def test_layer_l2_is_an_objective_for_synthesize(lenet):
    (res,) = cnnvis.synthesize(lenet, layer_l2("relu2"), [0], cnnvis.make_settings("plain", steps=16))
    assert res.objective_final > 1.5 * res.objective_initial > 0
    h = torch.arange(8.0).reshape(1, 2, 2, 2)
    assert float(layer_l2("x")({"x": h})) == pytest.approx(float(h.norm()))


# ------------------------------------------------------------------ caricature


def test_caricature_aligns_the_layers_activations_with_the_photos(lenet, seven):
    r = caricature(lenet, seven, "conv2", steps=32, seed=0)
    cos = torch.nn.functional.cosine_similarity(_acts(lenet, r.image, "conv2").flatten(),
                                                _acts(lenet, seven, "conv2").flatten(), dim=0)
    assert float(cos) > 0.8 and float(cos) == pytest.approx(r.record["cosine_final"], abs=1e-4)
    assert r.record["cosine_final"] > r.record["cosine_initial"]
    assert r.record["objective_final"] > r.record["objective_initial"]


class _Small(nn.Module):
    """A small random CNN without a fixed input size, whose activations start far from any photo's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


def test_caricature_on_a_hand_built_cnn_without_a_fixed_size():
    net = _Small()
    photo = torch.zeros(3, 24, 24)
    photo[0, 4:12, :] = 1.0
    photo[2, :, 14:20] = 0.8
    r = caricature(net, photo, "conv2", steps=32, lr=0.1)
    assert r.record["cosine_initial"] < 0.7 and r.record["cosine_final"] > 0.8
    assert r.image.shape == (3, 24, 24) and r.record["size"] == [24, 24]


def test_match_activations_scores_the_photo_one():
    from cnnvis.synthesis.techniques import match_activations

    t = torch.randn(4, 3, 3)
    obj = match_activations("l", t, cossim_pow=1.0)
    values = obj({"l": torch.stack([t, 2 * t, t + torch.randn(4, 3, 3)])})
    assert values[0] == pytest.approx(1.0) and values[1] == pytest.approx(2.0) and values[2] < 1.5


# ------------------------------------------------------------------ inputs, results, the model given back


def test_an_image_the_model_cannot_take_is_one_line_naming_its_input(lenet):
    with pytest.raises(InputError, match=r"lenet-digits takes 1x32x32 images .*got a 3x32x32 tensor"):
        dream(lenet, torch.rand(3, 32, 32), "conv2")
    with pytest.raises(InputError, match=r"lenet-digits takes 1x32x32 images .*got a 1x1x20x20 tensor"):
        caricature(lenet, torch.rand(1, 1, 20, 20), "conv2")
    with pytest.raises(InputError, match=r"values must lie in \[0, 1\]"):
        dream(lenet, torch.rand(1, 32, 32) * 255, "conv2")


def test_files_pil_and_arrays_are_prepared_as_the_model_sees_them(lenet, tmp_path):
    import numpy as np

    rgb = np.zeros((64, 48, 3), np.uint8)
    rgb[10:50, 20:28] = 255
    Image.fromarray(rgb).save(tmp_path / "p.png")
    a = prepare_image(lenet, str(tmp_path / "p.png"))
    b = prepare_image(lenet, Image.fromarray(rgb))
    c = prepare_image(lenet, rgb)
    assert a.shape == (1, 1, 32, 32) and torch.equal(a, b) and torch.equal(a, c)


def test_results_show_as_png_and_are_deterministic(lenet, seven):
    r1 = caricature(lenet, seven, "conv1", steps=4, seed=3)
    r2 = caricature(lenet, seven, "conv1", steps=4, seed=3)
    r3 = caricature(lenet, seven, "conv1", steps=4, seed=4)
    assert torch.equal(r1.image, r2.image) and not torch.equal(r1.image, r3.image)
    from cnnvis.core.display import grid_png

    png = r1._repr_png_()
    assert png == grid_png([r1.input, r1.image])  # photo | result
    assert Image.open(io.BytesIO(png)).size == (2 * 128 + 3 * 2, 128 + 2 * 2)  # a 32 px digit shown 4x larger
    assert "caricature conv1" in r1._repr_html_() and r1.pair(pad=4).shape == (1, 32 + 8, 2 * 32 + 12)
    json.dumps(r1.record)  # flat and JSON-able
    for key in ("technique", "layer", "filter", "variant", "objective_initial", "objective_final", "loss_curve",
                "settings", "seed", "model", "weights", "versions", "seconds", "fingerprint"):
        assert key in r1.record
    assert r1.record["filter"] is None and r1.record["settings"]["steps"] == 4


def test_the_model_comes_back_as_given(seven):
    net = _Small()
    net.train()
    net.conv1.weight.requires_grad_(True)
    accentuate(net, torch.rand(3, 16, 16), "conv2", 0, steps=2)
    dream(net, torch.rand(3, 16, 16), "conv2", octaves=2, steps=2)
    with pytest.raises(cnnvis.UnknownLayerError):
        caricature(net, torch.rand(3, 16, 16), "nope")
    assert net.training and all(p.requires_grad for p in net.parameters()) and count_hooks(net) == 0
    assert all(p.grad is None for p in net.parameters())


def test_the_fourier_image_starts_at_the_photo(lenet, seven):
    from cnnvis.synthesis.settings import make_settings
    from cnnvis.synthesis.photos import photo_param

    for lm, x in ((lenet, seven[None]), (cnnvis.load_model(_Small()), torch.rand(1, 3, 20, 30))):
        param = photo_param("fourier", lm, tuple(x.shape[-2:]), torch.Generator(), x.clamp(0.01, 0.99),
                              make_settings("robust"))
        assert torch.allclose(param.image(), x.clamp(0.01, 0.99), atol=1e-4)


# ------------------------------------------------------------------ the store


def test_results_are_stored_once_and_rerunning_skips(lenet, seven, tmp_path):
    out = tmp_path / "o"
    a = run_technique(lenet, "accentuate", seven, "conv2", str(out), unit=2, steps=3)
    assert not a.skipped and a.path == str(out / "conv2" / a.record["variant"] / "0002.png")
    assert a.record["variant"].startswith("accentuate-") and a.record["variant"].endswith("-channel-mean-fourier")
    (rec,) = json.loads((out / "manifest.json").read_text())["records"]
    assert rec["image"] == f"conv2/{rec['variant']}/0002.png" and rec["fingerprint"] == a.record["fingerprint"]
    assert (rec["layer"], rec["filter"], rec["unit"]) == ("conv2", 2, 2)
    b = run_technique(lenet, "accentuate", seven, "conv2", str(out), unit=2, steps=3)
    assert b.skipped and b.path == a.path
    c = run_technique(lenet, "accentuate", seven, "conv2", str(out), unit=2, steps=4)  # new settings: recomputed
    assert not c.skipped and c.path == a.path and c.record["fingerprint"] != a.record["fingerprint"]
    other = seven.flip(-1)
    d = run_technique(lenet, "accentuate", other, "conv2", str(out), unit=2, steps=3)  # another photo: its own file
    assert not d.skipped and d.path != a.path
    e = run_technique(lenet, "accentuate", seven, "conv2", str(out), unit=2, steps=4, force=True)
    assert not e.skipped
    records = json.loads((out / "manifest.json").read_text())["records"]
    assert len(records) == 2


def test_save_technique_writes_whole_layer_results_as_unit_zero(lenet, seven, tmp_path):
    r = dream(lenet, seven, "conv1", octaves=1, steps=2)
    path = save_technique(r, str(tmp_path))
    assert path.endswith("/conv1/" + r.record["variant"] + "/0000.png")
    saved = torch.from_numpy(__import__("numpy").asarray(Image.open(path), dtype="float32") / 255.0)
    assert torch.allclose(saved, r.image[0], atol=1 / 255)
    (rec,) = json.loads((tmp_path / "manifest.json").read_text())["records"]
    assert rec["filter"] == 0 and rec["unit"] is None and rec["technique"] == "dream"
    with pytest.raises(InputError, match="takes no unit"):
        run_technique(lenet, "dream", seven, "conv1", str(tmp_path), unit=3)
    with pytest.raises(TypeError, match="unknown option"):
        run_technique(lenet, "dream", seven, "conv1", str(tmp_path), cossim_pow=2)


def test_every_technique_climbs_the_one_loop(lenet, seven, monkeypatch):
    """dream, accentuate and caricature take each of their steps as a step of the loop maximize uses."""
    from cnnvis.synthesis import ascent
    from cnnvis.synthesis.techniques import accentuate, caricature

    steps = []
    original = ascent._Ascent.step

    def counted(self, step):
        steps.append(step)
        return original(self, step)

    monkeypatch.setattr(ascent._Ascent, "step", counted)
    d = dream(lenet, seven, "conv2", octaves=2, steps=3)
    assert steps == [0, 1, 2, 0, 1, 2] and len(d.record["loss_curve"]) == 6
    steps.clear()
    a = accentuate(lenet, seven, "conv2", 3, steps=4)
    assert steps == [0, 1, 2, 3] and len(a.record["loss_curve"]) == len(a.record["distance_curve"]) == 4
    steps.clear()
    c = caricature(lenet, seven, "conv2", steps=5)
    assert steps == [0, 1, 2, 3, 4] and len(c.record["loss_curve"]) == 5
    steps.clear()
    cnnvis.maximize(lenet, "conv1", "0", steps=2)
    assert steps == [0, 1]
