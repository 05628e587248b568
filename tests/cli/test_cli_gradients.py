import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cnnvis
from cnnvis.cli import main
from cnnvis.attribution.gradients import saliency


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def digit_png(tmp_path):
    """A white '7' on black, 40x36 (the command resizes it to LeNet's 32x32)."""
    a = np.zeros((40, 36), np.uint8)
    a[6:10, 6:30] = 255
    a[10:34, 22:27] = 255
    path = tmp_path / "seven.png"
    Image.fromarray(a).save(path)
    return path


def test_help_has_examples(run):
    for command in ("saliency", "receptive-field"):
        r = run(command, "-h")
        assert r.exit_code == 0 and "Examples:" in r.output and f"cnnvis {command} " in r.output


def test_saliency_writes_the_attribution_the_api_computes(run, digit_png, tmp_path):
    out = tmp_path / "out"
    r = run("saliency", "lenet-digits", digit_png, "-o", out)
    assert r.exit_code == 0, r.output
    lm = cnnvis.load_model("lenet-digits")
    expected = saliency(lm, str(digit_png))
    p = expected.predicted
    lines = r.output.splitlines()
    assert lines[1] == f"predicted: class {p} ({p})"
    assert lines[2].startswith(f"target: class {p} ({p}), score ")
    assert lines[3] == "method: saliency (abs True)"
    base = out / f"seven.saliency.class-{p}"
    arr = np.load(f"{base}.npy")
    assert arr.shape == (1, 32, 32) and np.array_equal(arr, expected.attribution.numpy())
    doc = json.loads((out / f"seven.saliency.class-{p}.json").read_text())
    assert doc["target"] == {"kind": "class", "index": p, "name": str(p)}
    assert doc["method"] == "saliency" and doc["params"] == {"abs": True} and doc["model"] == "lenet-digits"
    for suffix in (".png", ".overlay.png"):
        with Image.open(f"{base}{suffix}") as im:
            assert im.size == (32, 32) and im.mode == "RGB"


def test_saliency_unit_and_method_options_json(run, digit_png, tmp_path):
    r = run("saliency", "lenet-digits", digit_png, "--unit", "conv2:3:4:5", "--method", "smoothgrad",
            "--samples", "5", "--noise", "0.1", "--seed", "3", "--signed", "-o", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["target"] == {"kind": "unit", "layer": "conv2", "channel": 3, "y": 4, "x": 5}
    assert doc["params"] == {"samples": 5, "noise": 0.1, "abs": False, "seed": 3}
    arr = np.load(tmp_path / "o" / doc["files"]["npy"])
    api = saliency(cnnvis.load_model("lenet-digits"), str(digit_png), unit="conv2:3:4:5", method="smoothgrad",
                   samples=5, noise=0.1, seed=3, abs=False)
    assert np.allclose(arr, api.attribution.numpy(), atol=1e-7)


def test_saliency_user_callable_keeps_image_size(run, tmp_path, user_module):
    Image.fromarray(np.full((18, 22, 3), 120, np.uint8)).save(tmp_path / "grey.png")
    r = run("saliency", "usernets:make_net", tmp_path / "grey.png", "--target", "4",
            "--method", "integrated-gradients", "--steps", "8", "--baseline", "white", "-o", tmp_path / "u")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "u" / "grey.integrated-gradients.class-4.npy").shape == (3, 18, 22)
    assert "target: class 4, score" in r.output and "(steps 8, baseline white)" in r.output


def test_saliency_errors_are_one_line(run, digit_png):
    cases = [
        (["--target", "10"], 2, "Error: class 10 is out of range: lenet-digits has 10 classes (0..9)\n"),
        (["--unit", "conv1:6"], 2,
         "Error: channel 6 is out of range: layer conv1 of lenet-digits has 6 channels (0..5)\n"),
        (["--unit", "conv3:0"], 2, None),
        (["--unit", "conv1:1:2"], 2, None),
    ]
    for extra, code, message in cases:
        r = run("saliency", "lenet-digits", digit_png, *extra)
        assert r.exit_code == code and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
        if message:
            assert r.output == message
    r = run("saliency", "lenet-digits", digit_png, "--target", "1", "--unit", "conv1:0")
    assert r.exit_code == 2 and "give --target or --unit, not both" in r.output
    r = run("saliency", "lenet-digits", "missing.png")
    assert r.exit_code == 2 and r.output == "Error: image missing.png does not exist\n"


def test_guided_backprop_on_googlenet_functional_relus(run, tmp_path):
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "n.png")
    r = run("saliency", "googlenet", tmp_path / "n.png", "--weights", "none", "--size", "64",
            "--method", "guided-backprop", "--unit", "inception3a:3", "-o", tmp_path / "g")
    assert r.exit_code == 0, r.output
    assert np.load(next((tmp_path / "g").glob("*.npy"))).shape == (3, 64, 64)


def test_guided_backprop_without_relu_explains(run, tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "black.png")
    r = run("saliency", "efficientnet_b0", tmp_path / "black.png", "--weights", "none", "--size", "32",
            "--method", "guided-backprop", "-o", tmp_path / "g")
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert r.output.startswith("Error: guided-backprop cannot apply: it changes the backward pass of ReLUs, and "
                               "efficientnet_b0 has no ReLU at all")
    assert not (tmp_path / "g").exists()


def test_receptive_field_json_vgg16(run):
    r = run("receptive-field", "vgg16", "--weights", "none", "--json",
            "-l", "features.0", "-l", "features.5", "-l", "features.10", "-l", "features.17", "-l", "features.24",
            "-l", "features.28", "-l", "classifier.0")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["name"] for row in rows][:6] == ["features.0", "features.5", "features.10", "features.17",
                                                 "features.24", "features.28"]
    assert [row["size"] for row in rows] == [3, 10, 24, 60, 132, 196, 224]
    assert [row["jump"] for row in rows] == [1, 2, 4, 8, 16, 16, None]
    for row in rows:
        assert {"name", "size", "jump", "start"} <= set(row) and "effective" not in row


def test_receptive_field_table_effective_and_images(run, tmp_path):
    r = run("receptive-field", "lenet-digits", "-l", "type:Conv2d", "-l", "fc1", "--effective", "--samples", "4",
            "-o", tmp_path / "rf")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1].split() == ["name", "type", "output", "size", "jump", "start", "effective"]
    assert lines[2].split()[:6] == ["conv1", "Conv2d", "6x28x28", "5", "1", "2"]
    assert lines[3].split()[:6] == ["conv2", "Conv2d", "16x10x10", "14", "2", "6.5"]
    assert lines[4].split() == ["fc1", "Linear", "120", "32", "global", "-", "-", "-"]
    doc = json.loads((tmp_path / "rf" / "receptive-field.json").read_text())
    rows = {row["name"]: row for row in doc["layers"]}
    assert 1 <= rows["conv2"]["effective"] <= 14 and "effective" not in rows["fc1"]
    assert rows["conv2"]["image"] == "erf-conv2.png"
    with Image.open(tmp_path / "rf" / "erf-conv2.png") as im:
        assert im.size == (32, 32)
    erf = np.load(tmp_path / "rf" / "erf-conv2.npy")
    assert erf.shape == (32, 32) and abs(erf.sum() - 1) < 1e-5
    r2 = run("receptive-field", "lenet-digits", "-l", "conv2", "--effective", "--samples", "4", "--json")
    assert json.loads(r2.output)[0]["effective"] == rows["conv2"]["effective"]  # seeded: the same
