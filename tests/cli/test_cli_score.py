"""``cnnvis score``: the table, scores.json, and the bad input the issue names."""

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnnvis.cli import main


@pytest.fixture
def simnets(tmp_path, monkeypatch):
    """An importable similarity model whose features are the mean colour (fast, offline)."""
    (tmp_path / "simnets.py").write_text(
        "from torch import nn\n\n"
        "def mean_colour():\n"
        "    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("simnets", None)
    yield "simnets:mean_colour"
    sys.modules.pop("simnets", None)


def _images(folder, n):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        colour = rng.integers(0, 256, size=3)
        noise = rng.integers(-20, 20, size=(32, 32, 3))
        Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def test_score_prints_each_layer_most_interpretable_first_and_writes_scores_json(tmp_path, simnets):
    out = tmp_path / "s"
    args = ["score", "lenet-digits", "-l", "conv1", "--filters", "4", "--similarity", simnets, "--tasks", "6",
            "--no-pictures", "-o", str(out), "-q"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "scores.json").read_text())
    assert set(data) == {"version", "model", "method", "similarity", "images", "skipped", "pictures", "layers", "units"}
    assert data["similarity"]["model"] == "simnets:mean_colour" and data["method"]["tasks"] == 6
    lines = r.output.splitlines()
    assert lines[0].startswith("lenet-digits: MIS of 4 units on 320 images (similarity: simnets:mean_colour; K=9, N=6")
    rows = [line.split() for line in lines if line.startswith("  ") and line.split()[0].isdigit()]
    shown = [float(row[1]) for row in rows if row[1] != "-"]
    assert len(rows) == 4 and shown == sorted(shown, reverse=True)
    by_unit = {u["filter"]: u["natural"]["mis"] for u in data["units"]}
    assert all(f"{by_unit[int(row[0])]:.3f}" == row[1] for row in rows if row[1] != "-")
    r = CliRunner().invoke(main, args + ["--json"], catch_exceptions=False)
    assert json.loads(r.output) == data  # the same seed: the same scores


def test_score_needs_2k_plus_2_images_and_says_how_many(tmp_path, simnets):
    images = _images(tmp_path / "few", 12)
    r = CliRunner().invoke(main, ["score", "lenet-digits", "-l", "conv1", "--images", str(images), "--similarity",
                                  simnets, "--no-pictures", "-o", str(tmp_path / "s")])
    assert r.exit_code == 2
    assert "12 usable images in the image set; the score needs at least 20 (2K+2 with K=9)" in r.output


def test_score_skips_unreadable_images_only_when_asked(tmp_path, simnets):
    images = _images(tmp_path / "imgs", 24)
    (images / "broken.png").write_bytes(b"not a png")
    args = ["score", "lenet-digits", "-l", "conv1", "--filters", "2", "--images", str(images), "--similarity", simnets,
            "--no-pictures", "-o", str(tmp_path / "s"), "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "broken.png" in r.output and "--skip-bad" in r.output
    r = CliRunner().invoke(main, args + ["--skip-bad"])
    assert r.exit_code == 0, r.output
    assert "skipped:" in r.output and "broken.png" in r.output
    data = json.loads((tmp_path / "s" / "scores.json").read_text())
    assert data["images"] == 24 and data["skipped"][0]["path"].endswith("broken.png")


def test_a_similarity_model_that_cannot_load_offline_exits_1_naming_the_file(tmp_path, torch_home):
    r = CliRunner().invoke(main, ["score", "lenet-digits", "-l", "conv1", "--similarity", "vgg16", "--no-pictures",
                                  "-o", str(tmp_path / "s")])
    assert r.exit_code == 1
    assert "the similarity model cannot be loaded offline" in r.output and "vgg16-397923af.pth" in r.output
