"""How fast a big layer page opens in Chromium, from the file system: 256 and 2,048 units.

    python benchmarks/bench_pages.py        # needs playwright and Debian's chromium (as the browser tests)

Builds a torch-free demo gallery (16 px pictures, as tests/gallery/demo.py does), renders it, and opens its
layer page three times, printing the median time to the load event and how many pictures were fetched.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "gallery"))

from browser import CHROMIUM, FLAGS  # noqa: E402
from demo import write_demo_gallery  # noqa: E402

from cnnvis.gallery.render import render_site  # noqa: E402


def main() -> int:
    from playwright.sync_api import sync_playwright

    print("| units on the layer page | load event (median of 3) | pictures fetched at load |")
    print("| --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        for n in (256, 2048):
            folder = os.path.join(tmp, f"g{n}")
            write_demo_gallery(folder, layers=(("wide", n),), dead=())
            render_site(folder)
            times, fetched = [], []
            for _ in range(3):
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                seen = []
                page.on("request", lambda r, seen=seen: seen.append(r.url) if r.url.endswith(".png") else None)
                t0 = time.perf_counter()
                page.goto("file://" + os.path.join(folder, "layers", "wide.html"), wait_until="load")
                times.append(time.perf_counter() - t0)
                fetched.append(len(seen))
                page.close()
            print(f"| {n:,} | {statistics.median(times):.2f} s | {statistics.median(fetched):.0f} |", flush=True)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
