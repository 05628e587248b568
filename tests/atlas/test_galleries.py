"""What the gallery adds to the one pipeline: layers, kernels, statistics, examples, the gallery section."""

import json
import os
import re
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

import cnnvis
from cnnvis.core.errors import InputError
from cnnvis.atlas.galleries import GalleryRequest
from cnnvis.gallery.site import build_gallery
from cnnvis.gallery.site import run_maximize

SMALL = dict(filters="0-4", steps=4, batch_size=2, preset="plain", objective="channel-l2", examples=False, classes=0,
             inputs=0, dreams=False)


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
        # no grid PNG: the layer page shows the pictures themselves
        assert f"layers/{layer}.html" in files and f"{layer}/channel-l2-plain/grid.png" not in files
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
                            objective="channel-l2", batch_size=2, examples=False, classes=0, inputs=0)
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
    build_gallery(lm, str(out), filters="all", steps=2, preset="plain", examples=False, classes=0)
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


def test_images_give_examples_statistics_and_histograms(lenet, tmp_path):
    digits = _digits(tmp_path / "digits")
    out = tmp_path / "g"
    kw = dict(filters="0-1", steps=2, preset="plain", images=[str(digits)], top_k=3, classes=0, inputs=0)
    build_gallery(lenet, str(out), **kw)
    entry = json.loads((out / "manifest.json").read_text())["gallery"]["units"]["conv2/1"]
    # one quantity: the unit's response is what the next layer reads, conv2 -> relu2
    assert entry["chain"] == ["conv2", "relu2"] and entry["reads"] == "relu2"
    computed = cnnvis.compute_stats(lenet, [str(digits)], ["conv2", "relu2"], top_k=3).to_dict()
    stats, raw = computed["relu2"], computed["conv2"]
    assert entry["stats"]["mean"] == pytest.approx(stats["mean"][1])
    assert entry["stats"]["fraction_active"] == pytest.approx(stats["fraction_active"][1])
    assert entry["stats"]["min"] >= 0 and entry["raw_stats"]["mean"] == pytest.approx(raw["mean"][1])
    # the strongest examples are the images with the largest response anywhere in the map
    x = torch.stack([lenet.preprocessing.prepare(Image.open(p)) for p in sorted(digits.iterdir())])
    with torch.no_grad(), cnnvis.record(lenet, ["conv2"], stop=True) as rec:
        rec.run(x)
    peaks = rec["conv2"][:, 1].flatten(1).amax(1)
    expected = [f"{int(i):02d}.png" for i in peaks.argsort(descending=True)[:3]]
    assert [t["name"] for t in entry["top"]] == expected
    assert [t["pre"] for t in entry["top"]] == pytest.approx(peaks.sort(descending=True).values[:3].tolist())
    assert [t["value"] for t in entry["top"]] == pytest.approx(peaks.sort(descending=True).values[:3].relu().tolist())
    assert len(entry["bottom"]) == 3 and entry["bottom"][0]["pre"] <= entry["bottom"][-1]["pre"]
    # the statistics cover the examples: they describe the same quantity
    values = [t["value"] for t in entry["top"] + entry["bottom"]]
    assert entry["stats"]["max"] >= max(values) - 1e-6 and entry["stats"]["min"] <= min(values) + 1e-6
    for t in entry["top"] + entry["bottom"]:
        assert (out / t["image"]).exists() and (out / t["saliency"]).exists()
    assert sum(entry["histogram"]["counts"]) == 12
    assert (out / "stats/stats.json").exists()
    assert "stats/conv2-histogram.png" in (out / "layers/conv2.html").read_text()
    # unchanged images: nothing recomputed; the same names with other contents: recomputed
    assert build_gallery(lenet, str(out), **kw).computed == 0
    _digits(digits, offset=100)
    again = build_gallery(lenet, str(out), **kw)
    assert again.computed == 4 and again.images_written == 0
    changed = json.loads((out / "manifest.json").read_text())["gallery"]["units"]["conv2/1"]
    fresh = cnnvis.compute_stats(lenet, [str(digits)], ["relu2"], top_k=3).to_dict()["relu2"]
    assert changed["stats"]["mean"] == pytest.approx(fresh["mean"][1]) != pytest.approx(stats["mean"][1])


