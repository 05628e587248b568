"""What the gallery adds to the one pipeline: layers, kernels, statistics, examples, the gallery section."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import cnnvis
from cnnvis.errors import InputError
from cnnvis.galleries import GalleryRequest, build_gallery
from cnnvis.runs import run_maximize

SMALL = dict(filters="0-4", steps=4, batch_size=2, preset="plain")


def _files(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs
                  if not f.startswith("."))


@pytest.fixture(scope="module")
def lenet():
    return cnnvis.load_model("lenet-digits")


@pytest.fixture(scope="module")
def reference(lenet, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    build_gallery(lenet, str(out), **SMALL)
    return out


def test_layout_and_manifest(reference):
    files = _files(reference)
    for layer in ("conv1", "conv2"):
        for f in range(5):
            assert f"{layer}/channel-l2-plain/{f:04d}.png" in files
            assert f"units/{layer}/{f}.html" in files
            assert f"kernels/{layer}/filter-{f:04d}.png" in files
        assert f"layers/{layer}.html" in files and f"{layer}/channel-l2-plain/grid.png" in files
    manifest = json.loads((reference / "manifest.json").read_text())
    gallery = manifest["gallery"]
    assert [l["name"] for l in gallery["layers"]] == ["conv1", "conv2"]  # stage layers, shallow to deep
    assert gallery["settings"]["variants"] == ["channel-l2-plain"]
    assert len(manifest["records"]) == 10 and manifest["model"]["name"] == "lenet-digits"
    rec = [r for r in manifest["records"] if (r["layer"], r["filter"]) == ("conv1", 0)][0]
    assert rec["objective_final"] > rec["objective_initial"] and rec["steps"] == 4 and rec["seed"] == 0
    assert gallery["layers"][0]["kernels"]["0"] == "kernels/conv1/filter-0000.png"


def test_rerun_computes_nothing_and_changed_settings_recompute(lenet, reference, tmp_path):
    again = build_gallery(lenet, str(reference), **SMALL)
    assert again.computed == 0 and again.pages == 0 and again.skipped == 10
    assert build_gallery(lenet, str(reference), **dict(SMALL, steps=5)).computed == 10
    assert build_gallery(lenet, str(reference), force=True, **dict(SMALL, steps=5)).computed == 10


def test_a_maximize_folder_renders_as_a_gallery_without_recomputing(lenet, tmp_path):
    out = tmp_path / "m"
    run_maximize(lenet, ["conv2"], "0-2", out_dir=str(out), steps=3, preset="plain", batch_size=2)
    stamps = {f: os.stat(out / f).st_mtime_ns for f in _files(out) if f.endswith(".png") and "grid" not in f}
    summary = build_gallery(lenet, str(out), layers=["conv2"], filters="0-2", steps=3, preset="plain",
                            objective="channel-l2", batch_size=2)
    assert summary.images_written == 0 and summary.skipped == 3
    for f, stamp in stamps.items():
        assert os.stat(out / f).st_mtime_ns == stamp
    page = (out / "units/conv2/1.html").read_text()
    assert "../../conv2/channel-l2-plain/0001.png" in page
    # a second variant from another maximize shows on the same unit page, after the gallery's own
    run_maximize(lenet, ["conv2"], "1", out_dir=str(out), steps=3, preset="plain", objective="channel-mean")
    page = (out / "units/conv2/1.html").read_text()
    assert page.index("channel-l2-plain/0001.png") < page.index("channel-mean-plain/0001.png")


def test_escaping_user_layer_names(tmp_path):
    from torch import nn

    net = nn.Sequential()
    net.add_module("<script>alert(1)</script>", nn.Conv2d(3, 2, 3))
    net.add_module("act", nn.ReLU())
    lm = cnnvis.load_model(net, size=16)
    out = tmp_path / "x"
    build_gallery(lm, str(out), filters="all", steps=2, preset="plain")
    for page in out.rglob("*.html"):
        assert "<script>alert" not in page.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (out / "index.html").read_text()


def _digits(folder, n=12, offset=0):
    from sklearn.datasets import load_digits

    folder.mkdir(exist_ok=True)
    data = load_digits()
    for i in range(n):
        Image.fromarray((data.images[i + offset] * 255 / 16).astype(np.uint8), "L").save(folder / f"{i:02d}.png")
    return folder


def test_images_add_statistics_top_images_and_saliency(lenet, tmp_path):
    digits = _digits(tmp_path / "digits")
    out = tmp_path / "g"
    build_gallery(lenet, str(out), filters="0-1", steps=2, preset="plain", images=[str(digits)], top_k=3)
    entry = json.loads((out / "manifest.json").read_text())["gallery"]["units"]["conv2/1"]
    stats = cnnvis.compute_stats(lenet, [str(digits)], ["conv2"], top_k=3).to_dict()["conv2"]
    assert entry["stats"]["mean"] == pytest.approx(stats["mean"][1])
    assert entry["stats"]["fraction_active"] == pytest.approx(stats["fraction_active"][1])
    assert [t["name"] for t in entry["top"]] == [os.path.basename(p) for p in stats["top"][1]]
    for t in entry["top"]:
        assert (out / t["image"]).exists() and (out / t["saliency"]).exists()
    assert (out / "stats/stats.json").exists()
    assert "stats/conv2-histogram.png" in (out / "layers/conv2.html").read_text()
    # unchanged images: nothing recomputed; the same names with other contents: recomputed
    assert build_gallery(lenet, str(out), filters="0-1", steps=2, preset="plain", images=[str(digits)],
                         top_k=3).computed == 0
    _digits(digits, offset=100)
    again = build_gallery(lenet, str(out), filters="0-1", steps=2, preset="plain", images=[str(digits)], top_k=3)
    assert again.computed == 4 and again.images_written == 0
    changed = json.loads((out / "manifest.json").read_text())["gallery"]["units"]["conv2/1"]
    fresh = cnnvis.compute_stats(lenet, [str(digits)], ["conv2"], top_k=3).to_dict()["conv2"]
    assert changed["stats"]["mean"] == pytest.approx(fresh["mean"][1]) != pytest.approx(stats["mean"][1])


def test_bad_requests(lenet, tmp_path):
    with pytest.raises(cnnvis.UnknownLayerError):
        build_gallery(lenet, str(tmp_path), layers=["conv9"], steps=1)
    with pytest.raises(InputError, match="no spatial output"):
        build_gallery(lenet, str(tmp_path), layers=["fc1"], steps=1)
    with pytest.raises(InputError, match="preset"):
        build_gallery(lenet, str(tmp_path), preset="fancy", steps=1)
    with pytest.raises(InputError, match="objective"):
        GalleryRequest(objective="class")
    with pytest.raises(TypeError, match="unknown gallery option"):
        build_gallery(lenet, str(tmp_path), colour="red")


def test_objective_choice_is_recorded_and_changes_the_images(lenet, reference, tmp_path):
    out = tmp_path / "mean"
    build_gallery(lenet, str(out), objective="channel-mean", **SMALL)
    manifest = json.loads((out / "manifest.json").read_text())
    rec = [r for r in manifest["records"] if (r["layer"], r["filter"]) == ("conv2", 1)][0]
    assert rec["objective"] == "channel-mean" and rec["variant"] == "channel-mean-plain"
    assert manifest["gallery"]["settings"]["objective"] == "channel-mean"
    a = np.asarray(Image.open(out / "conv2/channel-mean-plain/0001.png"))
    b = np.asarray(Image.open(reference / "conv2/channel-l2-plain/0001.png"))
    assert not np.array_equal(a, b)
