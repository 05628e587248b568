"""Crawl a generated gallery in a real browser (Playwright driving Debian's chromium)."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urldefrag, urlparse

import pytest

CHROMIUM = os.environ.get("CNNVIS_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


def browser_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is not None


requires_browser = pytest.mark.skipif(
    not browser_available() and not os.environ.get("CI"),
    reason="needs playwright and chromium (.ci/run installs both)",
)


def crawl(index_path: str, screenshot: str = None, viewport=(1200, 900)) -> dict:
    """Visit every page reachable by links from ``index_path``; return what was seen.

    Returns {"pages": {url: {"links": [...], "images": [(src, naturalWidth)]}}, "console": [...],
    "requests": [non-file URLs the pages fetched], "external": [links out of the site, not followed],
    "dead": [links to missing files]}.
    """
    from playwright.sync_api import sync_playwright

    start = "file://" + os.path.abspath(index_path)
    seen, queue = {}, [start]
    console, outside, dead, external = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.on("console", lambda m: console.append((page.url, m.type, m.text)) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: console.append((page.url, "pageerror", str(e))))
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith("file://") else None)
        while queue:
            url = queue.pop(0)
            if url in seen:
                continue
            path = urlparse(url).path
            if not os.path.isfile(path):
                dead.append(url)
                seen[url] = None
                continue
            page.goto(url)
            page.wait_for_load_state("load")
            page.evaluate("() => Promise.all(Array.from(document.images).map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })))")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
            links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
            rels = page.eval_on_selector_all("a[rel]", "els => els.map(e => [e.rel, e.href])")
            seen[url] = {"images": images, "links": links, "rels": rels, "title": page.title()}
            if screenshot and url == start:
                page.screenshot(path=screenshot, full_page=False)
            for link in links:
                link = urldefrag(link)[0]
                if link.startswith("file://") and link not in seen:
                    queue.append(link)
                elif not link.startswith("file://"):
                    external.append(link)
        browser.close()
    return {"pages": {u: v for u, v in seen.items() if v is not None}, "console": console, "requests": outside, "dead": dead,
            "external": sorted(set(external))}