def test_without_images_the_bundled_photographs_give_examples(lenet, tmp_path):
    out = tmp_path / "s"
    build_gallery(lenet, str(out), layers=["conv1"], filters="1", steps=2, preset="plain", classes=0, inputs=0)
    gallery = json.loads((out / "manifest.json").read_text())["gallery"]
    entry = gallery["units"]["conv1/0"]
    assert len(entry["top"]) == 10 and len(entry["bottom"]) == 10 and entry["stats"]["count"] == 320
    assert all(t["name"].startswith("sample crop") for t in entry["top"])
    assert gallery["settings"]["images"] == "sample"
    page = (out / "units/conv1/0.html").read_text()
    assert "Dataset examples: strongest" in page and f'src="../../{entry["top"][0]["image"]}"' in page
    layer_page = (out / "layers/conv1.html").read_text()  # and a DeepDream of the layer on a bundled photograph
    with Image.open(out / "dreams/conv1.webp") as im:  # a WebP: a photograph changed, not a measurement
        assert im.format == "WEBP" and im.size[0] > 1.5 * im.size[1]  # the photo and its dream, side by side
    assert "DeepDream of this layer" in layer_page and 'src="../dreams/conv1.webp"' in layer_page


def test_more_pictures_per_unit_strongest_inputs_and_class_row(lenet, tmp_path):
    out = tmp_path / "m"
    build_gallery(lenet, str(out), layers=["conv2"], filters="5-5", steps=3, preset="plain", examples=False,
                  negative=True, neuron=True, diversity=2, inputs=2, classes=2)
    manifest = json.loads((out / "manifest.json").read_text())
    variants = sorted(r["variant"] for r in manifest["records"] if (r["layer"], r["filter"]) == ("conv2", 5))
    assert variants == ["channel-relu-plain", "channel-relu-plain-diverse2-0", "channel-relu-plain-diverse2-1",
                        "channel-relu-plain-negative", "neuron-plain"]
    page = (out / "units/conv2/5.html").read_text()
    for words in ("Negative", "Neuron", "Diverse pictures", "Strongest inputs"):
        assert words in page
    # every strongest input of conv2:5 is a unit of conv1 with its own picture and page
    from cnnvis.atlas.circuits import strongest_inputs

    s = strongest_inputs(lenet, "conv2", 5, k=2)
    for link in s.excitatory + s.inhibitory:
        assert f'href="../../units/conv1/{link.channel}.html"' in page
        assert (out / "units" / "conv1" / f"{link.channel}.html").is_file()
    classes = [r for r in manifest["records"] if r["layer"] == "output"]
    assert len(classes) == 2 and len(manifest["gallery"]["classes"]) == 2
    assert "Class logits" in (out / "index.html").read_text()


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
    build_gallery(lenet, str(out), **dict(SMALL, objective="channel-mean"))
    manifest = json.loads((out / "manifest.json").read_text())
    rec = [r for r in manifest["records"] if (r["layer"], r["filter"]) == ("conv2", 1)][0]
    assert rec["objective"] == "channel-mean" and rec["variant"] == "channel-mean-plain"
    assert manifest["gallery"]["settings"]["objective"] == "channel-mean"
    a = np.asarray(Image.open(out / "conv2/channel-mean-plain/0001.png"))
    b = np.asarray(Image.open(reference / "conv2/channel-l2-plain/0001.png"))
    assert not np.array_equal(a, b)


