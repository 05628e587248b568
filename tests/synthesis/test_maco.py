"""MACO: the magnitude stays fixed on the output, the phase climbs the objective, crops are reproducible."""

import doctest
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cnnvis.synthesis.maco as maco
from cnnvis.synthesis.maco import MacoImage, frequency_radius, load_spectrum, natural_magnitude, random_crops
from cnnvis.synthesis.params import COLOR as _COLOR

ROOT = Path(__file__).resolve().parents[2]


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _tiny_cnn(channels=3):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2))
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _climb(img, net, unit, steps, lr=0.1, crops=2):
    """Adam on the phase for the mean of channel ``unit`` of ``net`` over random crops; values before/after."""
    moves = _gens(*range(100, 100 + img.phase.shape[0]))
    opt = torch.optim.Adam(img.params, lr=lr)

    def value(x, k):
        return net(x)[:, unit].mean((1, 2)).view(-1, k).mean(1)

    with torch.no_grad():
        before = value(img.image(), 1)
    for _ in range(steps):
        v = value(random_crops(img.image(), moves, crops=crops, scale=(0.6, 1.0), noise=0.02), crops)
        opt.zero_grad()
        (-v.sum()).backward()
        opt.step()
        img.after_step()
    with torch.no_grad():
        after = value(img.image(), 1)
    return before, after


def _output_magnitude(img):
    """``|rfft2|`` of the decorrelated image recovered from ``image()`` (logit, contrast, colour)."""
    with torch.no_grad():
        y = torch.logit(img.image().double()) / img.contrast
        if img.recorrelate:
            y = torch.einsum("bdhw,cd->bchw", y, torch.linalg.inv(_COLOR.double()))
        return torch.fft.rfft2(y, norm="ortho").abs()


