"""Dataset examples: the strongest and weakest images of a unit, cut to its receptive field."""

import pytest
import torch
from torch import nn

import cnnvis
from cnnvis.atlas.examples import collect_examples, crop_box, example_saliency


class Strided(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.b = nn.Conv2d(2, 3, 3, stride=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_crop_is_the_patch_the_theoretical_receptive_field_names():
    lm = cnnvis.load_model(Strided(), size=16, channels=1)
    images = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    ex = collect_examples(lm, ["b"], images, k=5)["b"]
    (rf,) = cnnvis.receptive_fields(lm, ["b"], size=16)
    assert rf.size == (7, 7) and rf.jump == (2, 2)
    for e in ex.top[1] + ex.bottom[2]:
        t, l, b, r = rf.region(e.y, e.x)
        inside = (max(t, 0), max(l, 0), min(b, 15), min(r, 15))
        assert ex.box(e) == inside
        assert torch.equal(ex.crop(e), images[e.image][:, inside[0] : inside[2] + 1, inside[1] : inside[3] + 1])


def test_examples_are_the_images_with_the_extreme_responses_one_per_image():
    lm = cnnvis.load_model(Strided(), size=16, channels=1)
    images = torch.rand(9, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    ex = collect_examples(lm, ["b"], images, k=4, batch_size=4)["b"]  # batches of 4: merging across batches
    with torch.no_grad():
        out = lm.model(images)[:, 2].flatten(1)
    assert [e.image for e in ex.top[2]] == out.amax(1).argsort(descending=True)[:4].tolist()
    assert [e.image for e in ex.bottom[2]] == out.amin(1).argsort()[:4].tolist()
    for e in ex.top[2]:
        assert e.value == pytest.approx(float(out[e.image].max()))
        assert float(out[e.image, e.y * 6 + e.x]) == pytest.approx(e.value)  # the position is the peak's
    assert torch.equal(ex.peaks[2], out.amax(1))


def test_saliency_is_the_input_gradient_of_that_position_over_the_patch():
    lm = cnnvis.load_model(Strided(), size=16, channels=1)
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    ex = collect_examples(lm, ["b"], images, k=2)["b"]
    maps = example_saliency(lm, ex, 0, ex.top[0])
    for e, m in zip(ex.top[0], maps):
        x = images[e.image : e.image + 1].clone().requires_grad_(True)
        lm.model(x)[0, 0, e.y, e.x].backward()
        t, l, b, r = ex.box(e)
        assert torch.allclose(m, x.grad[0].abs().sum(0)[t : b + 1, l : r + 1])
        outside = x.grad[0].abs().sum(0).clone()
        outside[t : b + 1, l : r + 1] = 0
        assert float(outside.max()) == 0  # nothing outside the receptive field matters


def test_crop_box_fills_outside_the_image():
    image = torch.arange(4.0).view(1, 2, 2)
    assert crop_box(image, (-1, -1, 0, 0), fill=9.0).tolist() == [[[9.0, 9.0], [9.0, 0.0]]]