def test_the_atlas_writes_pages_only_through_the_renderer_it_is_handed(lenet, tmp_path):
    from cnnvis.atlas import galleries, runs
    from cnnvis.gallery.render import render_site

    kw = dict(layers=["conv1"], filters="1", steps=2, preset="plain", examples=False, classes=0, inputs=0)
    bare = galleries.build_gallery(lenet, str(tmp_path / "bare"), **kw)
    assert bare.pages == 0 and not (tmp_path / "bare" / "index.html").exists()
    stored = json.loads((tmp_path / "bare" / "manifest.json").read_text())
    assert stored["gallery"]["layers"][0]["name"] == "conv1" and [r["layer"] for r in stored["records"]] == ["conv1"]

    calls = []

    def renderer(folder, manifest):
        written = render_site(folder, manifest)
        calls.append((folder, sorted({(r["layer"], r["filter"]) for r in manifest["records"]}), len(written)))
        return written

    handed = galleries.build_gallery(lenet, str(tmp_path / "handed"), renderer=renderer, **kw)
    handed_records = json.loads((tmp_path / "handed" / "manifest.json").read_text())["records"]
    assert calls == [(str(tmp_path / "handed"), sorted({(r["layer"], r["filter"]) for r in handed_records}),
                      handed.pages)]
    assert handed.pages > 0
    assert (tmp_path / "handed" / "index.html").is_file()
    # a maximize into that gallery folder re-renders it through the renderer it is handed, and only then
    runs.run_maximize(lenet, ["conv1"], "4", out_dir=str(tmp_path / "handed"), steps=2)
    assert len(calls) == 1
    runs.run_maximize(lenet, ["conv1"], "5", out_dir=str(tmp_path / "handed"), steps=2, renderer=renderer)
    assert len(calls) == 2
    # the public call hands in the site's renderer
    assert cnnvis.build_gallery.__wrapped__ is galleries.build_gallery
    assert cnnvis.build_gallery(lenet, str(tmp_path / "public"), **kw).pages > 0


def test_examples_are_stored_once_at_the_size_shown_and_the_site_stays_small(lenet, tmp_path):
    from PIL import Image

    from cnnvis.atlas.examples import EXAMPLE_SIDE, OVERLAY_SIDE

    out = tmp_path / "small"
    summary = build_gallery(lenet, str(out), layers=["conv1", "conv2"], filters="4", steps=2, preset="plain",
                            classes=0, inputs=0)
    units = json.loads((out / "manifest.json").read_text())["gallery"]["units"]
    files = set()
    for entry in units.values():
        for item in entry["top"] + entry["bottom"]:
            with Image.open(out / item["image"]) as im:  # the size the page shows (a tiny crop: by whole pixels)
                assert im.format == "WEBP" and EXAMPLE_SIDE // 2 < max(im.size) <= EXAMPLE_SIDE, (item["image"], im.size)
                shown = im.size
            with Image.open(out / item["saliency"]) as heat:  # a small overlay with the example's shape
                assert heat.mode == "P" and "transparency" in heat.info and max(heat.size) <= OVERLAY_SIDE
                assert abs(heat.size[0] / heat.size[1] - shown[0] / shown[1]) < 0.25
            files.update((item["image"], item["saliency"]))
    on_disk = {f"examples/{name}" for name in os.listdir(out / "examples")}
    assert on_disk == files  # each file once, named by its content: units that share a crop share the file
    assert len(files) < sum(2 * (len(e["top"]) + len(e["bottom"])) for e in units.values())
    css = (out / "static" / "gallery.css").read_text()
    assert f".examples img {{ width: {EXAMPLE_SIDE}px; height: {EXAMPLE_SIDE}px;" in css
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    per_unit = total / summary.units
    assert per_unit < 75_000, per_unit  # everything: pictures, examples, pages, kernels, records, export (53 KB)
    assert not list(out.glob("kernels/*/filters*.png"))  # the pages lay kernels out themselves: no grid image


def test_the_time_left_weighs_work_by_its_cost(monkeypatch):
    from cnnvis.atlas import galleries

    clock = [0.0]
    monkeypatch.setattr(galleries.time, "perf_counter", lambda: clock[0])
    lines = []
    reporter = galleries._Reporter(None, lines.append)
    reporter.total, reporter.work = 30.0, 10.0  # 20 big pictures cost 8; 10 units' examples cost 2
    report = reporter.phase(20, 8.0)
    clock[0] = 40.0
    report(10, 20)  # half the pictures: 4 of 10 spent in 40 s
    assert reporter.stamp() == "(40 s; about 1 min left)"
    clock[0] = 80.0
    reporter.end_phase("pictures finished")
    clock[0] = 90.0
    reporter.finish(5, "examples of 5 units finished", 1.0)
    clock[0] = 100.0
    reporter.finish(5, "examples of 5 units finished", 1.0)
    # counted in pictures, 20 of 30 done at 80 s would promise 40 s more; weighed, the examples take 20 s
    assert lines == ["pictures finished (80 s; about 20 s left)", "examples of 5 units finished (90 s; about 10 s left)",
                     "examples of 5 units finished (100 s)"]


