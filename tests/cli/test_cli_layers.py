import json

import pytest
from click.testing import CliRunner

import cnnvis
from cnnvis.cli import main


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_version_and_help(run):
    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"cnnvis, version {cnnvis.__version__}"
    r = run("-h")
    assert r.exit_code == 0 and "Examples:" in r.output and "layers" in r.output
    r = run("layers", "-h")
    assert r.exit_code == 0 and "cnnvis layers vgg16 --weights none" in r.output


def test_unknown_model_exact_message(run):
    r = run("layers", "vgg61")
    assert r.exit_code == 2
    assert r.output == "Error: unknown model 'vgg61'; did you mean vgg16, vgg11?\n"


def test_unknown_layer_lists_matches_and_hint(run):
    r = run("layers", "lenet-digits", "-l", "conv3")
    assert r.exit_code == 2
    assert r.output.startswith("Error: unknown layer 'conv3' in lenet-digits (did you mean conv1, conv2?)")
    assert "cnnvis layers lenet-digits" in r.output and r.output.count("\n") == 1


def test_layers_table(run):
    r = run("layers", "lenet-digits")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].startswith("lenet-digits") and "1x32x32" in lines[0]
    assert lines[1].split() == ["name", "type", "output", "shape", "channels", "params"]
    assert lines[2].split() == ["conv1", "Conv2d", "6x28x28", "6", "156"]
    assert lines[5].split() == ["conv2", "Conv2d", "16x10x10", "16", "2,416"]
    assert len(lines) == 2 + 12


def test_layers_json_keys_and_values(run):
    r = run("layers", "vgg16", "--weights", "none", "--json", "-l", "type:Conv2d")
    assert r.exit_code == 0
    rows = json.loads(r.output)
    assert len(rows) == 13
    for row in rows:
        assert set(row) >= {"name", "type", "output_shape", "channels", "params"}
    by_name = {row["name"]: row for row in rows}
    assert by_name["features.28"]["output_shape"] == [512, 14, 14]
    assert by_name["features.0"] == {
        "name": "features.0", "type": "Conv2d", "output_shape": [64, 224, 224], "channels": 64,
        "params": 1792, "calls": 1,
    }


def test_layers_of_user_callable_with_size(run, user_module):
    r = run("layers", "usernets:make_net", "--size", "16", "--json")
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["conv2"]["output_shape"] == [8, 7, 7]
    assert rows["head"]["output_shape"] == [5]


def test_runtime_failure_is_one_line_exit_1(run, user_module):
    r = run("layers", "usernets:Broken")
    assert r.exit_code == 1  # the model failed, not the user: a runtime failure, and no --size hint
    assert r.output == ("Error: the forward pass of usernets:Broken failed on a 1x3x224x224 input "
                        "(RuntimeError: forward exploded)\n")


def test_missing_weights_exit_1(run, torch_home):
    r = run("layers", "resnet18")
    assert r.exit_code == 1
    assert "resnet18-f37072fd.pth not found" in r.output and r.output.count("\n") == 1


def test_bad_mean_is_a_usage_error(run):
    r = run("layers", "lenet-digits", "--mean", "a,b")
    assert r.exit_code == 2 and r.output.startswith("Error: --mean must be comma-separated numbers")


def test_models_lists_zoo_and_torchvision(run):
    r = run("models", "--json")
    names = [row["name"] for row in json.loads(r.output)]
    assert names[:2] == ["lenet-digits", "efficientnet-lite0"]
    assert "vgg16" in names and "googlenet" in names


def test_console_script_installed():
    import os
    import shutil
    import subprocess
    import sys

    exe = shutil.which("cnnvis", path=os.path.dirname(sys.executable)) or shutil.which("cnnvis")
    assert exe, "the cnnvis console script is not on PATH; install the package"
    out = subprocess.run([exe, "layers", "vgg61"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr == "Error: unknown model 'vgg61'; did you mean vgg16, vgg11?\n"
