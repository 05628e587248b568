import json

import pytest

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
    variants = {r["variant"] for r in manifest["records"] if (r["layer"], r["filter"]) == ("conv1", 0)}
    assert variants == {"channel-relu-plain", "channel-relu-robust"}
    assert manifest["gallery"]["settings"]["preset"] == "robust+plain"
    r = runner.invoke(main, args, catch_exceptions=False)
    assert r.output.startswith("6 units: 0 computed, 6 already finished, 2 off-units (drawn switched off), 0 pages written")


def test_gallery_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["gallery", "lenet-digits", "-l", "conv3", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "did you mean conv1, conv2" in r.output
    r = runner.invoke(main, ["gallery", "lenet-digits", "--shard", "2/2", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "need 0 <= i < n" in r.output
    r = runner.invoke(main, ["gallery", "-h"])
    assert r.exit_code == 0 and "Examples:" in r.output and "--shard" in r.output


def _committed(database):
    """How many records a running job has committed to its store (read-only; 0 before the store exists)."""
    import sqlite3
    from contextlib import closing

    if not database.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as db:
            return db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:  # the table is being created
        return 0


@pytest.mark.slow
def test_ctrl_c_then_resume_equals_one_run(tmp_path):
    """A real SIGINT to a running `cnnvis gallery`, then a re-run: same files as one uninterrupted run."""
    import filecmp
    import os
    import signal
    import subprocess
    import sys
    import time

    exe = os.path.join(os.path.dirname(sys.executable), "cnnvis")
    args = ["gallery", "lenet-digits", "--filters", "0-5", "--steps", "300", "--preset", "plain", "--batch-size", "2",
            "--quiet"]
    interrupted, reference = tmp_path / "i", tmp_path / "r"
    # SIGINT as a terminal's Ctrl-C delivers it, also when the tests themselves run in a background job
    # (whose children start with SIGINT ignored, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([exe, *args, "-o", str(interrupted)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    database = interrupted / "records.sqlite"
    deadline = time.time() + 120
    while time.time() < deadline and not _committed(database):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and b"Traceback" not in err
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert not [f for f in files(interrupted) if f.endswith(".tmp")]
    done_before = {f: (interrupted / f).stat().st_mtime_ns for f in files(interrupted)
                   if f.startswith("conv") and not f.endswith("grid.png")}
    assert 0 < len(done_before) < 12
    subprocess.run([exe, *args, "-o", str(interrupted)], check=True, capture_output=True)
    subprocess.run([exe, *args, "-o", str(reference)], check=True, capture_output=True)
    assert files(interrupted) == files(reference)
    for f in files(reference):
        if f.endswith(".png"):
            assert filecmp.cmp(interrupted / f, reference / f, shallow=False), f
    for f, stamp in done_before.items():
        assert (interrupted / f).stat().st_mtime_ns == stamp, f


def test_progress_without_a_terminal_is_one_line_per_finished_layer(tmp_path):
    import re

    r = CliRunner().invoke(main, ["gallery", "lenet-digits", "--filters", "2", "--steps", "2", "--inputs", "0",
                                  "--classes", "0", "--no-examples", "-o", str(tmp_path / "g")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    # conv1 unit 1 and conv2 unit 0 answer most to a black input (the digits' background): off-units,
    # drawn switched off as well
    assert all(re.search(r"\(\d+ s(; about \d+ (s|min) left)?\)$", line) for line in lines), lines
    assert sorted(re.sub(r"\(\d+ s(; about \d+ (s|min) left)?\)", "(N s)", line) for line in lines) == sorted([
        "conv1: 2 channel-relu-robust pictures, 1 off-unit (N s)",
        "conv2: 2 channel-relu-robust pictures, 1 off-unit (N s)",
        "conv1: 1 channel-relu-robust-negative picture of an off-unit (N s)",
        "conv2: 1 channel-relu-robust-negative picture of an off-unit (N s)",
        "2 off-unit pictures of conv1, conv2 finished (N s)",
        "DeepDream of 2 layers (N s)"])
    assert r.stdout.startswith("4 units: 4 computed, 0 already finished, 2 off-units (drawn switched off), ")
