"""Quality measures of maximum-response images: degenerate pictures, act_ratio, selectivity."""

import doctest
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnvis
from cnnvis import quality
from cnnvis.synthesis.quality import (
    NaturalBaseline,
    act_ratio,
    degeneracy,
    has_spread,
    is_degenerate,
    natural_baseline,
    natural_crops,
    photographs,
    selectivity,
    unit_responses,
)

pytest.importorskip("skimage")
pytest.importorskip("sklearn")


class TinyNet(nn.Module):
    """One 3x3 convolution with hand-set weights: a red detector, a vertical-edge detector, a constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, bias=True)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[0, 0] = 1.0 / 9  # mean red minus mean green
            self.conv.weight[0, 1] = -1.0 / 9
            self.conv.weight[1, :, :, 0] = -1.0  # vertical edges, every colour
            self.conv.weight[1, :, :, 2] = 1.0
            self.conv.bias[2] = 0.5  # channel 2 answers 0.5 to everything: no natural spread
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.relu(self.conv(x))).flatten(1)


@pytest.fixture(scope="module")
def tiny():
    return TinyNet().eval()


@pytest.fixture(scope="module")
def baseline(tiny):
    return natural_baseline(tiny, "conv", size=24, count=48, seed=3, batch_size=16)


# ------------------------------------------------------------------ degenerate


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_constant_image_is_degenerate(value):
    d = degeneracy(torch.full((3, 32, 32), value))
    assert d["degenerate"] and d["std"] == 0.0


def test_flat_colour_is_degenerate_though_channels_differ():
    x = torch.tensor([0.2, 0.7, 0.4]).view(3, 1, 1).expand(3, 32, 32)
    assert is_degenerate(x)
    assert degeneracy(x)["saturated"] == 0.0


def test_faint_noise_is_degenerate_and_clear_noise_is_not():
    g = torch.Generator().manual_seed(0)
    faint = 0.5 + 0.02 * torch.randn(3, 32, 32, generator=g)
    assert is_degenerate(faint)
    assert not is_degenerate(torch.rand(3, 32, 32, generator=g))


def _pinned(share: float, size: int = 40) -> torch.Tensor:
    """Noise in (0.1, 0.9) with the first ``share`` of pixels pinned to 0 or 1 in every channel (mixed colours)."""
    g = torch.Generator().manual_seed(1)
    x = 0.1 + 0.8 * torch.rand(3, size * size, generator=g)
    k = round(share * size * size)
    x[:, :k] = (torch.rand(3, k, generator=g) > 0.5).float()
    return x.view(3, size, size)


def test_mostly_saturated_image_is_degenerate():
    x = _pinned(0.7)
    d = degeneracy(x)
    assert d["std"] > quality.DEGENERATE_STD  # not flat: the saturation rule decides
    assert d["saturated"] == pytest.approx(0.7, abs=1e-3)
    assert d["degenerate"]


def test_half_saturated_image_is_not_degenerate():
    d = degeneracy(_pinned(0.5))
    assert d["saturated"] == pytest.approx(0.5, abs=1e-3) and not d["degenerate"]


def test_a_pixel_is_pinned_only_when_every_channel_is():
    x = _pinned(0.9)
    x[1] = 0.5  # green is mid-grey everywhere: no pixel is pinned in every channel
    assert degeneracy(x)["saturated"] == 0.0


def test_saturation_tolerance_is_inclusive():
    x = torch.full((1, 10, 10), 2.0 / 255)
    assert degeneracy(x)["saturated"] == 1.0
    assert degeneracy(torch.full((1, 10, 10), 3.0 / 255))["saturated"] == 0.0


def test_natural_photographs_are_not_degenerate():
    for name in ("astronaut", "coffee", "china.jpg"):
        x = F.interpolate(photographs(3)[name][None], size=(128, 128), mode="bilinear", antialias=True)[0]
        assert not is_degenerate(x), name
    crops = natural_crops(64, 3, count=40, seed=0)
    assert sum(is_degenerate(c) for c in crops) <= 8  # a few flat patches (sky, blur) are fine


# ------------------------------------------------------------------ natural crops


def test_natural_crops_are_deterministic_and_in_range():
    a = natural_crops((24, 32), 3, count=6, seed=5)
    assert a.shape == (6, 3, 24, 32) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, natural_crops((24, 32), 3, count=6, seed=5))
    assert torch.equal(a[4], natural_crops((24, 32), 3, count=1, seed=5, start=4)[0])
    assert not torch.equal(a, natural_crops((24, 32), 3, count=6, seed=6))


def test_natural_crops_in_grey():
    grey = natural_crops(16, 1, count=3, seed=0)
    assert grey.shape == (3, 1, 16, 16)
    assert set(photographs(1)) == set(photographs(3)) and len(photographs(3)) >= 10


def test_missing_photo_libraries_say_what_to_install(monkeypatch):
    quality._photos.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)
    try:
        with pytest.raises(ImportError, match="pip install scikit-image scikit-learn"):
            natural_crops(8, 3, count=1)
    finally:
        monkeypatch.undo()
        quality._photos.cache_clear()


# ------------------------------------------------------------------ act_ratio


def test_best_natural_crop_gives_ratio_one(tiny, baseline):
    for channel in (0, 1):
        assert baseline.live[channel]
        crop = baseline.best_crop(channel)
        act = unit_responses(tiny, "conv", crop[None], [channel])[0, 0]
        assert float(baseline.ratio([act], [channel])[0]) == pytest.approx(1.0, abs=1e-5)


def test_mean_response_gives_ratio_zero(tiny, baseline):
    crops = natural_crops(24, 3, count=48, seed=3)
    responses = unit_responses(tiny, "conv", crops).double()
    assert torch.allclose(responses.mean(0), baseline.mean, atol=1e-6)
    assert torch.allclose(responses.max(0).values, baseline.max)
    ratio = baseline.ratio(baseline.mean[:2], [0, 1])
    assert ratio.tolist() == [0.0, 0.0]
    assert int(responses[:, 1].argmax()) == int(baseline.argmax[1])


def test_unit_without_natural_spread_is_reported_apart(tiny, baseline):
    assert baseline.live.tolist() == [True, True, False]
    assert float(baseline.mean[2]) == pytest.approx(0.5) and float(baseline.spread[2]) == 0.0
    ratio = baseline.ratio(torch.tensor([9.0, 9.0, 9.0]))
    assert not math.isnan(float(ratio[0])) and math.isnan(float(ratio[2]))
    assert math.isnan(act_ratio(9.0, 0.5, 0.5))


def test_act_ratio_formula():
    assert act_ratio(5.0, 1.0, 3.0) == 2.0
    assert act_ratio(-1.0, 1.0, 3.0) == -1.0
    r = act_ratio(torch.tensor([2.0, 4.0]), torch.tensor(0.0), torch.tensor(2.0))
    assert r.dtype == torch.float64 and r.tolist() == [1.0, 2.0]
    assert has_spread(torch.tensor([0.0, 1e6]), torch.tensor([1e-3, 1e6 + 1e-3])).tolist() == [True, False]


def test_baseline_through_a_loaded_model_normalises():
    lm = cnnvis.load_model("lenet-digits")
    b = natural_baseline(lm, "conv1", size=32, count=20, seed=0)
    assert isinstance(b, NaturalBaseline) and b.image_channels == 1 and b.size == (32, 32)
    crop = b.best_crop(3)
    act = unit_responses(lm, "conv1", crop[None], [3])[0]
    assert float(b.ratio(act, [3])[0]) == pytest.approx(1.0, abs=1e-5)


def test_responses_leave_the_model_as_it_was(tiny):
    tiny.train()
    try:
        unit_responses(tiny, "conv", torch.rand(2, 3, 8, 8))
        assert tiny.training and not tiny.conv._forward_hooks
    finally:
        tiny.eval()


# ------------------------------------------------------------------ selectivity


def test_selectivity_of_a_diagonal_matrix():
    r = torch.eye(4) * 5 + torch.arange(16.0).view(4, 4) / 10
    s = selectivity(r)
    assert s.selective.tolist() == [True] * 4 and s.count == 4


def test_selectivity_after_swapping_pictures():
    r = torch.eye(4) * 5
    swapped = r[[1, 0, 2, 3]]  # pictures of units 0 and 1 exchanged
    s = selectivity(swapped)
    assert s.selective.tolist() == [False, False, True, True] and s.count == 2
    assert selectivity(r[[1, 2, 3, 0]]).count == 0


def test_selectivity_reads_columns():
    # unit 0's picture excites unit 1 most of all, but unit 1's own picture excites it even more
    r = torch.tensor([[3.0, 8.0], [1.0, 9.0]])
    assert selectivity(r).selective.tolist() == [True, True]
    # row-wise reading would call unit 0 unselective; column-wise, unit 1 now is not
    assert selectivity(torch.tensor([[3.0, 9.0], [1.0, 8.0]])).selective.tolist() == [True, False]


def test_selectivity_ties_and_nan_are_not_selective():
    assert selectivity([[1.0, 0.0], [1.0, 2.0]]).selective.tolist() == [False, True]
    assert selectivity([[float("nan"), 0.0], [1.0, 2.0]]).selective.tolist() == [False, True]
    assert selectivity([[0.3]]).count == 1
    with pytest.raises(ValueError):
        selectivity(torch.zeros(2, 3))


def test_docstring_examples():
    result = doctest.testmod(quality, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
