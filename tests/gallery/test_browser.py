"""The generated site in a real browser: every page reachable, every image loaded, nothing outside file://."""

import json
import os
from urllib.parse import urlparse

import pytest

from browser import crawl, requires_browser
from cnnvis.gallery.render import render_site, SCORE_PAPER


def assert_site_is_healthy(folder, expected_pages=None):
    result = crawl(os.path.join(folder, "index.html"))
    pages = result["pages"]
    assert result["dead"] == [], result["dead"]
    assert result["requests"] == [], result["requests"]
    assert set(result["external"]) <= {SCORE_PAPER}, result["external"]  # the one link out: the scores' paper
    assert result["console"] == [], result["console"]
    for url, info in pages.items():
        assert info["images"] == [] or all(width > 0 for _, width in info["images"]), (url, info["images"])
        path = urlparse(url).path
        if "/units/" in path:
            layer_page = os.path.basename(os.path.dirname(path)) + ".html"
            assert any(link.endswith("/layers/" + layer_page) for link in info["links"]), url
    if expected_pages is not None:
        found = {os.path.relpath(urlparse(u).path, folder) for u in pages}
        assert found == expected_pages
    return result


@requires_browser
def test_demo_site_in_chromium(demo_gallery):
    folder, _ = demo_gallery
    render_site(str(folder))
    expected = {"index.html", "layers/features.0.html", "layers/features.5.html"}
    expected |= {f"units/features.0/{i}.html" for i in range(6)} | {f"units/features.5/{i}.html" for i in range(4)}
    result = assert_site_is_healthy(str(folder), expected)
    unit = [v for u, v in result["pages"].items() if u.endswith("units/features.0/1.html")][0]
    rels = dict((r, h) for r, h in unit["rels"])
    assert rels["prev"].endswith("units/features.0/0.html") and rels["next"].endswith("units/features.0/2.html")


@requires_browser
def test_keyboard_navigation(demo_gallery):
    from playwright.sync_api import sync_playwright

    from browser import CHROMIUM, FLAGS

    folder, _ = demo_gallery
    render_site(str(folder))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 390, "height": 844})  # phone width
        page.goto("file://" + str(folder / "units/features.0/1.html"))
        page.keyboard.press("ArrowRight")
        page.wait_for_url("**/units/features.0/2.html")
        page.keyboard.press("ArrowLeft")
        page.wait_for_url("**/units/features.0/1.html")
        page.keyboard.press("ArrowLeft")
        page.wait_for_url("**/units/features.0/0.html")
        page.keyboard.press("ArrowLeft")  # the first unit has no previous page: nothing happens
        page.wait_for_timeout(300)
        assert page.url.endswith("units/features.0/0.html")
        # no horizontal overflow of the page body at phone width
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        browser.close()


@requires_browser
def test_real_gallery_with_images_and_hostile_names(tmp_path):
    """A real build (digits model + a user model whose layer name is markup) crawled end to end."""
    import numpy as np
    from PIL import Image
    from torch import nn

    import cnnvis
    from cnnvis.gallery.site import build_gallery

    digits = tmp_path / "digits"
    digits.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8), "L").save(digits / f"{i}.png")
    out = tmp_path / "lenet"
    build_gallery(cnnvis.load_model("lenet-digits"), str(out), filters="0-2", steps=3, preset="both",
                  images=[str(digits)], top_k=2, negative=True, diversity=2, inputs=2, classes=2)
    result = assert_site_is_healthy(str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    units = {(r["layer"], r["filter"]) for r in manifest["records"]}
    layers = {layer for layer, _ in units}
    assert len(result["pages"]) == 1 + len(layers) + len(units)  # every unit and layer page is reachable
    unit = [v for u, v in result["pages"].items() if u.endswith("units/conv2/1.html")][0]
    sources = [src for src, _ in unit["images"]]
    for rel in ("conv2/channel-relu-robust/0001.png", "conv2/channel-relu-plain/0001.png",
                "conv2/channel-relu-robust-negative/0001.png", "conv2/channel-relu-robust-diverse2-1/0001.png"):
        assert any(rel in s for s in sources), rel
    entry = manifest["gallery"]["units"]["conv2/1"]
    for side in ("top", "bottom"):  # 2 crops and their saliency each, loaded from their stored files
        assert len(entry[side]) == 2
        for item in entry[side]:
            for rel in (item["image"], item["saliency"]):
                assert any(s.endswith(rel) for s in sources), rel
    links = [l for l in unit["links"] if "/units/conv1/" in l]
    assert links and all(urlparse(l).path in {urlparse(u).path for u in result["pages"]} for l in links)

    net = nn.Sequential()
    net.add_module("<script>alert(1)</script>", nn.Conv2d(3, 2, 3))
    evil = tmp_path / "evil"
    build_gallery(cnnvis.load_model(net, size=12), str(evil), filters="all", steps=2, preset="plain", classes=0)
    result = assert_site_is_healthy(str(evil))
    assert any(info["title"].startswith("<script>alert(1)</script>") for info in result["pages"].values())


@requires_browser
def test_the_jump_box_finds_a_unit_offline(demo_gallery):
    from playwright.sync_api import sync_playwright

    from browser import CHROMIUM, FLAGS

    folder, _ = demo_gallery
    render_site(str(folder))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        page.goto("file://" + str(folder / "index.html"))
        page.select_option("form.jump select", label="features.5")
        page.fill("form.jump input[name=unit]", "3")
        page.click("form.jump button")
        page.wait_for_url("**/units/features.5/3.html")
        # from a layer page: its own layer is chosen; a unit without a page says which units have one
        page.goto("file://" + str(folder / "layers/features.0.html"))
        assert page.eval_on_selector("form.jump select", "s => s.options[s.selectedIndex].text") == "features.0"
        page.fill("form.jump input[name=unit]", "40")
        page.click("form.jump button")
        page.wait_for_timeout(200)
        assert page.url.endswith("layers/features.0.html")
        assert page.text_content(".jump-message") == "features.0 has no page for unit 40 (units shown: 0, 1, 2, 3, 4, 5)"
        page.fill("form.jump input[name=unit]", "5")
        page.press("form.jump input[name=unit]", "Enter")
        page.wait_for_url("**/units/features.0/5.html")
        browser.close()


@pytest.mark.slow
@requires_browser
def test_a_layer_page_of_2048_units_fetches_only_the_pictures_in_view(tmp_path):
    """Lazy pictures: a 2,048-unit layer page asks for the few tiles near the window, not for all of them
    (its load time is measured by benchmarks/bench_pages.py)."""
    from playwright.sync_api import sync_playwright

    from browser import CHROMIUM, FLAGS
    from demo import write_demo_gallery

    folder = tmp_path / "wide"
    write_demo_gallery(str(folder), layers=(("wide", 2048),), dead=())
    render_site(str(folder))
    fetched = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: fetched.append(r.url) if r.url.endswith(".png") else None)
        page.goto("file://" + str(folder / "layers/wide.html"), wait_until="load")
        figures = page.eval_on_selector_all(".grid.swap figure", "fs => fs.length")
        lazy = page.eval_on_selector_all(".grid.swap img", "is => is.filter(i => i.loading === 'lazy').length")
        browser.close()
    assert figures == 2048 and lazy == 2048
    assert 0 < len(fetched) < 400, len(fetched)


