"""Dataset examples: the strongest and weakest images of a unit, cut to its receptive field."""

import pytest
import torch
from torch import nn

import cnnvis
import cnnvis.atlas.examples
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


@pytest.mark.parametrize("per_pass", [None, 1, 2])
def test_saliency_is_the_input_gradient_of_that_position_over_the_patch(per_pass, monkeypatch):
    if per_pass is not None:  # the images differentiated together: however many, each gradient is its own
        monkeypatch.setattr(cnnvis.atlas.examples, "SALIENCY_PIXELS", per_pass * 16 * 16)
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


def test_releasing_the_bundled_crops_makes_the_same_crops_again(tmp_path):
    lm = cnnvis.load_model("lenet-digits")
    bundled = cnnvis.atlas.examples.ImageSet(lm)
    first, names = bundled.load()
    first = first.clone()
    bundled.release()
    assert bundled._images is None  # forked workers do not carry them
    again, names_again = bundled.load()
    assert torch.equal(first, again) and names == names_again
    from PIL import Image
    Image.new("L", (32, 32), 200).save(tmp_path / "a.png")
    files = cnnvis.atlas.examples.ImageSet(lm, [str(tmp_path)])
    kept = files.load()
    files.release()
    assert files.load() is kept  # a user's files are not read twice


def test_one_dataset_pass_gives_the_examples_and_the_statistics_of_two():
    """The gallery's dataset pass (examples and statistics from one forward pass a batch) equals the two
    passes it replaced, value for value, and runs the model once per batch."""
    from cnnvis.atlas.analysis import dataset_pass
    from cnnvis.core.memory import images_per_batch
    from cnnvis.inspection.stats import stats_from_batches

    lm = cnnvis.load_model(Strided(), size=16, channels=1)
    images = torch.rand(70, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    names = [f"i{k}" for k in range(70)]
    calls = []
    handle = lm.model.a.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        ex, stats = dataset_pass(lm, ["a", "b"], images, names, 4, ["a", "b"])
    finally:
        handle.remove()
    step = images_per_batch((16, 16))
    # one pass over the images (the other calls are the one-image probes of the model's shapes)
    assert step < 70 and [c for c in calls if c > 1] == [len(images[i : i + step]) for i in range(0, 70, step)]
    alone = collect_examples(lm, ["a", "b"], images, names=names, k=4)
    two = stats_from_batches(lm, ((images[i : i + step], names[i : i + step]) for i in range(0, 70, step)), ["a", "b"],
                             total=70, top_k=0)
    for layer in ("a", "b"):
        assert torch.equal(ex[layer].strongest, alone[layer].strongest) and ex[layer].top == alone[layer].top
        for field in ("n", "mean", "m2", "min", "max", "active"):
            assert torch.equal(getattr(stats.layers[layer], field), getattr(two.layers[layer], field)), (layer, field)
        assert stats.layers[layer].count == two.layers[layer].count == 70


class SamePadded(nn.Module):
    """TensorFlow-style "same" padding before each stride-2 convolution (one pixel right and below on an even
    size): the padding depends on the size's parity, as in EfficientNet-Lite."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a = nn.Conv2d(3, 4, 3, stride=2)
        self.b = nn.Conv2d(4, 4, 3, stride=2)
        self.c = nn.Conv2d(4, 5, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.a(nn.functional.pad(x, (0, 1, 0, 1))))
        x = torch.relu(self.b(nn.functional.pad(x, (0, 1, 0, 1))))
        return self.c(x)


def _true_saliency(lm, images, e, layer_out):
    x = images[e.image : e.image + 1].clone().requires_grad_(True)
    layer_out(x)[0, 0, e.y, e.x].backward()
    return x.grad[0].abs().sum(0)


def test_saliency_on_a_window_of_the_image_is_the_whole_images_gradient():
    lm = cnnvis.load_model(SamePadded(), size=64, channels=3)
    images = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    ex = collect_examples(lm, ["c"], images, k=6)["c"]
    which = ex.top[0] + ex.bottom[0]
    windows = [cnnvis.atlas.examples.saliency_window(ex, e) for e in which]
    assert sum(w is not None for w in windows) >= 6  # most fields (15 px, stride 4) are far smaller than 64 px
    for e, w in zip(which, windows):
        if w is not None:
            top, left, bottom, right = w
            assert top % 4 == left % 4 == 0 and (bottom % 4 == 0 or bottom == 64) and (right % 4 == 0 or right == 64)
            t, l, b, r = ex.box(e)
            assert top <= t and left <= l and b < bottom and r < right
    maps = example_saliency(lm, ex, 0, which)
    assert ex.windows_agree is True
    for e, m in zip(which, maps):
        t, l, b, r = ex.box(e)
        assert torch.allclose(m, _true_saliency(lm, images, e, lm.model)[t : b + 1, l : r + 1], atol=1e-6)


def test_windows_that_disagree_with_the_whole_image_are_not_used(monkeypatch):
    lm = cnnvis.load_model(SamePadded(), size=64, channels=3)
    images = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    ex = collect_examples(lm, ["c"], images, k=6)["c"]
    real = cnnvis.atlas.examples.saliency_window

    def too_small(examples, e):  # a window that cuts through the field: its gradient is not the image's
        w = real(examples, e)
        return None if w is None else (w[0] + 8, w[1] + 8, w[2], w[3])  # the field starts 4 px or less inside

    monkeypatch.setattr(cnnvis.atlas.examples, "saliency_window", too_small)
    which = [e for e in ex.top[1] if real(ex, e) is not None]
    assert which
    maps = example_saliency(lm, ex, 1, which)
    assert ex.windows_agree is False
    for e, m in zip(which, maps):
        t, l, b, r = ex.box(e)
        assert torch.allclose(m, _true_saliency(lm, images, e, lambda x: lm.model(x)[:, 1:])[t : b + 1, l : r + 1],
                              atol=1e-6)
