import json

import numpy as np
import pytest
import torch
from PIL import Image

import cnnvis
from cnnvis.inspection.stats import Histogram, compute_stats
from cnnvis.core.errors import InputError


@pytest.fixture
def digit_files(tmp_path):
    from sklearn.datasets import load_digits

    images = load_digits().images[:11]
    paths = []
    for i, im in enumerate(images):
        p = tmp_path / "digits" / f"class{i % 2}" / f"d{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((im * 255 / 16).astype(np.uint8), "L").save(p)
        paths.append(str(p))
    return sorted(paths)


def _brute_force(lm, paths, layer):
    """All activations in memory at once, statistics by numpy in float64."""
    x = torch.stack([lm.preprocessing.prepare(Image.open(p)) for p in paths])
    with torch.no_grad(), cnnvis.record(lm, [layer], detach=True) as rec:
        rec.run(x)
    a = rec[layer].double().numpy()  # N x C x H x W
    c = a.shape[1]
    v = a.transpose(1, 0, 2, 3).reshape(c, -1)
    per_image = a.reshape(a.shape[0], c, -1).mean(2)
    return {
        "count": len(paths), "mean": v.mean(1), "std": v.std(1), "min": v.min(1), "max": v.max(1),
        "fraction_active": (v > 0).mean(1), "per_image": per_image,
    }


def _check(result, expected, paths, top_k):
    assert result["count"] == expected["count"]
    for key in ("mean", "std", "min", "max", "fraction_active"):
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-5, atol=1e-9, err_msg=key)
    for ch, top in enumerate(result["top"]):
        order = sorted(range(len(paths)), key=lambda i: (-expected["per_image"][i, ch], paths[i]))[:top_k]
        assert top == [paths[i] for i in order]


@pytest.mark.parametrize("layer", ["conv1", "relu2"])
def test_stats_equal_brute_force(digit_files, layer):
    lm = cnnvis.load_model("lenet-digits")
    result = compute_stats(lm, [str(digit_files[0].rsplit("/", 2)[0])], [layer], batch_size=3, top_k=4)
    _check(result.to_dict()[layer], _brute_force(lm, digit_files, layer), digit_files, 4)


def test_population_of_one_and_constant_image(tmp_path):
    lm = cnnvis.load_model("lenet-digits")
    one = tmp_path / "one.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8), "L").save(one)
    r = compute_stats(lm, [str(one)], ["conv1"], batch_size=4).to_dict()["conv1"]
    _check(r, _brute_force(lm, [str(one)], "conv1"), [str(one)], 8)
    # a constant image through a conv without padding: every position of a channel is equal
    np.testing.assert_allclose(r["std"], 0.0, atol=1e-6)
    assert r["min"] == pytest.approx(r["max"], rel=1e-6)


def test_two_shards_merge_into_one_run(digit_files):
    lm = cnnvis.load_model("lenet-digits")
    whole = compute_stats(lm, digit_files, ["conv2"], batch_size=4, top_k=5)
    a = compute_stats(lm, digit_files[:4], ["conv2"], batch_size=3, top_k=5)
    b = compute_stats(lm, digit_files[4:], ["conv2"], batch_size=2, top_k=5)
    merged = a.merge(b).to_dict()["conv2"]
    one = whole.to_dict()["conv2"]
    assert merged["count"] == one["count"] == len(digit_files)
    for key in ("mean", "std", "min", "max", "fraction_active"):
        np.testing.assert_allclose(merged[key], one[key], rtol=1e-9, atol=1e-12, err_msg=key)
    assert merged["top"] == one["top"]
    ha, hw = a.merge(b).layers["conv2"].histogram, whole.layers["conv2"].histogram
    assert ha.counts.sum() == hw.counts.sum() == 11 * 16 * 10 * 10


def test_histogram_counts_and_merge():
    h = Histogram(max_bins=16)
    data = torch.randn(10000)
    h.update(data[:100])
    h.update(data[100:] * 10)  # a wider range forces the bins to merge
    assert len(h.counts) <= 16 and h.counts.sum() == 10000
    edges = h.edges()
    counts, _ = np.histogram(torch.cat([data[:100], data[100:] * 10]).numpy(), bins=edges.numpy())
    assert np.abs(counts - h.counts.numpy()).sum() <= 2  # equal up to values on bin edges
    g = Histogram(max_bins=16)
    g.update(data[:50] + 100)
    merged = h.merge(g)
    assert merged.counts.sum() == 10050 and len(merged.counts) <= 16


def test_top_k_and_json_shape_on_rgb_model(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray((rng.random((20, 30, 3)) * 255 * (i + 1) / 5).astype(np.uint8)).save(tmp_path / f"{i}.png")
    lm = cnnvis.load_model("resnet18", "none", size=32)
    r = compute_stats(lm, [str(tmp_path)], ["layer1", "fc"], top_k=2, batch_size=2).to_dict()
    assert set(r) == {"layer1", "fc"}
    assert len(r["layer1"]["mean"]) == 64 and len(r["fc"]["mean"]) == 1000
    assert all(len(t) == 2 for t in r["layer1"]["top"])
    json.dumps(r)


def test_bad_inputs(tmp_path, digit_files):
    lm = cnnvis.load_model("lenet-digits")
    bad = tmp_path / "digits" / "class0" / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="notes.png is not a readable image"):
        compute_stats(lm, [str(tmp_path / "digits")], ["conv1"])
    r = compute_stats(lm, [str(tmp_path / "digits")], ["conv1"], skip_bad=True)
    assert r.layers["conv1"].count == 11 and [p for p, _ in r.skipped] == [str(bad)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image files"):
        compute_stats(lm, [str(tmp_path / "empty")], ["conv1"])
    with pytest.raises(cnnvis.UnknownLayerError, match="conv1"):
        compute_stats(lm, digit_files, ["conv3"])
    r = compute_stats(lm, digit_files, ["conv1"], limit=3)
    assert r.layers["conv1"].count == 3
