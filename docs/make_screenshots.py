"""Screenshots of gallery pages for the README, taken only after every picture has loaded.

Pages lazy-load their pictures (``loading="lazy"``), so a screenshot taken at the load event shows
blank thumbnails. This script switches every picture to eager loading, waits until each one has
finished (or failed, which it reports), and only then captures.

Usage::

    python docs/make_screenshots.py GALLERY_DIR OUT.png [PAGE] [--width 1200] [--height 900] [--full]

PAGE is relative to the gallery folder (default ``index.html``). Needs Playwright and Debian's
chromium (``/usr/bin/chromium``), as the browser tests do.
"""

from __future__ import annotations

import argparse
import os
import sys

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]

WAIT_FOR_IMAGES = """() => {
  document.querySelectorAll('img[loading="lazy"]').forEach(img => { img.loading = "eager"; });
  return Promise.all(Array.from(document.images).map(img => img.complete ? null :
    new Promise(done => { img.onload = img.onerror = done; })))
    .then(() => Array.from(document.images).filter(img => !img.naturalWidth).map(img => img.getAttribute("src")));
}"""


def capture(folder: str, out: str, page: str = "index.html", width: int = 1200, height: int = 900,
            full: bool = False) -> list:
    """Capture one page after all its pictures loaded; returns the sources that failed to load."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CNNVIS_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        tab = browser.new_page(viewport={"width": width, "height": height})
        tab.goto("file://" + os.path.abspath(os.path.join(folder, page)))
        tab.wait_for_load_state("load")
        broken = tab.evaluate(WAIT_FOR_IMAGES)
        tab.screenshot(path=out, full_page=full)
        browser.close()
    return broken


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("out")
    parser.add_argument("page", nargs="?", default="index.html")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--full", action="store_true", help="the whole page, not just the first screen")
    args = parser.parse_args(argv)
    broken = capture(args.folder, args.out, args.page, args.width, args.height, args.full)
    if broken:
        print(f"{len(broken)} picture(s) did not load: {', '.join(broken[:5])}", file=sys.stderr)
        return 1
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
