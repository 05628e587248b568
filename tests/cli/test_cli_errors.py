"""The bad-input battery: every promise of the command line under hostile input and faults.

Each case runs the CLI and asserts the exact exit status (2 usage, 1 runtime, 130 Ctrl-C), exactly one
``Error:`` line on stderr and nothing else there, no traceback, and that no file in the working folder was
created or changed (a snapshot before and after; temporary files included). Most cases run in-process
through click's CliRunner; the few where a real process matters (user code calling ``sys.exit``, a closed
pipe, FIFOs, read-only folders, warnings printed by the interpreter) run as subprocesses, all started
together by one fixture and marked slow.

"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import click
from click.testing import CliRunner
from PIL import Image

from cnnvis.cli import main

NETS = '''
import sys
import warnings

import torch
from torch import nn


class Net(nn.Module):
    """3 x H x W -> 5 class scores."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 5)

    def logits(self, x):
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))

    def forward(self, x):
        return self.logits(x)


class Failing(Net):
    def forward(self, x):
        raise ValueError("bad thing happened")


class Recursing(Net):
    def forward(self, x):
        return self.forward(x)


class Exits(Net):
    def forward(self, x):
        sys.exit(0)


class Custom(BaseException):
    pass


class RaisesBase(Net):
    def forward(self, x):
        raise Custom("custom base exception")


class Interrupts(Net):
    def forward(self, x):
        raise KeyboardInterrupt


class Tuple(Net):
    def forward(self, x):
        return (self.logits(x), "aux")


class List(Net):
    def forward(self, x):
        return [self.logits(x), x]


class DictOut(Net):
    def forward(self, x):
        return {"out": self.logits(x), "aux": x}


class DictOnly(Net):
    def forward(self, x):
        return {"logits": self.logits(x), "n": 3}


class DictMany(Net):
    def forward(self, x):
        return {"a": self.logits(x), "b": self.logits(x)}


def exits_factory():
    sys.exit(0)


def base_factory():
    raise Custom("built badly")


def warns_then_fails():
    warnings.warn("a warning from the user's code")
    return Failing()