@pytest.mark.slow
@requires_browser
def test_kernel_cells_drawn_in_the_browser_match_the_weights(tmp_path):
    """The unit page carries its kernel as data; Chromium draws one cell per weight with the colour and
    the hover value that gallery/render.py's kernel_cells computes, from the model's own weights."""
    from click.testing import CliRunner
    from playwright.sync_api import sync_playwright

    import cnnvis
    from browser import CHROMIUM, FLAGS
    from cnnvis.cli import main
    from cnnvis.gallery.render import diverging, kernel_cells

    out = tmp_path / "g"
    r = CliRunner().invoke(main, ["gallery", "lenet-digits", "--filters", "2", "--steps", "2", "--inputs", "0",
                                  "--classes", "0", "--no-examples", "--quiet", "-o", str(out)])
    assert r.exit_code == 0, r.output
    weight = cnnvis.load_model("lenet-digits").model.conv2.weight.detach()  # 16 x 6 x 5 x 5
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        page.goto("file://" + str(out / "units/conv2/1.html"))
        drawn = page.evaluate("""Array.from(document.querySelectorAll('svg.kernel rect')).map(r => ({
            x: Number(r.getAttribute('x')), y: Number(r.getAttribute('y')), size: Number(r.getAttribute('width')),
            colour: r.getAttribute('fill'), title: r.querySelector('title').textContent}))""")
        view = page.evaluate("""(s => ({layout: s.dataset.layout, weights: s.dataset.values,
                                         vmax: Number(s.dataset.vmax)}))(document.querySelector('svg.kernel'))""")
        browser.close()
    assert len(drawn) == weight[1].numel() == 150
    assert drawn == kernel_cells(view)
    vmax = float(weight.abs().max())
    assert abs(view["vmax"] - vmax) < 1e-6
    for cell, w in zip(drawn, weight[1].flatten().tolist()):
        assert abs(float(cell["title"].rsplit(": ", 1)[1]) - w) <= 5e-4 * abs(w) + 1e-5
        want = diverging(w, vmax)
        assert all(abs(int(cell["colour"][i:i + 2], 16) - int(want[i:i + 2], 16)) <= 1 for i in (1, 3, 5))
    ch, y, x = 4, 2, 3  # an inner cell: the sixth of a row of 5x5 kernels
    assert drawn[(ch * 5 + y) * 5 + x]["title"].startswith(f"input {ch}, row {y}, column {x}: ")


@requires_browser
def test_a_layer_grid_sorts_by_each_score_in_the_browser(demo_gallery):
    from playwright.sync_api import sync_playwright

    from browser import CHROMIUM, FLAGS
    from test_render import _with_scores

    folder, manifest = demo_gallery
    natural = _with_scores(folder, manifest)
    order = "fs => fs.map(f => Number(f.getAttribute('data-order')))"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        page.goto("file://" + str(folder / "layers/features.0.html"), wait_until="load")
        page.click("button[data-sort=natural]")
        by_natural = page.eval_on_selector_all(".grid.swap figure", order)
        pressed = page.get_attribute("button[data-sort=natural]", "aria-pressed")
        page.click("button[data-sort=synthetic]")
        by_synthetic = page.eval_on_selector_all(".grid.swap figure", order)
        page.click("button[data-sort=order]")
        back = page.eval_on_selector_all(".grid.swap figure", order)
        opacity = page.eval_on_selector_all(".grid.swap img", "is => is.map(i => i.style.opacity)")
        browser.close()
    defined = sorted((f for f, v in natural.items() if v is not None), key=lambda f: -natural[f])
    assert by_natural == defined + [1] and pressed == "true"  # highest first, the undefined unit last
    assert by_synthetic == list(reversed(defined)) + [1]  # synthetic = 1.2 - natural in the demo
    assert back == list(range(6)) and set(opacity) == {""}  # sorting leaves the pictures alone
