"""torchrun over two processes writing one gallery folder: every unit once, every page there."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnnvis.atlas.store import Store

BIN = Path(sys.executable).parent
MODEL = textwrap.dedent("""
    import torch

    class Wide(torch.nn.Module):
        def __init__(self, channels=96):
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.relu = torch.nn.ReLU()
            self.wide = torch.nn.Conv2d(8, channels, 3, padding=1)

        def forward(self, x):
            return self.wide(self.relu(self.conv1(x))).mean((2, 3))

    def make():
        return Wide()
""")


@pytest.mark.slow
@pytest.mark.skipif(not (BIN / "torchrun").exists() or not (BIN / "cnnvis").exists(), reason="needs the venv's torchrun")
def test_two_torchrun_processes_share_a_wide_layer_and_compute_each_unit_once(tmp_path):
    (tmp_path / "widenet.py").write_text(MODEL)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1")
    r = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python", str(BIN / "cnnvis"),
                        "gallery", "widenet:make", "--size", "16", "-l", "wide", "--filters", "all", "--steps", "2",
                        "--preset", "plain", "--inputs", "0", "--classes", "0", "--top-k", "2", "-q", "-o", "site"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = sorted(re.findall(r"96 units \(shard (\d)/2\): (\d+) computed", r.stdout))
    assert lines == [("0", "48"), ("1", "48")], r.stdout  # each process computed its half, nothing twice
    site = tmp_path / "site"
    records = Store(str(site)).records()
    main = sorted(f for (layer, f, variant) in records if variant == "channel-relu-plain")
    assert main == list(range(96))
    exported = json.loads((site / "manifest.json").read_text())["records"]
    assert len(exported) == len(records)
    assert sorted(int(p.stem) for p in (site / "units" / "wide").glob("*.html")) == list(range(96))
    layer_page = (site / "layers" / "wide.html").read_text()
    assert all(f'href="../units/wide/{f}.html"' in layer_page for f in range(96))
