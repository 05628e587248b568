import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cnnvis.cli.technique_cmds  # noqa: F401  registers accentuate, dream, caricature on the group
from cnnvis.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    """A handwritten 7 (scikit-learn's digits) saved as an RGB PNG: lenet-digits converts it to grey."""
    from sklearn.datasets import load_digits

    d = load_digits()
    a = np.kron(d.images[d.target == 7][0] / 16.0, np.ones((4, 4)))
    path = tmp_path_factory.mktemp("photos") / "seven.png"
    Image.fromarray(np.repeat((a * 255).astype(np.uint8)[..., None], 3, axis=2)).save(path)
    return str(path)


@pytest.mark.parametrize("command", ["accentuate", "dream", "caricature"])
def test_help_has_examples(command):
    r = run(command, "-h")
    assert r.exit_code == 0 and "Examples:" in r.output and f"cnnvis {command} efficientnet-lite0" in r.output


def test_dream_writes_through_the_store_and_skips_a_finished_result(seven, tmp_path):
    out = str(tmp_path / "d")
    r = run("dream", "lenet-digits", seven, "-l", "conv2", "--octaves", "2", "--steps", "3", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    (rec,) = json.loads((tmp_path / "d" / "manifest.json").read_text())["records"]
    png = tmp_path / "d" / rec["image"]
    assert png.is_file() and rec["technique"] == "dream" and rec["settings"]["octaves"] == 2
    assert rec["octave_sizes"] == [[32, 32], [23, 23]] and rec["settings"]["steps"] == 3
    assert r.output.startswith(f"wrote {png} (||conv2|| ") and r.output.count("\n") == 1
    r = run("dream", "lenet-digits", seven, "-l", "conv2", "--octaves", "2", "--steps", "3", "-o", out, "-q")
    assert r.exit_code == 0 and r.output == (f"already finished: {png} (same model, photo, settings and seed; "
                                             f"--force recomputes)\n")
    r = run("dream", "lenet-digits", seven, "-l", "conv2", "--octaves", "2", "--steps", "3", "-o", out, "-q", "--force")
    assert r.exit_code == 0 and r.output.startswith("wrote ")


def test_accentuate_and_caricature_print_what_they_measured(seven, tmp_path):
    r = run("accentuate", "lenet-digits", seven, "-l", "conv2", "--filter", "2", "--steps", "4", "-o",
            str(tmp_path), "-q")
    assert r.exit_code == 0, r.output
    assert "response " in r.output and "kept conv1 close" in r.output
    r = run("accentuate", "lenet-digits", seven, "-l", "conv2", "--filter", "2", "--steps", "4", "--layer-reg",
            "conv2", "--reg-weight", "2", "--param", "pixel", "--objective", "neuron", "-o", str(tmp_path), "-q")
    assert r.exit_code == 0 and "kept conv2 close" in r.output
    r = run("caricature", "lenet-digits", seven, "-l", "conv1", "--steps", "4", "--cossim-pow", "2", "-o",
            str(tmp_path), "-q")
    assert r.exit_code == 0 and "cosine with the photo at conv1" in r.output
    records = json.loads((tmp_path / "manifest.json").read_text())["records"]
    assert sorted(r["technique"] for r in records) == ["accentuate", "accentuate", "caricature"]
    by = {r["technique"] + str(r["settings"].get("param")): r for r in records}
    assert by["accentuatepixel"]["settings"]["reg_weight"] == 2.0 and by["accentuatepixel"]["objective"] == "neuron"
    assert by["caricaturefourier"]["settings"]["cossim_pow"] == 2.0


def test_mistakes_are_one_line(seven, tmp_path):
    out = str(tmp_path)
    r = run("dream", "lenet-digits", seven, "-l", "fc1", "-o", out)
    assert r.exit_code == 2 and r.output.startswith("Error: dream amplifies the patterns a layer sees across the image, "
                                                    "but fc1 has no spatial output")
    assert r.output.count("\n") == 1
    r = run("accentuate", "lenet-digits", seven, "-l", "conv2", "--filter", "99", "-o", out)
    assert r.exit_code == 2 and r.output == "Error: filter 99 is out of range: layer conv2 has 16 channels (0..15)\n"
    r = run("caricature", "lenet-digits", seven, "-l", "conv1", "-l", "conv2", "-o", out)
    assert r.exit_code == 2 and r.output == "Error: give exactly one layer with -l (got 2)\n"
    r = run("caricature", "lenet-digits", seven, "-l", "conv9", "-o", out)
    assert r.exit_code == 2 and "unknown layer 'conv9'" in r.output
    (tmp_path / "notes.txt").write_text("not an image")
    r = run("dream", "lenet-digits", str(tmp_path / "notes.txt"), "-l", "conv2", "-o", out)
    assert r.exit_code == 2 and r.output.startswith("Error: ") and "notes.txt" in r.output
    r = run("dream", "lenet-digits", seven, "-l", "conv2", "--octave-scale", "1", "-o", out)
    assert r.exit_code == 2 and "--octave-scale" in r.output


@pytest.mark.parametrize("command", ["accentuate", "dream", "caricature"])
def test_help_shows_the_library_defaults_and_lr_refuses_nan(command, seven, tmp_path):
    from cnnvis.synthesis.techniques import technique_defaults

    defaults = technique_defaults(command)
    text = " ".join(run(command, "-h").output.split())
    assert f"[{defaults['steps']}]" in text and f"[{defaults['lr']}]" in text
    args = [command, "lenet-digits", seven, "-l", "conv2", "-o", str(tmp_path), "--lr", "nan"]
    r = run(*(args + (["--filter", "0"] if command == "accentuate" else [])))
    assert r.exit_code == 2 and "--lr" in r.output and r.output.count("\n") <= 3


def test_the_picture_commands_share_one_declaration_of_their_common_options():
    from cnnvis.cli import main as group

    def declared(command, name):
        (option,) = [p for p in group.commands[command].params if name in p.opts]
        return type(option.type), option.default, option.metavar, option.callback

    for name in ("--steps", "--lr"):
        assert len({declared(c, name)[:1] for c in ("maximize", "gallery", "dream", "accentuate", "caricature")}) == 1
    for name in ("--batch-size", "--retries", "--workers", "--shard", "--diversity-weight", "--no-early-stop", "--force"):
        assert declared("maximize", name) == declared("gallery", name), name
