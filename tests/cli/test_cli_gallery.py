import json

from click.testing import CliRunner

from cnnvis.cli import main


def test_gallery_command(tmp_path):
    out = tmp_path / "g"
    runner = CliRunner()
    args = ["gallery", "lenet-digits", "--filters", "3", "--steps", "2", "--preset", "both", "-o", str(out), "--quiet"]
    r = runner.invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("6 units: 6 computed, 0 already finished")
    assert r.output.strip().endswith(str(out / "index.html"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["units"][0]["images"]) == ["plain", "robust"]
    assert manifest["settings"]["preset"] == "robust+plain"
    r = runner.invoke(main, args, catch_exceptions=False)
    assert r.output.startswith("6 units: 0 computed, 6 already finished, 0 pages written")


def test_gallery_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["gallery", "lenet-digits", "-l", "conv3", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "did you mean conv1, conv2" in r.output
    r = runner.invoke(main, ["gallery", "lenet-digits", "--shard", "2/2", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "need 0 <= i < n" in r.output
    r = runner.invoke(main, ["gallery", "-h"])
    assert r.exit_code == 0 and "Examples:" in r.output and "--shard" in r.output