'''


# ----------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict:
    """Every path below ``root`` -> the sha1 of a regular file's bytes (other kinds by kind; never opened)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            mode = os.lstat(p).st_mode
            rel = str(p.relative_to(root))
            if stat.S_ISREG(mode):
                out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir" if stat.S_ISDIR(mode) else f"special:{stat.S_IFMT(mode)}"
    return out


def error_line(code: int, exit_code: int, stdout: str, stderr: str, *words: str, stdout_empty: bool = True) -> str:
    """Assert one failure: the exit status, exactly one non-blank stderr line starting 'Error: ', no traceback."""
    assert exit_code == code, f"exit {exit_code}, expected {code}\nstdout: {stdout}\nstderr: {stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"not one Error: line:\n{stderr}"
    assert "Traceback" not in stderr + stdout
    if stdout_empty:
        assert stdout == "", stdout
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]


def write_bomb(path: Path, side: int) -> None:
    """A PNG that declares side x side 1-bit pixels but holds almost nothing: opening it is cheap, decoding not."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def make_inputs(root: Path) -> None:
    """The user's networks, images of every kind, and the hostile files the battery feeds in."""
    (root / "battery_nets.py").write_text(textwrap.dedent(NETS))
    (root / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / "rgb.png")
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(root / "digit.png")
    ramp = (np.linspace(0, 0.5, 32 * 32).reshape(32, 32) * 65535).round().astype(np.uint16)
    Image.fromarray(ramp).save(root / "deep16.png")  # 16-bit grey, values up to half scale
    (root / "junk.png").write_bytes(b"this is not an image")
    write_bomb(root / "bomb-warning.png", 10_000)  # 1e8 pixels: PIL warns
    write_bomb(root / "bomb-error.png", 20_000)  # 4e8 pixels: PIL refuses
    folder = root / "folder"
    folder.mkdir()
    shutil.copy(root / "digit.png", folder / "a.png")


def cnnvis_process(args, cwd, env_extra=None, **kw):
    """Run the real command line in a fresh interpreter; returns the CompletedProcess (text)."""
    env = {k: v for k, v in os.environ.items() if k != "CNNVIS_DEBUG"}
    env["PYTHONPATH"] = str(cwd)
    env.update(env_extra or {})
    code = "import sys; from cnnvis.cli import main; main(prog_name='cnnvis')"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, **kw)


# ----------------------------------------------------------------------------- in-process cases


@pytest.fixture
def work(tmp_path, monkeypatch):
    make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CNNVIS_DEBUG", raising=False)
    for name in ("battery_nets", "exits_on_import"):
        sys.modules.pop(name, None)
    yield tmp_path
    for name in ("battery_nets", "exits_on_import"):
        sys.modules.pop(name, None)


@pytest.fixture
def cli(work):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args])

    return invoke


@pytest.fixture
def fails(cli, work):
    """Run a command that must fail: check the one Error: line and that no file changed; returns the line."""

    def check(code, args, *words, stdout_empty=True):
        before = snapshot(work)
        r = cli(*args)
        assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), r.exception
        line = error_line(code, r.exit_code, r.stdout, r.stderr, *words, stdout_empty=stdout_empty)
        assert snapshot(work) == before, "files were created or changed"
        return line

    return check


# 1. exit codes as documented


def test_forward_failure_is_runtime_and_blames_the_forward_pass(fails):
    line = fails(1, ["saliency", "battery_nets:Failing", "rgb.png", "-o", "out"],
                 "forward pass of battery_nets:Failing failed", "(ValueError: bad thing happened)")
    assert "--size" not in line
    for args in (["maximize", "battery_nets:Failing", "-l", "conv1", "--steps", "1", "-o", "out"],
                 ["stats", "battery_nets:Failing", "rgb.png", "-l", "conv1", "--json"],
                 ["activations", "battery_nets:Failing", "rgb.png", "-l", "conv1", "-o", "out"],
                 ["receptive-field", "battery_nets:Failing", "--size", "8"],
                 ["gallery", "battery_nets:Failing", "-l", "conv1", "--steps", "1", "-o", "out"]):
        assert "--size" not in fails(1, args, "(ValueError: bad thing happened)")


def test_recursion_is_runtime(fails):
    fails(1, ["layers", "battery_nets:Recursing", "--size", "8"], "RecursionError", "recurses")


def test_size_hint_only_when_the_size_is_the_cause(fails):
    fails(1, ["saliency", "lenet-digits", "digit.png", "--size", "20", "-o", "out"],
          "forward pass of lenet-digits failed", "pass the size it expects with --size")


def test_unknown_weights_names_are_usage_mistakes(fails):
    fails(2, ["layers", "lenet-digits", "--weights", "BOGUS"], "unknown weights 'BOGUS'")
    fails(2, ["layers", "resnet18", "--weights", "IMAGENET1K_V9"], "unknown weights 'IMAGENET1K_V9' for resnet18")
    fails(2, ["layers", "battery_nets:Net", "--weights", "DEFAULT"], "no DEFAULT weights")


# 2. user code cannot take the process down silently (in-process; the real process is checked below)


def test_user_code_exiting_is_one_line(fails):
    fails(1, ["layers", "battery_nets:exits_factory"], "battery_nets:exits_factory", "SystemExit: 0")
    fails(1, ["layers", "exits_on_import:Net"], "importing exits_on_import", "SystemExit: 0")
    fails(1, ["layers", "battery_nets:base_factory"], "Custom: built badly")
    fails(1, ["saliency", "battery_nets:Exits", "rgb.png", "-o", "out"], "forward pass", "SystemExit: 0")
    fails(1, ["maximize", "battery_nets:RaisesBase", "-l", "conv1", "--steps", "1", "-o", "out"],
          "Custom: custom base exception")
    fails(130, ["stats", "battery_nets:Interrupts", "rgb.png", "-l", "conv1", "--json"], "interrupted")


def test_debug_shows_the_traceback(cli, monkeypatch):
    monkeypatch.setenv("CNNVIS_DEBUG", "1")
    r = cli("layers", "battery_nets:base_factory")
    assert r.exit_code != 0 and r.exception is not None  # raised, not turned into one line


# 3. every model output shape


@pytest.mark.parametrize("form, where", [("Tuple", "[0]"), ("List", "[0]"), ("DictOut", "['out']"),
                                         ("DictOnly", "['logits']")])
def test_output_forms_work_and_say_which_output(cli, form, where, work):
    spec = f"battery_nets:{form}"
    r = cli("saliency", spec, "rgb.png", "-o", "sal")
    assert r.exit_code == 0, r.output
    assert f"output: model(x){where}" in r.stdout
    assert json.loads(next((work / "sal").glob("*.json")).read_text())["output"] == where
    r = cli("stats", spec, "rgb.png", "-l", "conv2", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["conv2"]["count"] == 1
    assert [line.endswith("(NotNormalised)") for line in r.stderr.splitlines()] == [True]  # nothing else on stderr
    r = cli("maximize", spec, "--objective", "class", "--filters", "0", "--steps", "1", "--size", "16", "-q",
            "-o", "max")
    assert r.exit_code == 0, r.output
    r = cli("gallery", spec, "-l", "conv2", "--filters", "1", "--steps", "1", "--preset", "plain", "--size", "16",
            "--images", "rgb.png", "-q", "-o", "gal")
    assert r.exit_code == 0, r.output


def test_maximize_says_which_output(cli):
    r = cli("maximize", "battery_nets:Tuple", "--objective", "class", "--filters", "0", "--steps", "1",
            "--size", "16", "-o", "max")
    assert r.exit_code == 0 and "output: model(x)[0]" in r.output


def test_dict_without_out_or_single_tensor_names_its_keys(fails):
    fails(1, ["saliency", "battery_nets:DictMany", "rgb.png", "-o", "out"], "keys 'a', 'b'")
    fails(1, ["maximize", "battery_nets:DictMany", "--objective", "class", "--filters", "0", "--steps", "1",
              "--size", "16", "-o", "out"], "keys 'a', 'b'")


# 4. inputs


def test_sixteen_bit_images_scale_by_bit_depth(cli, work):
    r = cli("activations", "lenet-digits", "deep16.png", "-l", "conv1", "-o", "acts")
    assert r.exit_code == 0, r.output
    seen = np.asarray(Image.open(work / "acts" / "input.png"), dtype=np.float64) / 255
    assert seen.mean() == pytest.approx(0.25, abs=0.01) and seen.max() == pytest.approx(0.5, abs=0.01)


def test_special_files_are_refused_without_opening(fails, work):
    fails(2, ["activations", "lenet-digits", os.devnull, "-l", "conv1", "-o", "out"], "device file")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(work / "sock.png"))
        fails(2, ["stats", "lenet-digits", "sock.png", "-l", "conv1", "--json"], "socket", "--skip-bad")
    finally:
        sock.close()


def test_decompression_bombs_are_refused_or_skipped(fails, cli):
    for name in ("bomb-warning.png", "bomb-error.png"):
        fails(2, ["stats", "lenet-digits", name, "-l", "conv1", "--json"], name, "decompression bomb", "--skip-bad")
        fails(2, ["saliency", "lenet-digits", name, "-o", "out"], "decompression bomb")
    r = cli("stats", "lenet-digits", "bomb-error.png", "bomb-warning.png", "digit.png", "-l", "conv1", "--json",
            "--skip-bad")
    assert r.exit_code == 0 and json.loads(r.stdout)["conv1"]["count"] == 1
    assert r.stderr.count("skipped: ") == 2 and "Warning" not in r.stderr


def test_warnings_add_no_stray_lines(fails):
    fails(1, ["layers", "battery_nets:warns_then_fails", "--size", "8"], "ValueError")


def test_stats_prints_only_the_result(cli):
    r = cli("stats", "lenet-digits", "folder", "-l", "conv1", "--json")
    assert r.exit_code == 0 and r.stderr == "" and json.loads(r.stdout)["conv1"]["count"] == 1


# 5. options


@pytest.mark.parametrize("args, words", [
    (["layers", "lenet-digits", "--std", "nan"], "--std"),
    (["layers", "lenet-digits", "--mean", "inf"], "--mean"),
    (["saliency", "lenet-digits", "digit.png", "--method", "smoothgrad", "--noise", "inf", "-o", "out"], "--noise"),
    (["saliency", "lenet-digits", "digit.png", "--method", "integrated-gradients", "--baseline", "nan", "-o", "out"],
     "baseline"),
    (["filters", "lenet-digits", "-l", "conv1", "--filters", "0-300000000", "-o", "out"], "6 channels"),
    (["maximize", "lenet-digits", "-l", "conv1", "--filters", "0-300000000", "-o", "out"], "6 channels"),
    (["filters", "lenet-digits", "-l", "conv1", "--zoom", "0", "-o", "out"], "--zoom"),
    (["filters", "lenet-digits", "-l", "conv1", "--zoom", "100000", "-o", "out"], "--zoom"),
    (["saliency", "lenet-digits", "digit.png", "--samples", "0", "-o", "out"], "--samples"),
    (["gallery", "lenet-digits", "--diversity", "2", "--diversity-weight", "-1", "-o", "out"], "--diversity-weight"),
    (["gallery", "lenet-digits", "--diversity", "2", "--diversity-weight", "nan", "-o", "out"], "--diversity-weight"),
    (["maximize", "lenet-digits", "-l", "conv1", "--diversity", "2", "--diversity-weight", "inf", "-o", "out"],
     "--diversity-weight"),
    (["maximize", "lenet-digits", "-l", "conv1", "--diversity", "2", "--diversity-weight", "-0.5", "-o", "out"],
     "--diversity-weight"),
])
def test_bad_numbers_are_usage_errors(fails, args, words):
    fails(2, args, words)


def test_a_users_model_without_normalisation_says_so_once(cli):
    r = cli("layers", "battery_nets:Net")
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines() == [
        "Warning: battery_nets:Net gets its inputs in [0, 1] without normalisation (no --mean/--std given); if it "
        "was trained on normalised inputs, say how, e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 "
        "(NotNormalised)"]
    assert "normalisation" not in r.stdout
    told = cli("layers", "battery_nets:Net", "--mean", "0.5", "--std", "0.5")
    assert told.exit_code == 0 and told.stderr == ""
    assert cli("layers", "lenet-digits").stderr == ""  # the zoo's models carry their own normalisation


@pytest.mark.parametrize("value", [
    "inf",
    "nan", "-inf"])
def test_maximize_lr_must_be_finite(fails, value):
    fails(2, ["maximize", "lenet-digits", "-l", "conv1", "--steps", "1", "--lr", value, "-o", "out"], "--lr")


def test_gallery_size_one_fails_like_maximize(cli, fails):
    code = cli("maximize", "lenet-digits", "-l", "conv1", "--steps", "1", "--size", "1", "-o", "out").exit_code
    assert code in (1, 2)
    m = fails(code, ["maximize", "lenet-digits", "-l", "conv1", "--steps", "1", "--size", "1", "-o", "out"])
    g = fails(code, ["gallery", "lenet-digits", "-l", "conv1", "--steps", "1", "--size", "1", "-o", "out"])
    assert g == m


def test_gallery_runs_without_quiet(cli):
    r = cli("gallery", "lenet-digits", "-l", "conv1", "--filters", "1", "--steps", "1", "-o", "gal")
    assert r.exit_code == 0, r.output
    # without a terminal: one line per finished layer and phase on stderr, the summary on stdout
    assert r.stdout.startswith("1 units: 1 computed, 0 already finished") and r.stdout.rstrip().endswith(
        os.path.join("gal", "index.html"))
    lines = r.stderr.splitlines()  # the pictures of every phase share one queue: either worker's line may come first
    assert sum(line.startswith("conv1: 1 channel-relu-robust picture (") for line in lines) == 1
    assert sum(line.startswith("output: 4 class-robust pictures (") for line in lines) == 1
    assert Path("gal/index.html").is_file() and Path("gal/units/conv1/0.html").is_file()


def test_usage_errors_are_one_line(fails):
    fails(2, ["nosuchcommand"], "No such command")
    fails(2, ["filters"], "Missing argument 'MODEL'")
    fails(2, ["stats", "lenet-digits", "digit.png", "-l", "conv1"], "--json")


# 6. recovery advice that works


def test_corrupt_manifest_names_it_and_force_recovers(fails, cli, work):
    args = ["maximize", "lenet-digits", "-l", "conv1", "--filters", "0", "--steps", "1", "-q", "-o", "m"]
    assert cli(*args).exit_code == 0
    database = work / "m" / "records.sqlite"
    database.write_bytes(b"not a database, just bytes" * 100)
    line = fails(2, args, "records.sqlite")
    assert "--force" in line and "damaged" in line
    r = cli(*args, "--force")
    assert r.exit_code == 0, r.output
    manifest = work / "m" / "manifest.json"
    assert json.loads(manifest.read_text())["records"] and (work / "m" / "records.sqlite.damaged").exists()
    # a folder of the version before the database, with its manifest damaged: the same advice works
    database.unlink()
    manifest.write_text('{"records": [')
    line = fails(2, args, "manifest.json")
    assert "--force" in line
    assert cli(*args, "--force").exit_code == 0 and (work / "m" / "manifest.json.damaged").exists()


def test_damaged_record_is_named_not_a_key_error(fails, cli, work):
    args = ["maximize", "lenet-digits", "-l", "conv1", "--filters", "0", "--steps", "1", "-q", "-o", "m"]
    assert cli(*args).exit_code == 0
    manifest = work / "m" / "manifest.json"
    doc = json.loads(manifest.read_text())
    del doc["records"][0]["layer"]
    (work / "m" / "records.sqlite").unlink()  # a folder of the version before the database
    manifest.write_text(json.dumps(doc))
    line = fails(2, args, "manifest.json")
    assert "KeyError" not in line and "AttributeError" not in line


def test_bad_image_advice_works(fails, cli):
    line = fails(2, ["stats", "lenet-digits", "junk.png", "digit.png", "-l", "conv1", "--json"], "junk.png")
    assert "--skip-bad" in line
    r = cli("stats", "lenet-digits", "junk.png", "digit.png", "-l", "conv1", "--json", "--skip-bad")
    assert r.exit_code == 0 and json.loads(r.stdout)["conv1"]["count"] == 1


def test_gallery_suggests_only_options_it_has(cli):
    r = cli("gallery", "lenet-digits", "-l", "conv1", "--filters", "1", "--steps", "1", "--images", "junk.png",
            "-q", "-o", "gal")
    line = error_line(2, r.exit_code, r.stdout, r.stderr, "junk.png")
    suggested = set(re.findall(r"--[a-z][a-z-]+", line))
    gallery_options = {o for p in main.commands["gallery"].params for o in p.opts if o.startswith("--")}
    assert suggested and suggested <= gallery_options, (suggested - gallery_options, line)
    assert "--skip-bad" in suggested  # the advice names the option that gets past the file, and it works:
    r = cli("gallery", "lenet-digits", "-l", "conv1", "--filters", "1", "--steps", "1", "--images", "junk.png",
            "--images", "digit.png", "-q", "-o", "gal", "--skip-bad")
    assert r.exit_code == 0, r.output
    assert json.loads((Path("gal") / "manifest.json").read_text())["gallery"]["units"]["conv1/0"]["stats"]["count"] == 1


def test_gallery_bad_image_fails_before_writing(fails):
    fails(2, ["gallery", "lenet-digits", "-l", "conv1", "--filters", "1", "--steps", "1", "--images", "junk.png",
              "-q", "-o", "gal"], "junk.png")


def test_damaged_gallery_statistics_cache_is_rebuilt(cli, work):
    args = ["gallery", "lenet-digits", "-l", "conv1", "--filters", "1", "--steps", "1", "--images", "digit.png",
            "-q", "-o", "gal"]
    assert cli(*args).exit_code == 0
    (work / "gal" / "stats" / "meta.json").write_text("{")
    r = cli(*args, "--force")
    assert r.exit_code == 0, r.output


# ----------------------------------------------------------------------------- real processes

#: Runs each case in its own process, forked from one interpreter that imported torch and cnnvis once
#: (a fresh interpreter per case costs seconds). The child leaves the loop and runs the command at the top
#: level with real file descriptors; the closed-pipe cases also end with a real interpreter shutdown (where
#: the final flush of stdout meets the closed pipe); the others leave through ``os._exit`` with the status
#: the command set, after flushing, since a forked torch takes seconds to tear down.
DRIVER = r"""
import hashlib, json, os, stat, sys, time

root, cases_file, out_dir, ro_mode = sys.argv[1:5]
os.chdir(root)
sys.path.insert(0, root)
import torch, torchvision  # noqa: E401,F401  imported once; no tensor op runs before the forks
from cnnvis.cli import main
import cnnvis.atlas.galleries, cnnvis.attribution.gradients, cnnvis.model.loading, cnnvis.atlas.runs, cnnvis.inspection.stats  # noqa: E401,F401

def snapshot():
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            m = os.lstat(p).st_mode
            out[p] = hashlib.sha1(open(p, "rb").read()).hexdigest() if stat.S_ISREG(m) else stat.S_IFMT(m)
    return out

def set_writable(folder, writable):
    for d, dirs, files in os.walk(folder):
        for p in [d] + [os.path.join(d, f) for f in files]:
            mode = os.stat(p).st_mode
            os.chmod(p, mode | 0o200 if writable else mode & ~0o222)

cases = json.load(open(cases_file))
results, mounted = {}, set()
import gc; gc.freeze()  # children share the parent's objects without the collector touching them
for case in cases:
    if case.get("ro") and ro_mode == "none":
        continue
    if case.get("ro") and ro_mode == "chmod":
        set_writable(case["ro"], False)
    if case.get("ro") and ro_mode == "mount" and case["ro"] not in mounted:
        import subprocess
        subprocess.run(["mount", "--bind", "-o", "ro", case["ro"], case["ro"]], check=True)
        mounted.add(case["ro"])
    before = snapshot()
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        break  # the child runs the case below, at the top level
    deadline, status = time.time() + 120, None
    while status is None and time.time() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        status = st if done else None
        time.sleep(0.02)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    if case.get("ro") and ro_mode == "chmod":
        set_writable(case["ro"], True)
    after = snapshot()
    read = lambda k: open(os.path.join(out_dir, case["name"] + k), encoding="utf-8", errors="replace").read()
    results[case["name"]] = {
        "code": "timeout" if status is None else os.waitstatus_to_exitcode(status),
        "stdout": read(".out"), "stderr": read(".err"),
        "changed": sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)),
    }
else:
    json.dump(results, open(os.path.join(out_dir, "results.json"), "w"))
    sys.exit(0)

# ---- the child
os.environ.update(case.get("env", {}))
out = os.open(os.path.join(out_dir, case["name"] + ".out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
err = os.open(os.path.join(out_dir, case["name"] + ".err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
if case.get("closed_pipe"):
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: every write to stdout fails with EPIPE
    os.dup2(writer, 1)
else:
    os.dup2(out, 1)
os.dup2(err, 2)
if case.get("closed_pipe"):
    main(case["args"], prog_name="cnnvis")  # a real exit: the interpreter flushes stdout into the closed pipe
try:
    main(case["args"], prog_name="cnnvis")
except SystemExit as exc:  # exit as the interpreter would, without its seconds-long teardown of a forked torch
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
"""


def _read_only_mode() -> str:
    """How to make a folder read-only here: chmod for a normal user; for root, who ignores permissions,
    a read-only bind mount in a user namespace; ``none`` when neither works."""
    if os.geteuid() != 0:
        return "chmod"
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        return "mount"
    return "none"


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """Every real-process case, run by one driver; name -> {"code", "stdout", "stderr", "changed"}."""
    root = tmp_path_factory.mktemp("battery")
    out_dir = tmp_path_factory.mktemp("battery-output")
    make_inputs(root)
    os.mkfifo(root / "fifo.png")
    os.mkfifo(root / "folder" / "b.png")
    ro = root / "ro"  # a finished gallery (the first case builds it), for the read-only re-run
    ro.mkdir()
    gallery = ["gallery", "lenet-digits", "-l", "conv1", "--filters", "1", "--steps", "1", "--preset", "plain", "-q",
               "-o", str(ro)]
    cases = [
        {"name": "build", "args": gallery},
        {"name": "factory-exit", "args": ["layers", "battery_nets:exits_factory"]},
        {"name": "import-exit", "args": ["layers", "exits_on_import:Net"]},
        {"name": "forward-base-exception", "args": ["saliency", "battery_nets:RaisesBase", "rgb.png", "-o", "out"]},
        {"name": "forward-interrupt", "args": ["stats", "battery_nets:Interrupts", "rgb.png", "-l", "conv1",
                                               "--json"]},
        {"name": "fifo", "args": ["stats", "lenet-digits", "fifo.png", "-l", "conv1", "--json"]},
        {"name": "fifo-activations", "args": ["activations", "lenet-digits", "fifo.png", "-l", "conv1", "-o", "out"]},
        {"name": "fifo-in-folder", "args": ["stats", "lenet-digits", "folder", "-l", "conv1", "--json"]},
        {"name": "fifo-skip-bad", "args": ["stats", "lenet-digits", "folder", "-l", "conv1", "--json", "--skip-bad"]},
        {"name": "bomb-warning", "args": ["stats", "lenet-digits", "bomb-warning.png", "-l", "conv1", "--json"]},
        {"name": "warning-then-failure", "args": ["layers", "battery_nets:warns_then_fails", "--size", "8"]},
        {"name": "debug", "args": ["layers", "battery_nets:Failing", "--size", "8"], "env": {"CNNVIS_DEBUG": "1"}},
        {"name": "closed-pipe", "args": ["models"], "closed_pipe": True},
        {"name": "closed-pipe-json", "args": ["layers", "lenet-digits", "--json"], "closed_pipe": True},
        {"name": "read-only-rerun", "args": gallery, "ro": str(ro)},
        {"name": "read-only-write", "args": ["maximize", "lenet-digits", "-l", "conv1", "--filters", "0-2", "--steps",
                                             "1", "--preset", "plain", "-q", "-o", str(ro)], "ro": str(ro)},
    ]
    (out_dir / "cases.json").write_text(json.dumps(cases))
    (out_dir / "driver.py").write_text(DRIVER)
    mode = _read_only_mode()
    command = [sys.executable, str(out_dir / "driver.py"), str(root), str(out_dir / "cases.json"), str(out_dir),
               mode]
    if mode == "mount":
        command = ["unshare", "-rm", *command]  # the driver mounts the folder read-only when its turn comes
    env = {k: v for k, v in os.environ.items() if k != "CNNVIS_DEBUG"}
    env["PYTHONPATH"] = str(root)
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    results = json.loads((out_dir / "results.json").read_text())
    assert results["build"]["code"] == 0, results["build"]["stderr"]
    return results


def _failed(processes, name, code, *words):
    r = processes[name]
    line = error_line(code, r["code"], r["stdout"], r["stderr"], *words)
    assert not r["changed"], f"{name} changed {r['changed']}"
    return line


@pytest.mark.slow
@pytest.mark.parametrize("name, code, words", [
    ("factory-exit", 1, ["battery_nets:exits_factory", "SystemExit: 0"]),
    ("import-exit", 1, ["importing exits_on_import", "SystemExit: 0"]),
    ("forward-base-exception", 1, ["forward pass of battery_nets:RaisesBase", "Custom: custom base exception"]),
    ("forward-interrupt", 130, ["interrupted"]),
    ("fifo", 2, ["fifo.png is a FIFO", "--skip-bad"]),
    ("fifo-activations", 2, ["fifo.png is a FIFO"]),
    ("fifo-in-folder", 2, ["b.png is a FIFO", "--skip-bad"]),
    ("bomb-warning", 2, ["bomb-warning.png", "decompression bomb"]),
    ("warning-then-failure", 1, ["ValueError: bad thing happened"]),
])
def test_real_process_fails_with_one_line(processes, name, code, words):
    _failed(processes, name, code, *words)


@pytest.mark.slow
def test_real_process_skips_fifo_with_a_note(processes):
    r = processes["fifo-skip-bad"]
    assert r["code"] == 0, r["stderr"]
    assert json.loads(r["stdout"])["conv1"]["count"] == 1
    assert r["stderr"].splitlines() == [f"skipped: {os.path.join('folder', 'b.png')} is a FIFO (named pipe), "
                                        f"not a regular file"]
    assert not r["changed"]


@pytest.mark.slow
def test_real_process_debug_shows_traceback(processes):
    r = processes["debug"]
    assert r["code"] == 1 and "Traceback" in r["stderr"] and "ValueError: bad thing happened" in r["stderr"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["closed-pipe", "closed-pipe-json"])
def test_closed_pipe_ends_quietly(processes, name):
    r = processes[name]
    assert (r["code"], r["stderr"], r["changed"]) == (141, "", [])


@pytest.mark.slow
def test_read_only_gallery_rerun(processes):
    if "read-only-rerun" not in processes:
        pytest.skip("no way to make a folder read-only here")
    r = processes["read-only-rerun"]
    assert r["code"] == 0 and r["stderr"] == "" and not r["changed"], r
    line = _failed(processes, "read-only-write", 1, "cannot use")
    assert ("read-only" in line or "permission denied" in line) and "Errno" not in line


# ----------------------------------------------------------------------------- the group's one line, unit by unit


def _group_result(exc):
    """What the group makes of a command that raises ``exc``."""

    @main.command("raises-for-test", hidden=True)
    def raises():
        raise exc

    try:
        return CliRunner().invoke(main, ["raises-for-test"])
    finally:
        main.commands.pop("raises-for-test")


@pytest.mark.parametrize("exc, code, line", [
    (MemoryError(), 1, "Error: out of memory; try a smaller --size or --batch-size"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory"), 1,
     "Error: out of memory; try a smaller --size or --batch-size"),
    (PermissionError(13, "Permission denied", "out/.a.png.x.cnnvis-tmp"), 1,
     "Error: cannot use out: permission denied; check its permissions or choose another folder with -o"),
    (OSError(30, "Read-only file system", "site/manifest.json"), 1,
     "Error: cannot use site/manifest.json: read-only file system; choose a writable folder with -o"),
    (SystemExit(0), 1, "Error: the model's code called sys.exit(0) (SystemExit) and cnnvis stopped; "
                       "set CNNVIS_DEBUG=1 for the traceback"),
    (KeyboardInterrupt(), 130, "Error: interrupted"),
    (type("Odd", (BaseException,), {})("odd\nsecond line"), 1, "Error: Odd: odd (set CNNVIS_DEBUG=1 for the traceback)"),
    (BrokenPipeError(32, "Broken pipe"), 141, None),
])
def test_group_turns_anything_into_one_line(monkeypatch, exc, code, line):
    monkeypatch.delenv("CNNVIS_DEBUG", raising=False)
    r = _group_result(exc)
    assert r.exit_code == code
    assert r.stdout == ""
    assert r.stderr == ("" if line is None else line + "\n")


def test_warnings_become_one_line_each_after_success(monkeypatch):
    import warnings

    monkeypatch.delenv("CNNVIS_DEBUG", raising=False)

    @main.command("warns-for-test", hidden=True)
    def warns():
        warnings.warn("first line\nsecond line", UserWarning)
        warnings.warn("first line\nsecond line", UserWarning)
        click.echo("result")

    try:
        r = CliRunner().invoke(main, ["warns-for-test"])
    finally:
        main.commands.pop("warns-for-test")
    assert r.exit_code == 0 and r.stdout == "result\n"
    assert r.stderr == "Warning: first line (UserWarning)\n"


def test_a_store_that_cannot_be_written_is_one_line_exit_1_before_any_work(fails, work):
    (work / "m").mkdir()
    (work / "m" / "records.sqlite").mkdir()  # its place is taken: the database cannot be opened
    args = ["maximize", "lenet-digits", "-l", "conv1", "--filters", "0", "--steps", "1", "-q", "-o", "m"]
    fails(1, args, "records.sqlite")
    assert sorted(os.listdir(work / "m")) == ["records.sqlite"]


def test_export_writes_the_manifest_from_the_database(fails, cli, work):
    assert cli("maximize", "lenet-digits", "-l", "conv1", "--filters", "0-2", "--steps", "1", "-q", "-o", "m").exit_code == 0
    manifest = work / "m" / "manifest.json"
    written = json.loads(manifest.read_text())
    manifest.unlink()
    r = cli("export", "m")
    assert r.exit_code == 0 and r.stdout.startswith("3 record(s) exported to")
    assert json.loads(manifest.read_text()) == written
    fails(2, ["export", "nothing-here"], "no cnnvis records")


@pytest.mark.slow
def test_merge_joins_shards_written_apart_into_the_site_of_one_run(fails, cli, work):
    args = ["gallery", "lenet-digits", "-l", "conv1", "-l", "conv2", "--filters", "3", "--steps", "2",
            "--preset", "plain", "--inputs", "0", "--classes", "0", "--top-k", "2", "-q"]
    assert cli(*args, "-o", "one").exit_code == 0
    assert cli(*args, "--shard", "0/2", "-o", "a").exit_code == 0 and cli(*args, "--shard", "1/2", "-o", "b").exit_code == 0
    r = cli("merge", "all", "a", "b")
    assert r.exit_code == 0, r.output
    one, merged = (json.loads((work / d / "manifest.json").read_text()) for d in ("one", "all"))
    assert sorted((x["layer"], x["filter"], x["variant"]) for x in merged["records"]) == \
        sorted((x["layer"], x["filter"], x["variant"]) for x in one["records"])
    assert sorted(merged["gallery"]["units"]) == sorted(one["gallery"]["units"])
    assert [l["name"] for l in merged["gallery"]["layers"]] == [l["name"] for l in one["gallery"]["layers"]]
    pages = sorted(str(p.relative_to(work / "one")) for p in (work / "one").rglob("*.html"))
    assert pages == sorted(str(p.relative_to(work / "all")) for p in (work / "all").rglob("*.html"))
    # parts of different runs do not merge silently
    (work / "b" / "conv1" / "channel-relu-plain").mkdir(parents=True, exist_ok=True)
    first = sorted((work / "all" / "conv1" / "channel-relu-plain").glob("*.png"))[0]
    (work / "b" / first.relative_to(work / "all")).write_bytes(b"other bytes")
    fails(2, ["merge", "all", "b"], "--force")
    fails(2, ["merge", "nowhere", "b", "b/conv1"], "no cnnvis records")