def _real_bins(h, w):
    """Mask of the rfft2 bins that are their own mirror image (DC and the Nyquist corners)."""
    mask = torch.zeros(h, w // 2 + 1, dtype=torch.bool)
    rows = [0] + ([h // 2] if h % 2 == 0 else [])
    cols = [0] + ([w // 2] if w % 2 == 0 else [])
    for r in rows:
        for c in cols:
            mask[r, c] = True
    return mask


@pytest.mark.parametrize("channels,size", [(3, (24, 30)), (3, (21, 27)), (1, (20, 25))])
def test_optimisation_changes_only_the_phase(channels, size):
    # the objective climbs, the image changes a lot, and the output's magnitude spectrum is
    # still the fixed one up to one factor per image (the standardisation), to float precision
    img = MacoImage(_gens(0, 1), channels, size, "cpu", None)
    start = img.image().detach().clone()
    before, after = _climb(img, _tiny_cnn(channels), unit=1, steps=8)
    assert (after > before).all(), (before, after)
    assert (img.image().detach() - start).abs().mean() > 0.05
    ratio = _output_magnitude(img) / img.magnitude.double()
    kept = ratio[:, :, ~_real_bins(*size)]
    spread = kept.flatten(1).amax(1) / kept.flatten(1).amin(1) - 1
    assert (spread < 2e-3).all(), spread


def test_adam_on_phase_raises_the_red_channel():
    img = MacoImage(_gens(5, 6, 7), 3, (32, 32), "cpu", None)
    opt = torch.optim.Adam(img.params, lr=0.1)
    first = img.image()[:, 0].mean((1, 2)).detach()
    for _ in range(10):
        loss = -img.image()[:, 0].mean((1, 2)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        img.after_step()
    last = img.image()[:, 0].mean((1, 2)).detach()
    assert (last > first + 0.05).all(), (first, last)


def test_maco_image_interface():
    img = MacoImage(_gens(0, 1), 3, (16, 20), "cpu", None)
    assert [tuple(p.shape) for p in img.params] == [(2, 3, 16, 11)]
    assert img.params[0].requires_grad and not img.magnitude.requires_grad
    x = img.image()
    assert x.shape == (2, 3, 16, 20) and ((x > 0) & (x < 1)).all()
    # an element's image depends only on its generator, not on the batch
    alone = MacoImage(_gens(1), 3, (16, 20), "cpu", None).image()
    assert torch.allclose(alone[0], x[1], atol=1e-6)
    # restart redraws element i only; after_step wraps the phase without moving the image
    with torch.no_grad():
        img.phase.add_(7.0)
    x = img.image().detach()
    img.after_step()
    assert img.phase.abs().max() <= math.pi
    assert torch.allclose(img.image().detach(), x, atol=1e-4)
    img.restart(0, torch.Generator().manual_seed(9), attempt=1)
    y = img.image().detach()
    assert torch.equal(y[1], img.image().detach()[1]) and not torch.allclose(y[0], x[0], atol=1e-2)
    assert torch.allclose(y[1], x[1], atol=1e-4)


def test_settings_contrast_and_channel_counts():
    class Settings:
        maco_contrast = 1.0

    soft = MacoImage(_gens(0), 3, (32, 32), "cpu", Settings()).image()
    hard = MacoImage(_gens(0), 3, (32, 32), "cpu", None).image()
    assert soft.std() < hard.std()
    for c in (1, 2, 4):
        x = MacoImage(_gens(0), c, (17, 23), "cpu", None).image()
        assert x.shape == (1, c, 17, 23) and torch.isfinite(x).all()


def test_random_phase_images_have_the_contrast_of_the_photographs():
    x = MacoImage(_gens(*range(32)), 3, (96, 96), "cpu", None).image().detach()
    std = float(x.flatten(2).std(2).mean())
    assert abs(std - float(load_spectrum()["pixel_std"])) < 0.2 * float(load_spectrum()["pixel_std"]), std
    assert abs(float(x.mean()) - 0.5) < 0.05


def test_uniform_phase_has_no_corner_blob():
    # N(0, 1) phases (the references) put a coherent peak on pixel (0, 0); uniform ones do not
    s = MacoImage(_gens(*range(64)), 3, (64, 64), "cpu", None).signal().detach()
    assert abs(float(s[:, 0, :3, :3].mean())) < 0.5


@pytest.mark.parametrize("h,w,c", [(64, 64, 3), (37, 53, 1), (128, 96, 3), (9, 8, 2)])
def test_natural_magnitude_shape_decay_and_scale(h, w, c):
    m = natural_magnitude(h, w, c)
    assert m.shape == (c, h, w // 2 + 1) and m.dtype == torch.float32
    assert torch.isfinite(m).all() and (m > 0).all()
    mirror = (-torch.arange(h)) % h
    assert torch.equal(m, m[:, mirror]), "a real image's magnitude is even in fy"
    r = frequency_radius(h, w)
    mask = r > 0
    a, b = torch.log(r[mask]), torch.log(m.double()[:, mask])
    slope = [float(np.polyfit(a.numpy(), b[k].numpy(), 1)[0]) for k in range(c)]
    assert all(-2.2 < s < -0.8 for s in slope), slope  # natural images: amplitude ~ 1/f^(1..1.5)
    full = 2.0 * m.double().pow(2).sum() - m.double()[..., 0].pow(2).sum()
    if w % 2 == 0:
        full -= m.double()[..., -1].pow(2).sum()
    assert abs(float(full) / (c * h * w) - 1) < 1e-5  # unit pixel variance for a random phase


def test_natural_magnitude_decays_octave_by_octave():
    m = natural_magnitude(256, 256, 3)
    for k in (2, 4, 8, 16, 32, 64):  # along the fx axis: halves or more per octave
        assert (m[:, 0, 2 * k] < 0.7 * m[:, 0, k]).all(), k
    assert torch.equal(natural_magnitude(40, 40, 1, device="cpu"), natural_magnitude(40, 40, 1))


def test_random_crops_shape_order_and_determinism():
    x = torch.stack([torch.full((3, 16, 12), float(i) / 4) for i in range(3)])
    out = random_crops(x, _gens(0, 1, 2), crops=4, scale=(0.3, 0.9), noise=0.0)
    assert out.shape == (12, 3, 16, 12)
    assert torch.allclose(out.mean((1, 2, 3)), torch.tensor([i / 4 for i in range(3)]).repeat_interleave(4))
    ramp = torch.linspace(0, 1, 64).expand(2, 3, 64, 64).contiguous()
    a = random_crops(ramp, _gens(0, 1), crops=3, scale=(0.2, 0.9), noise=0.05)
    b = random_crops(ramp, _gens(0, 1), crops=3, scale=(0.2, 0.9), noise=0.05)
    assert torch.equal(a, b)
    # element 1's crops do not depend on element 0
    alone = random_crops(ramp[1:], _gens(1), crops=3, scale=(0.2, 0.9), noise=0.05)
    assert torch.equal(a[3:], alone)
    assert not torch.equal(a[:3], a[3:])


def test_random_crops_geometry_and_noise():
    ramp = torch.linspace(0, 1, 101)[None, None, None, :].expand(1, 1, 101, 101).contiguous()
    out = random_crops(ramp, _gens(3), crops=8, scale=(0.5, 0.5), noise=0.0)
    span = out[:, 0, 50].amax(1) - out[:, 0, 50].amin(1)  # a crop of half the side spans half the ramp
    assert torch.allclose(span, torch.full_like(span, 0.5), atol=0.02)
    assert out.min() >= 0 and out.max() <= 1  # crops stay inside the image
    flat = torch.full((1, 3, 64, 64), 0.5)
    noisy = random_crops(flat, _gens(4), crops=2, scale=(1.0, 1.0), noise=0.1)
    assert abs(float((noisy - 0.5).std()) - 0.1) < 0.005
    with pytest.raises(Exception):
        random_crops(flat, _gens(4), crops=2, scale=(0.5, 1.5))
    with pytest.raises(Exception):
        random_crops(flat, _gens(4, 5), crops=2)


def test_spectrum_file_matches_its_script():
    spec = importlib.util.spec_from_file_location("make_natural_spectrum", ROOT / "benchmarks" / "make_natural_spectrum.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    if importlib.util.find_spec("skimage") is None or importlib.util.find_spec("sklearn") is None:
        pytest.skip("needs scikit-image and scikit-learn (the photographs)")
    rebuilt, shipped = script.build(), load_spectrum()
    assert sorted(rebuilt) == sorted(shipped)
    for k, v in rebuilt.items():
        if v.dtype.kind in "fc":
            np.testing.assert_allclose(shipped[k], v, rtol=1e-5, atol=1e-7, err_msg=k)
        else:
            assert np.array_equal(shipped[k], v), k
    assert np.array_equal(shipped["color"], _COLOR.numpy())  # regenerate if the colour matrix changes
    assert maco.SPECTRUM_FILE.stat().st_size < 100_000


def test_docstring_examples():
    result = doctest.testmod(maco, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
