import json
import os
import re

from cnnvis.gallery.render import build_context, page_name, render_site

from demo import write_demo_gallery


def _links(html):
    return re.findall(r'href="([^"]+)"', html)


def test_pages_and_relative_links(demo_gallery):
    folder, manifest = demo_gallery
    changed = render_site(str(folder))
    expected = {"index.html", "layers/features.0.html", "layers/features.5.html", "static/gallery.css", "static/gallery.js"}
    expected |= {f"units/features.0/{i}.html" for i in range(6)} | {f"units/features.5/{i}.html" for i in range(4)}
    assert set(changed) == expected
    for rel in expected:
        assert (folder / rel).exists()
        if rel.endswith(".html"):
            html = (folder / rel).read_text()
            for link in _links(html):
                assert not link.startswith(("http:", "https:", "/", "//")), (rel, link)
                target = os.path.normpath(os.path.join(folder, os.path.dirname(rel), link))
                assert os.path.exists(target), (rel, link)
            assert "http://" not in html and "https://" not in html


def test_unit_page_content_and_neighbours(demo_gallery):
    folder, _ = demo_gallery
    render_site(str(folder))
    first = (folder / "units/features.0/0.html").read_text()
    assert 'rel="prev"' not in first and 'href="../../units/features.0/1.html" rel="next"' in first
    last_of_layer = (folder / "units/features.0/5.html").read_text()
    assert 'href="../../units/features.5/0.html" rel="next">features.5 · 0' in last_of_layer
    assert 'href="../../layers/features.0.html"' in last_of_layer  # back to its layer
    dead = (folder / "units/features.0/2.html").read_text()
    assert "<strong>dead</strong>" in dead and "<strong>dead</strong>" not in first
    assert "0.5 → 4" in first and "fraction active" in first and "<polyline" in first


def test_escaping_of_names(tmp_path):
    evil = '<script>alert("x")</script>'
    write_demo_gallery(str(tmp_path), layers=((evil, 2),), dead=())
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["model"]["name"] = "<img src=x onerror=alert(1)>"
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    render_site(str(tmp_path))
    for page in tmp_path.rglob("*.html"):
        html = page.read_text()
        assert "<script>alert" not in html and "<img src=x" not in html
    index = (tmp_path / "index.html").read_text()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in index
    assert page_name(evil) != evil and "/" not in page_name(evil) and "<" not in page_name(evil)
    assert page_name("features.10") == "features.10"


def test_rerender_touches_nothing_and_missing_files_are_left_out(demo_gallery):
    folder, manifest = demo_gallery
    render_site(str(folder))
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*.html")}
    assert render_site(str(folder)) == []
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.html")} == stamps
    os.remove(folder / "img" / "0_3.png")  # an image that went missing is not linked
    ctx = build_context(str(folder), manifest)
    unit = [u for u in ctx["layers"][0]["units"] if u["filter"] == 3][0]
    assert unit["pictures"] == [] and unit["kernel"] is None and unit["thumb"] is None
    changed = render_site(str(folder))
    assert "units/features.0/3.html" in changed and "img/0_3.png" not in (folder / "units/features.0/3.html").read_text()


def test_a_dead_negative_picture_says_so_on_its_card(demo_gallery):
    """A unit whose positive picture is fine but whose negative picture is dead: the unit page marks
    that card (outline and badge, with the record's reason) and not the positive one."""
    import shutil

    folder, _ = demo_gallery
    m = json.loads((folder / "manifest.json").read_text())
    positive = next(r for r in m["records"] if r["layer"] == "features.0" and r["filter"] == 0)
    negative = dict(positive, variant=positive["variant"] + "-negative", negative=True, status="dead", dead=True,
                    reason="its objective and gradient are exactly zero for the starting image",
                    image=positive["image"].replace(".png", "-negative.png"))
    shutil.copy(folder / positive["image"], folder / negative["image"])
    m["records"].append(negative)
    (folder / "manifest.json").write_text(json.dumps(m))
    render_site(str(folder))
    html = (folder / "units/features.0/0.html").read_text()
    cards = re.findall(r"<figure class=\"picture[^\"]*\">.*?</figure>", html, re.S)
    neg = [c for c in cards if "Negative" in c]
    pos = [c for c in cards if "Positive" in c]
    assert len(neg) == 1 and len(pos) == 1
    assert 'class="dead"' in neg[0] and '<span class="badge">dead</span>' in neg[0]
    assert "exactly zero for the starting image" in neg[0]
    assert 'class="dead"' not in pos[0] and "badge" not in pos[0]


def _with_scores(folder, manifest):
    """The demo gallery with scores on features.0: unit 1 undefined (with its reason), the others defined."""
    natural = {0: 0.61, 1: None, 2: 0.9, 3: 0.75, 4: 0.55, 5: 0.8}
    for f, mis in natural.items():
        reason = None if mis is not None else "the unit's response is 0 on every one of the 320 images"
        manifest["gallery"]["units"][f"features.0/{f}"]["scores"] = {
            "natural": {"mis": mis, "accuracy": mis, "reason": reason, "tasks": 20},
            "synthetic": {"mis": None if mis is None else round(1.2 - mis, 2), "accuracy": None, "reason": reason,
                          "tasks": 20}}
    manifest["gallery"]["settings"]["score"] = {"model": "efficientnet-lite1", "k": 9, "paper": "https://arxiv.org/abs/2405.13808"}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    render_site(str(folder))
    return natural


def test_scores_on_unit_pages_layer_tiles_and_index_medians(demo_gallery):
    folder, manifest = demo_gallery
    _with_scores(folder, manifest)
    unit = (folder / "units/features.0/2.html").read_text()
    assert "natural <strong class=\"score\">0.90</strong>" in unit and "synthetic <strong class=\"score\">0.30</strong>" in unit
    assert "(efficientnet-lite1)" in unit and 'href="https://arxiv.org/abs/2405.13808"' in unit
    undefined = (folder / "units/features.0/1.html").read_text()
    assert "undefined" in undefined and "the unit&#39;s response is 0 on every one of the 320 images" in undefined
    layer = (folder / "layers/features.0.html").read_text()
    assert 'data-sort="natural"' in layer and 'data-sort="synthetic"' in layer
    assert '<figure data-order="2" data-natural="0.9" data-synthetic="0.3">' in layer
    assert '<figure data-order="1">' in layer  # undefined: no value to sort by
    index = (folder / "index.html").read_text()
    # medians of the five defined units: natural 0.75, synthetic median of (0.59, 0.3, 0.45, 0.65, 0.4) = 0.45
    assert "natural 0.75</span>" in index and "synthetic 0.45</span>" in index
    assert "median MIS" not in (folder / "layers/features.5.html").read_text()  # a layer without scores: no buttons
    assert 'data-sort' not in (folder / "layers/features.5.html").read_text()


def test_curves_in_whole_units_and_settings_with_only_what_html_needs_escaped(tmp_path):
    manifest = write_demo_gallery(str(tmp_path))
    manifest["records"][0]["settings"] = {"preset": "robust", "note": 'a <b> & "c"'}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    render_site(str(tmp_path))
    page = (tmp_path / "units/features.0/0.html").read_text()
    # the curve 0.5, 1, 2, 4 in a 320 x 120 box with 6 of padding, highest at the top: whole units
    assert '<polyline points="6,114 109,99 211,68 314,6"/>' in page
    pre = re.search(r"<pre>(.*?)</pre>", page, re.S).group(1)
    assert '"note": "a &lt;b&gt; &amp; \\"c\\""' in pre and '"preset": "robust"' in pre and "&#34;" not in pre
