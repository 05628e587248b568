import json

from click.testing import CliRunner

from cnnvis.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_has_examples():
    r = run("maximize", "-h")
    assert r.exit_code == 0 and "Examples:" in r.output and "--preset" in r.output and "--retries" in r.output


def test_maximize_writes_images_grid_manifest_and_skips(tmp_path):
    out = str(tmp_path / "o")
    r = run("maximize", "lenet-digits", "-l", "conv1", "--filters", "0-2", "--steps", "5", "-o", out, "-q")
    assert r.exit_code == 0 and r.output == ""
    records = json.loads((tmp_path / "o" / "manifest.json").read_text())["records"]
    assert [(x["layer"], x["filter"], x["preset"], x["steps"]) for x in records] == [("conv1", i, "plain", 5) for i in range(3)]
    assert (tmp_path / "o" / "conv1" / "channel-l2-plain" / "grid.png").is_file()
    r = run("maximize", "lenet-digits", "-l", "conv1", "--filters", "0-2", "--steps", "5", "-o", out)
    assert r.exit_code == 0 and r.output.endswith(f"0 image(s) written, 3 already finished; manifest: {out}/manifest.json\n")


def test_options_reach_the_settings(tmp_path):
    out = str(tmp_path / "o")
    r = run("maximize", "lenet-digits", "-l", "conv1", "--filters", "1", "--steps", "3", "--lr", "0.3",
            "--no-clamp", "--no-normalize-grad", "--seed", "4", "--size", "20", "--batch-size", "1", "-o", out, "-q")
    assert r.exit_code == 0
    (rec,) = json.loads((tmp_path / "o" / "manifest.json").read_text())["records"]
    assert rec["settings"]["clamp"] is False and rec["settings"]["normalize_grad"] is False
    assert rec["lr"] == 0.3 and rec["seed"] == 4 and rec["size"] == [20, 20] and rec["batch_size"] == 1


def test_class_objective_by_name(tmp_path):
    r = run("maximize", "lenet-digits", "--objective", "class", "--class", "7", "--steps", "3",
            "-o", str(tmp_path), "-q")
    assert r.exit_code == 0
    (rec,) = json.loads((tmp_path / "manifest.json").read_text())["records"]
    assert rec["layer"] == "output" and rec["filter"] == 7 and rec["class_name"] == "7"


def test_bad_input_messages(tmp_path):
    r = run("maximize", "lenet-digits", "-l", "conv2", "--filters", "0-30", "-o", str(tmp_path))
    assert r.exit_code == 2 and r.output == "Error: filter 16 is out of range: layer conv2 has 16 channels (0..15)\n"
    r = run("maximize", "lenet-digits", "-l", "fc1", "-o", str(tmp_path))
    assert r.exit_code == 2 and "fc1 has no spatial output" in r.output and "--objective neuron" in r.output
    r = run("maximize", "lenet-digits", "-o", str(tmp_path))
    assert r.exit_code == 2 and r.output.startswith("Error: --objective channel-l2 needs a layer: pass -l LAYER")
    r = run("maximize", "lenet-digits", "-l", "conv1", "--batch-size", "0", "-o", str(tmp_path))
    assert r.exit_code == 2 and "must be at least 1" in r.output


def test_without_a_terminal_one_line_per_layer_with_the_time_left(tmp_path):
    import re

    r = CliRunner().invoke(main, ["maximize", "lenet-digits", "-l", "conv1", "-l", "conv2", "--filters", "0-3",
                                  "--steps", "3", "--workers", "1", "-o", str(tmp_path)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert re.fullmatch(r"conv1: 4 channel-l2-plain pictures \(\d+ s; about \d+ (s|min) left\)", lines[0]), lines
    assert re.fullmatch(r"conv2: 4 channel-l2-plain pictures \(\d+ s\)", lines[1]), lines  # nothing left
    assert r.stdout.startswith("8 image(s) written")
