"""Cost per unit as a layer grows: 256 -> 2,048 units of one layer, for ``maximize`` and ``gallery``.

    python benchmarks/bench_scale.py            # a few minutes on 2 cores

A seeded random model (``Wide``: two small convolutions, the second with 2,048 channels) at 16 px,
2 steps: the pictures are cheap, so what grows with the number of units (records, grids, plans, pages,
the dataset pass) shows. Prints seconds per unit for each phase at 256 and 2,048 units and their ratio
(the target: within 1.3x).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import torch

import cnnvis
from cnnvis.atlas import galleries
from cnnvis.atlas.runs import run_maximize
from cnnvis.gallery.render import render_site

CHANNELS = 2048


class Wide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.wide = torch.nn.Conv2d(8, CHANNELS, 3, padding=1)

    def forward(self, x):
        return self.wide(self.relu(self.conv1(x))).mean((2, 3))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    torch.set_num_threads(1)
    lm = cnnvis.load_model(Wide(), size=16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (256, CHANNELS):
            spec = f"0-{n - 1}"
            t_max, _ = timed(lambda: run_maximize(lm, ["wide"], spec, out_dir=os.path.join(tmp, f"m{n}"), steps=2,
                                                  batch_size=64))
            folder = os.path.join(tmp, f"g{n}")
            t_gal, summary = timed(lambda: galleries.build_gallery(
                lm, folder, layers=["wide"], filters=spec, steps=2, preset="plain", inputs=0, classes=0,
                top_k=2, batch_size=64, workers=1))
            t_pages, pages = timed(lambda: render_site(folder))
            rows.append((n, t_max / n, t_gal / n, t_pages / n))
            print(f"{n} units: maximize {t_max:.1f} s, gallery {t_gal:.1f} s, pages {t_pages:.1f} s "
                  f"({len(pages)} written)", flush=True)
    (n0, *a), (n1, *b) = rows
    print(f"\n| seconds per unit | {n0:,} units | {n1:,} units | ratio (target <= 1.3) |")
    print("| --- | --- | --- | --- |")
    for name, x, y in zip(("maximize", "gallery (pictures, dataset pass, examples)", "page writing"), a, b):
        print(f"| {name} | {x * 1000:.1f} ms | {y * 1000:.1f} ms | {y / x:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