def test_examples_finished_while_the_pictures_are_drawn_add_to_their_progress(monkeypatch):
    from cnnvis.atlas import galleries

    clock = [0.0]
    monkeypatch.setattr(galleries.time, "perf_counter", lambda: clock[0])
    ticks, lines = [], []
    reporter = galleries._Reporter(lambda d, t: ticks.append((d, t)), lines.append)
    reporter.total, reporter.work = 30.0, 10.0  # 20 pictures cost 8; 10 units' examples cost 2
    report = reporter.phase(20, 8.0)
    clock[0] = 20.0
    report(5, 20)  # a quarter of the pictures: 2 spent
    reporter.finish(5, "examples of 5 units finished", 1.0)  # beside them: 3 of 10 spent in 20 s
    assert ticks[-1] == (10.0, 30.0) and lines == ["examples of 5 units finished (20 s; about 47 s left)"]
    report(10, 20)  # half the pictures: 4 + 1
    assert ticks[-1] == (15.0, 30.0) and reporter.spent == 5.0
    reporter.finish(5, "", 1.0)
    clock[0] = 60.0
    report(20, 20)
    reporter.end_phase()
    assert ticks[-1] == (30.0, 30.0) and reporter.spent == reporter.work == 10.0
    assert reporter.stamp() == "(60 s)"


