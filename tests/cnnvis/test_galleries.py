import filecmp
import json
import os

import pytest

import cnnvis
from cnnvis.errors import InputError
from cnnvis.galleries import build_gallery, parse_shard

SMALL = dict(filters="0-4", steps=4, batch_size=2, preset="plain")


def _files(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


def _pngs(folder):
    return [f for f in _files(folder) if f.endswith(".png")]


def _strip_timing(rec):
    rec = json.loads(json.dumps(rec))
    for part in (rec.get("images") or {}).values():
        part.pop("seconds", None)
    return rec


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
            assert f"maximize/{layer}/plain/{f:04d}.png" in files
            assert f"records/{layer}/{f}.json" in files
            assert f"units/{layer}/{f}.html" in files
            assert f"kernels/{layer}/filter-{f:04d}.png" in files
        assert f"layers/{layer}.html" in files
    manifest = json.loads((reference / "manifest.json").read_text())
    assert [l["name"] for l in manifest["layers"]] == ["conv1", "conv2"]  # stage layers, shallow to deep
    assert len(manifest["units"]) == 10 and manifest["missing"] == 0
    unit = manifest["units"][0]
    rec = unit["images"]["plain"]
    assert rec["objective_final"] > rec["objective_initial"] and rec["steps"] == 4 and rec["seed"] == 0
    assert unit["kernel"] == "kernels/conv1/filter-0000.png"


def test_resume_after_interrupt_equals_one_run(lenet, reference, tmp_path):
    out = tmp_path / "g"
    calls = {"n": 0}

    def stop_after_three(done, total):  # Ctrl-C in the middle of the second batch
        calls["n"] += 1
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_gallery(lenet, str(out), progress=stop_after_three, **SMALL)
    assert not [f for f in _files(out) if f.endswith(".tmp")]  # nothing half-written
    first = {f: os.stat(out / f).st_mtime_ns for f in _pngs(out)}
    assert 0 < len([f for f in first if f.startswith("maximize/")]) < 10
    summary = build_gallery(lenet, str(out), **SMALL)
    assert summary.skipped == 2 and summary.computed == 8  # the first batch was finished, the second was not
    assert _files(out) == _files(reference)
    for f in _pngs(out):  # same pixels as one uninterrupted run
        assert filecmp.cmp(out / f, reference / f, shallow=False), f
    for f, stamp in first.items():  # finished images were not rewritten
        assert os.stat(out / f).st_mtime_ns == stamp, f
    for layer in ("conv1", "conv2"):
        for f in range(5):
            a = json.loads((out / f"records/{layer}/{f}.json").read_text())
            b = json.loads((reference / f"records/{layer}/{f}.json").read_text())
            assert _strip_timing(a) == _strip_timing(b)
    again = build_gallery(lenet, str(out), **SMALL)
    assert again.computed == 0 and again.pages == 0


def test_two_shards_equal_one_run(lenet, reference, tmp_path):
    out = tmp_path / "s"
    a = build_gallery(lenet, str(out), shard="0/2", **SMALL)
    b = build_gallery(lenet, str(out), shard="1/2", **SMALL)
    assert a.computed + b.computed == 10 and a.computed > 0 and b.computed > 0
    assert _files(out) == _files(reference)
    for f in _pngs(out):
        assert filecmp.cmp(out / f, reference / f, shallow=False), f
    assert json.loads((out / "manifest.json").read_text())["missing"] == 0


def test_shard_parsing(monkeypatch):
    assert parse_shard("2/3") == (2, 3)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard(None) == (1, 4)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(InputError, match="shard"):
            parse_shard(bad)


def test_force_and_changed_settings_recompute(lenet, tmp_path):
    out = tmp_path / "f"
    build_gallery(lenet, str(out), **SMALL)
    assert build_gallery(lenet, str(out), **SMALL).computed == 0
    changed = dict(SMALL, steps=5)
    assert build_gallery(lenet, str(out), **changed).computed == 10  # a different setting is not "finished"
    assert build_gallery(lenet, str(out), force=True, **changed).computed == 10


def test_escaping_user_layer_names(tmp_path, monkeypatch):
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


def test_images_add_statistics_top_images_and_saliency(lenet, tmp_path):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = tmp_path / "digits"
    digits.mkdir()
    data = load_digits()
    for i in range(12):
        Image.fromarray((data.images[i] * 255 / 16).astype(np.uint8), "L").save(digits / f"{i:02d}.png")
    out = tmp_path / "g"
    build_gallery(lenet, str(out), filters="0-1", steps=2, preset="plain", images=[str(digits)], top_k=3)
    rec = json.loads((out / "records/conv2/1.json").read_text())
    stats = cnnvis.compute_stats(lenet, [str(digits)], ["conv2"], top_k=3).to_dict()["conv2"]
    assert rec["stats"]["mean"] == pytest.approx(stats["mean"][1])
    assert rec["stats"]["fraction_active"] == pytest.approx(stats["fraction_active"][1])
    assert [t["name"] for t in rec["top"]] == [os.path.basename(p) for p in stats["top"][1]]
    for t in rec["top"]:
        assert (out / t["image"]).exists() and (out / t["saliency"]).exists()
    assert (out / "stats/stats.json").exists()
    layer_page = (out / "layers/conv2.html").read_text()
    assert "stats/conv2-histogram.png" in layer_page


def test_bad_requests(lenet, tmp_path):
    with pytest.raises(cnnvis.UnknownLayerError):
        build_gallery(lenet, str(tmp_path), layers=["conv9"], steps=1)
    with pytest.raises(InputError, match="no spatial output"):
        build_gallery(lenet, str(tmp_path), layers=["fc1"], steps=1)
    with pytest.raises(InputError, match="preset"):
        build_gallery(lenet, str(tmp_path), preset="fancy", steps=1)


def test_objective_choice_is_recorded_and_changes_the_images(lenet, reference, tmp_path):
    import numpy as np
    from PIL import Image

    out = tmp_path / "mean"
    build_gallery(lenet, str(out), objective="channel-mean", **SMALL)
    rec = json.loads((out / "records/conv2/1.json").read_text())["images"]["plain"]
    assert rec["objective"] == "channel-mean"
    assert json.loads((out / "manifest.json").read_text())["settings"]["objective"] == "channel-mean"
    a = np.asarray(Image.open(out / "maximize/conv2/plain/0001.png"))
    b = np.asarray(Image.open(reference / "maximize/conv2/plain/0001.png"))
    assert not np.array_equal(a, b)
    with pytest.raises(InputError, match="objective"):
        build_gallery(lenet, str(tmp_path / "x"), objective="class", **SMALL)
