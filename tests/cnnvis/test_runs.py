import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import cnnvis
from cnnvis.runs import MANIFEST, execute, plan_maximize, run_maximize

KEYS = {"layer", "filter", "image", "objective", "preset", "settings", "steps", "lr", "size", "seed",
        "objective_initial", "objective_final", "loss_curve", "seconds", "versions", "dead", "status"}


@pytest.fixture(scope="module")
def lenet():
    return cnnvis.load_model("lenet-digits")


def _files(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


def test_outputs_manifest_and_resume(lenet, tmp_path):
    s1 = run_maximize(lenet, ["conv2"], "0-1", out_dir=str(tmp_path), steps=6, batch_size=2)
    assert (s1.written, s1.skipped) == (2, 0)
    s2 = run_maximize(lenet, ["conv2"], "0-3", out_dir=str(tmp_path), steps=6, batch_size=2)
    assert (s2.written, s2.skipped) == (2, 2) and [r["filter"] for r in s2.records] == [2, 3]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    records = manifest["records"]
    assert [r["filter"] for r in records] == [0, 1, 2, 3]
    for r in records:
        assert KEYS <= set(r)
        assert (tmp_path / r["image"]).is_file() and r["image"] == f"conv2/channel-l2-plain/{r['filter']:04d}.png"
        assert len(r["loss_curve"]) == 6 and r["objective_initial"] == r["loss_curve"][0]
        assert r["settings"]["steps"] == 6 and r["settings"]["normalize_grad"] is True
    assert _files(tmp_path) == ["conv2/channel-l2-plain/0000.png", "conv2/channel-l2-plain/0001.png",
                                "conv2/channel-l2-plain/0002.png", "conv2/channel-l2-plain/0003.png",
                                "conv2/channel-l2-plain/grid.png", "manifest.json"]
    grid = np.asarray(Image.open(tmp_path / "conv2/channel-l2-plain/grid.png"))
    assert grid.shape[:2] == (2 + 2 * 34, 2 + 2 * 34)  # 4 tiles of 32 px, 2 px padding
    # other settings make the finished records stale; --force recomputes
    assert run_maximize(lenet, ["conv2"], "0-3", out_dir=str(tmp_path), steps=7).written == 4
    assert run_maximize(lenet, ["conv2"], "0-3", out_dir=str(tmp_path), steps=7, force=True).written == 4
    assert len(json.loads((tmp_path / MANIFEST).read_text())["records"]) == 4


def test_same_seed_gives_byte_identical_pngs(lenet, tmp_path):
    for name in ("a", "b"):
        run_maximize(lenet, ["conv2"], "0-2", out_dir=str(tmp_path / name), preset="robust", steps=5, size=32)
    for rel in _files(tmp_path / "a"):
        if rel.endswith(".png"):
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_interrupted_run_leaves_no_partial_files_and_resumes(lenet, tmp_path):
    work = plan_maximize(lenet, ["conv2"], "0-2", out_dir=str(tmp_path), steps=4)

    def stop_in_second_batch(done, total):
        if done > 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(work, batch_size=1, progress=stop_in_second_batch)
    assert _files(tmp_path) == ["conv2/channel-l2-plain/0000.png", "conv2/channel-l2-plain/grid.png", "manifest.json"]
    assert [r["filter"] for r in json.loads((tmp_path / MANIFEST).read_text())["records"]] == [0]
    again = run_maximize(lenet, ["conv2"], "0-2", out_dir=str(tmp_path), steps=4, batch_size=1)
    assert (again.written, again.skipped) == (2, 1)


class _Dead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.copy_(torch.tensor([-10.0, 0.0]))
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


def test_dead_filter_recorded_and_crossed_out(tmp_path):
    lm = cnnvis.load_model(_Dead(), size=8)
    s = run_maximize(lm, ["relu"], "all", out_dir=str(tmp_path), steps=3)
    dead, alive = s.records
    assert dead["dead"] and dead["status"] == "dead" and not alive["dead"] and s.dead == 1
    grid = np.asarray(Image.open(tmp_path / "relu/channel-l2-plain/grid.png"))
    assert tuple(grid[2, 2]) == (255, 0, 0)  # the dead tile's corner carries the red cross
    assert tuple(grid[2, 2 + 10]) != (255, 0, 0)
    saved = np.asarray(Image.open(tmp_path / dead["image"]))
    assert saved.shape == (8, 8, 3) and tuple(saved[0, 0]) != (255, 0, 0)  # the PNG itself is the noise