def test_large_pictures_take_fewer_steps_unless_steps_are_given(lenet):
    from cnnvis.atlas.galleries import DEFAULT_STEPS, LARGE_STEPS

    def steps(req, layers=("conv1", "conv2")):
        sizes = req.sizes(lenet, list(layers))
        per = req.steps_for(lenet, list(layers), sizes)
        main = req.image_request(sizes, per)
        linked = req.linked_request(sizes, per)
        return ({layer: main.settings("robust", layer).steps for layer in layers},
                {layer: linked.settings("robust", layer).steps for layer in layers},
                req.class_request(lenet, [3]).settings("robust").steps)

    # LeNet's 32 px pictures are small: the default steps everywhere, half for the strongest inputs
    assert steps(GalleryRequest()) == ({"conv1": DEFAULT_STEPS, "conv2": DEFAULT_STEPS},
                                       {"conv1": DEFAULT_STEPS // 2, "conv2": DEFAULT_STEPS // 2}, DEFAULT_STEPS)
    # at 224 px (or more) a step costs most: fewer of them, for the class row as well
    assert steps(GalleryRequest(size=(224, 224))) == ({"conv1": LARGE_STEPS, "conv2": LARGE_STEPS},
                                                      {"conv1": LARGE_STEPS // 2, "conv2": LARGE_STEPS // 2}, LARGE_STEPS)
    assert steps(GalleryRequest(size=(224, 200)))[0] == {"conv1": DEFAULT_STEPS, "conv2": DEFAULT_STEPS}
    # --steps is one number for every picture, whatever its size
    assert steps(GalleryRequest(size=(224, 224), steps=40)) == ({"conv1": 40, "conv2": 40}, {"conv1": 20, "conv2": 20}, 40)
    assert GalleryRequest(steps=40).steps_for(lenet, ["conv1"]) == {}


def test_a_plans_cost_grows_with_pixels_and_steps(lenet, tmp_path):
    from cnnvis.atlas.runs import ImageRequest, plan_images
    from cnnvis.atlas.store import Store

    def cost(size, steps):
        request = ImageRequest(("conv1",), "0-3", overrides={"steps": steps, "size": size})
        return plan_images(lenet, request, Store(str(tmp_path / f"{size}-{steps}"))).cost

    assert cost(32, 100) == pytest.approx(4 * 32 * 32 * 100 / (224 * 224 * 256))
    assert cost(64, 100) == pytest.approx(4 * cost(32, 100)) and cost(32, 200) == pytest.approx(2 * cost(32, 100))
    # below STEP_PIXELS a step's fixed work is its cost: a 16-px picture costs what a 32-px one does
    assert cost(16, 100) == pytest.approx(cost(32, 100))


def test_the_time_left_runs_at_the_pace_since_the_work_began(monkeypatch):
    """Loading the model and planning (10 s here) are not the pace of the pictures: a run that spent 2 s
    on a tenth of its work has about 18 s left, not 108 s."""
    from cnnvis.atlas import galleries

    clock = [0.0]
    monkeypatch.setattr(galleries.time, "perf_counter", lambda: clock[0])
    reporter = galleries._Reporter(None, None)
    clock[0] = 10.0
    reporter.begin(0.5)
    reporter.total, reporter.work = 20.0, 10.0
    report = reporter.phase(10, 5.0)
    clock[0] = 12.0
    report(2, 10)  # a fifth of the pictures: 1 of 10 spent
    assert reporter.stamp() == "(12 s; about 18 s left)"
    assert reporter.examples_cost == 0.5


def test_a_small_models_examples_cost_what_its_pixels_do(lenet, tmp_path, monkeypatch):
    """The examples' share of the time left scales with the model's input: LeNet's 28-px images cost
    STEP_PIXELS / 224^2 of a 224-px model's per unit."""
    from cnnvis.atlas import galleries
    from cnnvis.atlas.runs import STEP_PIXELS

    seen = []
    monkeypatch.setattr(galleries._Reporter, "begin", lambda self, cost: seen.append(cost) or setattr(self, "examples_cost", cost))
    galleries.build_gallery(lenet, str(tmp_path / "g"), layers=["conv1"], filters=2, steps=2, classes=0, inputs=0,
                            images=None, score=False, dreams=False)
    assert seen == [pytest.approx(galleries.EXAMPLES_COST * STEP_PIXELS / (224 * 224))]


def test_kernel_values_live_in_one_file_and_the_pages_carry_the_weights(lenet, reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    conv2 = [l for l in manifest["gallery"]["layers"] if l["name"] == "conv2"][0]["weights"]
    assert "values" not in conv2 and conv2["filters"] == [0, 1, 2, 3, 4] and conv2["shape"] == [6, 5, 5]
    raw = (reference / conv2["file"]).read_bytes()
    assert len(raw) == 5 * 150 * 4  # float32 rows of the five filters shown, once
    weight = lenet.model.conv2.weight.detach()
    assert abs(conv2["max"] - float(weight.abs().max())) < 1e-6
    page = (reference / "units/conv2/3.html").read_text()
    shown = [float(v) for v in re.search(r'data-values="([^"]*)"', page).group(1).split()]
    assert len(shown) == 150
    for got, want in zip(shown, weight[3].flatten().tolist()):
        assert abs(got - want) <= 5e-4 * abs(want) + 1e-7


def test_a_saliency_overlay_holds_the_input_gradient_averaged_and_blends_like_the_overlay():
    from cnnvis.atlas.examples import OVERLAY_ALPHA, OVERLAY_LEVELS, saliency_file
    from cnnvis.attribution.gradients import overlay

    folder = tempfile.mkdtemp()
    g = torch.Generator().manual_seed(0)
    heat = torch.rand(96, 72, generator=g) ** 3
    heat[60:, :] = 0.0  # a region that did not matter stays clear
    rel = saliency_file(folder, heat)
    assert saliency_file(folder, heat) == rel  # named by content: stored once
    with Image.open(os.path.join(folder, rel)) as im:
        assert im.size == (36, 48)  # 96 x 72 averaged over 2 x 2 cells
        rgba = torch.tensor(np.asarray(im.convert("RGBA")), dtype=torch.float32) / 255
    cells = heat.reshape(48, 2, 36, 2).mean((1, 3))  # the average over each cell, computed here
    cells = cells / cells.max()  # the hottest cell at full strength
    alpha = rgba[..., 3] / OVERLAY_ALPHA
    assert (alpha - cells).abs().max() <= 0.5 / (OVERLAY_LEVELS - 1) + 2 / 255
    assert float(rgba[30:, :, 3].max()) == 0.0 and float(rgba[..., 3].max()) == pytest.approx(OVERLAY_ALPHA, abs=1 / 255)
    # the page draws it over the example: compositing gives overlay()'s blend of the cell's heat
    crop = torch.rand(3, 48, 36, generator=g)
    page = (1 - rgba[..., 3]) * crop + rgba[..., 3] * rgba[..., :3].permute(2, 0, 1)
    levels = (cells * (OVERLAY_LEVELS - 1)).round() / (OVERLAY_LEVELS - 1)
    assert (page - overlay(crop, levels, OVERLAY_ALPHA)).abs().max() < 3 / 255


def test_the_gallery_scores_its_units_and_score_makes_every_negative_picture(lenet, tmp_path):
    from torch import nn

    def mean_grey():
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))  # grey images come in as 3 channels

    folder = tmp_path / "scored"
    similarity_model = mean_grey()
    build_gallery(lenet, str(folder), layers=["conv2"], filters=3, steps=2, inputs=0, classes=0, dreams=False,
                  score=True, similarity=similarity_model)
    manifest = json.loads((folder / "manifest.json").read_text())
    units = manifest["gallery"]["units"]
    variants = {(r["filter"], r["variant"]) for r in manifest["records"] if r["layer"] == "conv2"}
    assert {(f, "channel-relu-robust-negative") for f in range(3)} <= variants  # --score: every negative picture
    for f in range(3):
        scores = units[f"conv2/{f}"]["scores"]
        assert set(scores) == {"natural", "synthetic"}
        for kind in ("natural", "synthetic"):
            assert (scores[kind]["mis"] is None) == (scores[kind]["reason"] is not None)
    assert any(units[f"conv2/{f}"]["scores"]["synthetic"]["mis"] is not None for f in range(3))
    # the natural part was scored while the pictures were drawn, the synthetic one after: the same scores
    # as scoring the stored examples and pictures in one go
    from cnnvis.atlas.examples import collect_examples, ImageSet
    from cnnvis.atlas.scores import score_examples, ScoreSettings
    from cnnvis.atlas.similarity import Similarity

    images, names = ImageSet(lenet).load()
    examples = collect_examples(lenet, ["conv2"], images, names=names, k=1)
    sim = Similarity(similarity_model)
    again = score_examples(examples, [("conv2", f) for f in range(3)], sim, ScoreSettings(), folder=str(folder),
                           records=manifest["records"])
    for f in range(3):
        for kind in ("natural", "synthetic"):
            ours, theirs = units[f"conv2/{f}"]["scores"][kind], getattr(again[("conv2", f)], kind).to_dict()
            assert ours["reason"] == theirs["reason"]
            assert ours["mis"] == pytest.approx(theirs["mis"], abs=1e-6), (f, kind)
    settings = manifest["gallery"]["settings"]["score"]
    assert settings["model"] == "Sequential" and (settings["k"], settings["tasks"]) == (9, 20)
    page = (folder / "units/conv2/0.html").read_text()
    assert "Interpretability</strong> (MIS)" in page

    plain = tmp_path / "unscored"
    build_gallery(lenet, str(plain), layers=["conv2"], filters=2, steps=2, inputs=0, classes=0, dreams=False, score=False)
    manifest = json.loads((plain / "manifest.json").read_text())
    assert all("scores" not in u for u in manifest["gallery"]["units"].values())
    assert manifest["gallery"]["settings"]["score"] is None
    assert "Interpretability" not in (plain / "units/conv2/0.html").read_text()


def test_strongest_inputs_pictures_are_made_at_the_size_a_page_shows_them():
    from cnnvis.atlas.galleries import INPUT_SIDE

    css = open(os.path.join(os.path.dirname(cnnvis.gallery.__file__), "static", "gallery.css")).read()
    assert f".input img {{ width: {INPUT_SIDE}px; height: {INPUT_SIDE}px;" in css
    linked = GalleryRequest(steps=300).linked_request({"deep": (224, 224), "mid": (144, 80), "first": (32, 32)})
    # half the canvas, a multiple of 8, at least 32 px, at most the size shown; half the steps
    assert linked.sizes == {"deep": (96, 96), "mid": (72, 40), "first": (32, 32)}
    assert linked.overrides["steps"] == 150
    assert GalleryRequest(size=64).linked_request({"deep": (224, 224)}).overrides["size"] == 64  # --size wins
