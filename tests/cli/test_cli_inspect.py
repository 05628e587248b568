import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cnnvis
from cnnvis.cli import main

MODELS = [
    ("lenet-digits", [], "conv1", 6),
    ("resnet18", ["--weights", "RESNET18_FILE", "--size", "48"], "layer1.0.conv1", 64),
    ("usernets:make_net", [], "conv2", 8),
]


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """Random resnet18 weights in a file, so the CLI and the test see the same model."""
    import torchvision

    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


@pytest.fixture
def run(resnet18_file):
    runner = CliRunner()

    def invoke(*args):
        args = [resnet18_file if a == "RESNET18_FILE" else str(a) for a in args]
        return runner.invoke(main, args, catch_exceptions=False)

    return invoke


def _load(spec, opts, resnet18_file):
    weights = resnet18_file if opts else None
    return cnnvis.load_model(spec, weights, size=opts[3] if opts else None)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    for i in range(5):
        Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8)).save(folder / ("a" if i < 3 else "b") / f"{i}.png")
    return folder


@pytest.mark.parametrize("spec,opts,layer,channels", MODELS)
def test_filters_command(run, tmp_path, user_module, resnet18_file, spec, opts, layer, channels):
    out = tmp_path / "f"
    r = run("filters", spec, *opts, "-l", layer, "--filters", "0-3", "-o", out)
    assert r.exit_code == 0, r.output
    folder = out / layer
    assert sorted(p.name for p in folder.iterdir()) == [f"filter-000{i}.png" for i in range(4)] + ["filters.png", "weight.npy"]
    lm = _load(spec, opts, resnet18_file)
    assert np.array_equal(np.load(folder / "weight.npy"), cnnvis.get_layer(lm, layer).weight.detach().numpy())
    assert f"{layer}: 4 filters" in r.output


@pytest.mark.parametrize("spec,opts,layer,channels", MODELS)
def test_activations_command(run, tmp_path, images, user_module, resnet18_file, spec, opts, layer, channels):
    out = tmp_path / "a"
    r = run("activations", spec, images / "a" / "0.png", *opts, "-l", layer, "-o", out)
    assert r.exit_code == 0, r.output
    act = np.load(out / f"{layer}.npy")
    assert act.shape[0] == channels
    lm = _load(spec, opts, resnet18_file)
    x = torch.from_numpy(np.asarray(Image.open(out / "input.png"), dtype=np.float32) / 255.0)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    with torch.no_grad(), cnnvis.record(lm, [layer], stop=True) as rec:
        rec.run(x[None])
    # input.png is 8-bit, so compare loosely against the exact saved tensor
    assert np.allclose(rec[layer][0].numpy(), act, atol=0.05 * np.abs(act).max() + 1e-3)
    assert (out / f"{layer}.png").exists()


@pytest.mark.parametrize("spec,opts,layer,channels", MODELS)
def test_stats_command_json(run, tmp_path, images, user_module, spec, opts, layer, channels):
    r = run("stats", spec, images, *opts, "-l", layer, "--json", "--top-k", "2", "--quiet", "--batch-size", "2")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert list(data) == [layer]
    entry = data[layer]
    assert set(entry) >= {"count", "mean", "std", "min", "max", "fraction_active", "top"}
    assert entry["count"] == 5
    assert all(len(entry[k]) == channels for k in ("mean", "std", "min", "max", "fraction_active", "top"))
    assert all(len(t) == 2 and all(p.endswith(".png") for p in t) for t in entry["top"])
    assert all(lo <= m <= hi for lo, m, hi in zip(entry["min"], entry["mean"], entry["max"]))


def test_stats_writes_json_and_plots(run, tmp_path, images):
    out = tmp_path / "s"
    r = run("stats", "lenet-digits", images, "-l", "conv1", "-l", "conv2", "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "conv1-channels.png", "conv1-histogram.png", "conv2-channels.png", "conv2-histogram.png", "stats.json"]
    assert json.loads((out / "stats.json").read_text())["conv2"]["count"] == 5


def test_stats_errors(run, tmp_path, images):
    (images / "a" / "junk.png").write_text("junk")
    r = run("stats", "lenet-digits", images, "-l", "conv1", "--json", "--quiet")
    assert r.exit_code == 2 and r.output.strip().endswith("junk.png is not a readable image (UnidentifiedImageError); remove it or use --skip-bad")
    r = run("stats", "lenet-digits", images, "-l", "conv1", "--json", "--quiet", "--skip-bad")
    assert r.exit_code == 0 and "skipped: " in r.output
    (tmp_path / "empty").mkdir()
    r = run("stats", "lenet-digits", tmp_path / "empty", "-l", "conv1", "--json")
    assert r.exit_code == 2 and "holds no image files" in r.output
    r = run("stats", "lenet-digits", images, "-l", "conv1")
    assert r.exit_code == 2 and "--json" in r.output


def test_filters_errors(run, tmp_path):
    r = run("filters", "lenet-digits", "-l", "relu1", "-o", tmp_path)
    assert r.exit_code == 2 and "has no convolution kernels" in r.output
    r = run("filters", "lenet-digits", "-l", "conv1", "--filters", "0-9", "-o", tmp_path)
    assert r.exit_code == 2 and "has 6 channels (0..5)" in r.output
    r = run("activations", "lenet-digits", tmp_path / "missing.png", "-l", "conv1", "-o", tmp_path)
    assert r.exit_code == 2 and "does not exist" in r.output
