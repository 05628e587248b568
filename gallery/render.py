"""Render a gallery folder's ``manifest.json`` into a static site. No torch: only the manifest and files.

Pages: ``index.html`` -> ``layers/<layer>.html`` -> ``units/<layer>/<filter>.html``, every link
relative, styles and the keyboard script copied into ``static/``. A page is rewritten only
when its text changes, so re-rendering a finished site touches nothing.

The manifest (written through :mod:`cnnvis.atlas.store`) is a JSON object::

    {"version": 2,
     "model": {"name", "weights", "input"},
     "records": [{"layer", "filter", "variant", "image", "objective", "preset", "dead", "status",
                  "objective_initial", "objective_final", "loss_curve", "steps", "seed", ...}],
     "gallery": {"settings": {"preset", "objective", "steps", "size", "seed", "images", "variants"},
                 "layers": [{"name", "type", "channels", "output_shape", "filters", "kernel_grid",
                             "kernels": {"<filter>": path}, "histogram", "channel_chart",
                             "weights": {"max", "shape", "filters", "file": "kernels/<layer>/values-<hash>.f32"}}],
                 "units": {"<layer>/<filter>": {"stats": {...}, "top": [{"image", "saliency", "saliency_cells", "name", "value"}]}}}}

Each unit page shows every record of that unit (one per variant). Layers and units that only
records name (a ``cnnvis maximize`` into the folder) are shown too, after the gallery's own.
Paths inside it are relative to the gallery folder. Missing keys are fine: a page shows what exists.
"""

from __future__ import annotations

import array
import html
import json
import os
import statistics
import sys
from typing import Dict, List, Optional

from markupsafe import Markup

from cnnvis.core.files import layer_file, write_text

STRIP = 16  # thumbnails per layer on the index page
SMALL_CANVAS = 64  # a layer whose pictures are at most this many pixels gets larger tiles
SETTINGS_SKIP = {"image", "objective", "objective_initial", "objective_final", "loss_curve", "layer", "filter",
                 "dead", "status", "versions", "retries", "preset", "settings", "unit_seed", "channels", "unit_note",
                 "layer_channels", "model", "weights", "fingerprint", "class_name", "variant"}


def page_name(layer: str) -> str:
    """A layer name as a file name (see :func:`cnnvis.core.files.layer_file`)."""
    return layer_file(layer)


def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(
        loader=PackageLoader("cnnvis.gallery", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _write_if_changed(path: str, text: str) -> bool:
    return write_text(path, text, keep_identical=True)


def _curve_points(curve, width: int = 320, height: int = 120, pad: int = 6) -> Optional[str]:
    values = [float(v) for v in (curve or []) if v is not None and v == v and abs(float(v)) != float("inf")]
    if len(values) < 2:
        return None
    if len(values) > width:  # at most one point per pixel
        step = len(values) / width
        values = [values[int(i * step)] for i in range(width)] + [values[-1]]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    n = len(values) - 1
    # whole units of the 320 x 120 box: what a pixel can show, and a third fewer bytes than tenths
    return " ".join(
        f"{round(pad + (width - 2 * pad) * i / n)},{round(height - pad - (height - 2 * pad) * (v - lo) / span)}"
        for i, v in enumerate(values)
    )


def _record_view(rec: dict) -> dict:
    settings = []
    for key, value in rec.items():
        if key in SETTINGS_SKIP or value is None or isinstance(value, (dict, list)) and len(json.dumps(value)) > 200:
            continue
        settings.append((key, value if not isinstance(value, float) else f"{value:.4g}"))
    return {
        "variant": rec.get("variant") or f"{rec.get('objective', '?')}-{rec.get('preset', '?')}",
        "image": rec.get("image"),
        "objective": rec.get("objective", "?"),
        "preset": rec.get("preset", "?"),
        "objective_initial": rec.get("objective_initial"),
        "objective_final": rec.get("objective_final"),
        "status": rec.get("status") or ("dead" if rec.get("dead") else "ok"),
        "reason": rec.get("reason"),
        "class_name": rec.get("class_name"),
        "settings": settings,
        "curve_points": _curve_points(rec.get("loss_curve")),
        # text in a <pre>: only &, < and > need escaping (quotes written as &#34; cost 4 bytes each)
        "all_settings": Markup(html.escape(json.dumps(rec.get("settings"), indent=1, sort_keys=True), quote=False))
        if rec.get("settings") else None,
        "versions": ", ".join(f"{k} {v}" for k, v in (rec.get("versions") or {}).items()),
        "kind": _kind(rec),
        "caption": _caption(rec),
        "unit_kind": rec.get("unit_kind"),
        "unit_note": rec.get("unit_note"),
        "objective_layer": rec.get("objective_layer"),
    }


def _kind(rec: dict) -> str:
    """What a picture shows of its unit: positive, negative, neuron, diverse (or another variant)."""
    if rec.get("diversity"):
        return "diverse"
    if rec.get("negative"):
        return "negative"
    if rec.get("objective") == "neuron":
        return "neuron"
    return "positive"


def _caption(rec: dict) -> str:
    kind = _kind(rec)
    words = {
        "positive": "what excites the unit most" if rec.get("objective") != "class" else "what the class looks for",
        "negative": "what switches the unit off",
        "neuron": "what excites its centre position",
        "diverse": f"diverse picture {int(rec.get('diversity_index', 0)) + 1} of {rec.get('diversity')}",
    }
    return words[kind]


def _exists(out_dir: str, rel: Optional[str]) -> Optional[str]:
    """Keep a path only if the file is there (so every <img> on a page loads)."""
    if rel and os.path.isfile(os.path.join(out_dir, rel)):
        return rel.replace(os.sep, "/")
    return None


def _records_by_unit(manifest: dict) -> Dict[tuple, Dict[str, dict]]:
    units: Dict[tuple, Dict[str, dict]] = {}
    for rec in manifest.get("records") or []:
        try:
            key = (str(rec["layer"]), int(rec["filter"]))
        except (KeyError, TypeError, ValueError):
            continue
        variant = rec.get("variant") or f"{rec.get('objective', '?')}-{rec.get('preset', '?')}"
        units.setdefault(key, {})[variant] = rec
    return units


# a diverging colour scale (blue < 0 < red), RdBu's anchors
_RDBU = [(5, 48, 97), (67, 147, 195), (247, 247, 247), (214, 96, 77), (103, 0, 31)]


def diverging(value: float, vmax: float) -> str:
    """``value`` in ``[-vmax, vmax]`` as a hex colour of a blue-white-red scale.

    Example:
        >>> diverging(0.0, 1.0), diverging(1.0, 1.0), diverging(-5.0, 1.0)
        ('#f7f7f7', '#67001f', '#053061')
    """
    t = 0.5 if vmax <= 0 else min(max((value / vmax + 1) / 2, 0.0), 1.0)
    pos = t * (len(_RDBU) - 1)
    i = min(int(pos), len(_RDBU) - 2)
    f = pos - i
    a, b = _RDBU[i], _RDBU[i + 1]
    return "#" + "".join(f"{round(a[k] + (b[k] - a[k]) * f):02x}" for k in range(3))


def kernel_rows(out_dir: str, weights: Optional[dict]) -> Dict[str, List[float]]:
    """The kernel values a gallery layer's ``weights`` entry points at, by filter: its ``values-<hash>.f32`` file
    (little-endian float32, a row per filter of ``filters``), or the ``values`` earlier manifests held."""
    if not weights:
        return {}
    if weights.get("values"):
        return weights["values"]
    filters = weights.get("filters")
    if not weights.get("file") or not filters:
        return {}
    try:
        with open(os.path.join(out_dir, weights["file"]), "rb") as f:
            data = array.array("f", f.read())
    except OSError:
        return {}
    if sys.byteorder != "little":
        data.byteswap()
    if len(data) % len(filters):
        return {}
    n = len(data) // len(filters)
    return {str(k): data[i * n : (i + 1) * n].tolist() for i, k in enumerate(filters)}


def _kernel_view(weights: Optional[dict], f: int, rows: Optional[Dict[str, List[float]]] = None) -> Optional[dict]:
    """A unit's kernel as SVG cells (one per weight, coloured on the layer's scale, value on hover).

    The page carries the layout and the values (4 significant digits) as data; ``gallery.js`` draws the
    cells (:func:`diverging`'s scale) and their titles. Per-cell markup cost 110 bytes a weight: 137 KB for a
    1x1 convolution over 1,152 channels, against 9 KB now.
    """
    rows = rows if rows is not None else (weights or {}).get("values") or {}
    if not weights or str(f) not in rows:
        return None
    values = rows[str(f)]
    shape = weights.get("shape") or [1, 1, len(values)]
    c, kh, kw = (list(shape) + [1, 1, 1])[:3]
    vmax = float(weights.get("max") or 0.0)
    cell, gap = (14, 4) if kh * kw > 1 else (10, 1)
    per_row = max(1, min(c, 24 if kh * kw > 1 else 32))
    lines = -(-c // per_row)
    return {"layout": f"{c} {kh} {kw} {per_row} {cell} {gap}", "weights": " ".join(f"{v:.4g}" for v in values),
            "width": per_row * (kw * cell + gap), "height": lines * (kh * cell + gap),
            "vmax": vmax, "low": diverging(-vmax, vmax), "mid": diverging(0, vmax), "high": diverging(vmax, vmax),
            "shape": f"{c}×{kh}×{kw}"}


def kernel_cells(view: dict) -> List[dict]:
    """The cells ``gallery.js`` draws for a :func:`_kernel_view` (position, colour, title): the same
    arithmetic in Python, for tests and for readers of the script.

    Example:
        >>> kernel_cells({"layout": "2 1 1 32 10 1", "weights": "0.5 -1", "vmax": 1.0})[1]
        {'x': 11, 'y': 0, 'size': 10, 'colour': '#053061', 'title': 'input 1, row 0, column 0: -1'}
    """
    c, kh, kw, per_row, cell, gap = (int(n) for n in view["layout"].split())
    texts = view["weights"].split()
    cells = []
    for ch in range(c):
        r, q = divmod(ch, per_row)
        for y in range(kh):
            for x in range(kw):
                text = texts[(ch * kh + y) * kw + x]
                cells.append({"x": q * (kw * cell + gap) + x * cell, "y": r * (kh * cell + gap) + y * cell,
                              "size": cell, "colour": diverging(float(text), view["vmax"]),
                              "title": f"input {ch}, row {y}, column {x}: {text}"})
    return cells


def _histogram_view(hist: Optional[dict], width: int = 320, height: int = 90) -> Optional[dict]:
    if not hist or not hist.get("counts"):
        return None
    counts = hist["counts"]
    top = max(counts) or 1
    bar = width / len(counts)
    bars = [{"x": round(i * bar, 1), "w": round(bar - 1, 1), "h": round((height - 4) * c / top, 1),
             "y": round(height - (height - 4) * c / top, 1), "title": f"{hist['edges'][i]:.3g} to {hist['edges'][i + 1]:.3g}: {c}"}
            for i, c in enumerate(counts)]
    return {"bars": bars, "width": width, "height": height, "low": f"{hist['edges'][0]:.3g}",
            "high": f"{hist['edges'][-1]:.3g}", "what": hist.get("what", "")}


def build_context(out_dir: str, manifest: dict) -> dict:
    """The manifest turned into what the templates need: pages, thumbnails, neighbours."""
    gallery = manifest.get("gallery") or {}
    settings = gallery.get("settings") or {}
    primary = list(settings.get("variants") or [])
    analysis = gallery.get("units") or {}
    records = _records_by_unit(manifest)
    layers: List[dict] = []
    by_name: Dict[str, dict] = {}
    for info in gallery.get("layers") or []:
        layer = dict(info)
        by_name[layer["name"]] = layer
        layers.append(layer)
    for name, _f in sorted(records, key=lambda k: (k[0] == "output", k[0], k[1])):
        if name not in by_name:  # a layer only a maximize run wrote, or the class pictures
            by_name[name] = {"name": name, "type": "class logits" if name == "output" else "", "filters": []}
            layers.append(by_name[name])
    n_missing = 0
    for layer in layers:
        layer["page"] = f"layers/{layer_file(layer['name'])}.html"
        layer["title"] = "Class logits" if layer["name"] == "output" else layer["name"]
        for key in ("kernel_grid", "kernel_grid_shared", "histogram", "channel_chart", "dream"):
            layer[key] = _exists(out_dir, layer.get(key))
        planned = [int(f) for f in layer.get("filters") or []]
        present = sorted({f for (name, f) in records if name == layer["name"]} |
                         {int(a["filter"]) for a in analysis.values() if a.get("layer") == layer["name"]} |
                         set(planned))
        layer["units"] = []
        layer["kernel_rows"] = kernel_rows(out_dir, layer.get("weights"))
        for f in present:
            unit = _unit_view(out_dir, layer, f, records.get((layer["name"], f), {}),
                              analysis.get(f"{layer['name']}/{f}") or {}, primary)
            if unit is None:
                n_missing += f in planned
                continue
            if f in planned and primary and unit["positive"] is None:
                n_missing += 1
            layer["units"].append(unit)
        sizes = [int(v) for f in planned for v in ((records.get((layer["name"], f)) or {}).get(
            (primary or [""])[0]) or {}).get("size") or []]
        layer["small_canvas"] = bool(sizes) and max(sizes) <= SMALL_CANVAS  # a first layer's pattern, shown larger
        layer["kinds"] = [k for k in ("positive", "negative", "neuron", "diverse")
                          if any(u["by_kind"].get(k) for u in layer["units"])]
        layer["scores"] = _layer_scores(layer["units"])
    pages = {(l["name"], u["filter"]): u for l in layers for u in l["units"]}
    for layer in layers:
        for unit in layer["units"]:
            unit["inputs"] = _inputs_view(unit.pop("raw_inputs"), pages)
    return {
        "model": manifest.get("model", {"name": "model", "weights": "?", "input": "?"}),
        "settings": settings,
        "layers": layers,
        "n_units": sum(len(l["units"]) for l in layers),
        "n_missing": n_missing,
        "strip": STRIP,
    }


def _inputs_view(raw: Optional[dict], pages: Dict[tuple, dict]) -> Optional[dict]:
    """Strongest inputs with the thumbnail and page of each linked unit (only links that resolve)."""
    if not raw:
        return None
    source = raw.get("source")
    view = {"source": source, "through": raw.get("through"), "excitatory": [], "inhibitory": []}
    for side in ("excitatory", "inhibitory"):
        for link in raw.get(side) or []:
            c = int(link["channel"])
            item = {"channel": c, "strength": float(link["strength"])}
            if source is None:
                item["label"] = ("red", "green", "blue")[c] if c < 3 else f"channel {c}"
            else:
                unit = pages.get((source, c))
                if unit is not None:
                    item.update(page=unit["page"], thumb=unit["thumb"])
            view[side].append(item)
    return view


def _unit_view(out_dir: str, layer: dict, f: int, recs: Dict[str, dict], info: dict, primary: List[str]) -> Optional[dict]:
    """One unit's page data, or None when nothing of it exists yet."""
    order = [v for v in primary if v in recs] + sorted(v for v in recs if v not in primary)
    pictures = []
    for variant in order:
        rec = recs[variant]
        if _exists(out_dir, rec.get("image")):
            view = _record_view(rec)
            view["image"] = _exists(out_dir, rec["image"])
            pictures.append(view)
    by_kind: Dict[str, list] = {}
    for view in pictures:
        by_kind.setdefault(view["kind"], []).append(view)
    positive = (by_kind.get("positive") or [None])[0]
    kernel = _exists(out_dir, (layer.get("kernels") or {}).get(str(f)))
    examples = {}
    for side in ("top", "bottom"):
        examples[side] = [
            {"image": _exists(out_dir, t.get("image")), "saliency": _exists(out_dir, t.get("saliency")),
             "name": t.get("name") or os.path.basename(t.get("image") or ""), "value": t.get("value", t.get("score")),
             "position": t.get("position"), "pre": t.get("pre"), "saliency_cells": bool(t.get("saliency_cells"))}
            for t in info.get(side) or [] if _exists(out_dir, t.get("image"))
        ]
    stats = info.get("stats") or None
    if not pictures and not stats and not examples["top"]:
        return None
    off = bool(positive and positive.get("unit_kind") == "off")
    negative = (by_kind.get("negative") or [None])[0]
    lead = negative if off and negative is not None else positive
    main = lead or (pictures[0] if pictures else None)
    chain = [str(c) for c in info.get("chain") or []]
    return {
        "filter": f,
        "page": f"units/{layer_file(layer['name'])}/{f}.html",
        "positive": positive,
        "lead": lead,
        "off": off,
        "off_note": positive.get("unit_note") if off else None,
        "chain": chain,
        "raw_stats": info.get("raw_stats") or None,
        "before": info.get("before"),
        "by_kind": by_kind,
        "others": [v for v in pictures if v is not positive and v["kind"] == "positive"],
        "pictures": pictures,
        "kernel": kernel,
        "kernel_shared": _exists(out_dir, (layer.get("kernels_shared") or {}).get(str(f))),
        "kernel_values": _kernel_view(layer.get("weights"), f, layer.get("kernel_rows")),
        "stats": stats,
        "histogram": _histogram_view(info.get("histogram")),
        "reads": info.get("reads"),
        "top": examples["top"],
        "bottom": examples["bottom"],
        "raw_inputs": info.get("inputs"),
        "dead": bool(main and main["status"] in ("dead", "flat")),
        "status": main["status"] if main else None,
        "reason": main.get("reason") if main else None,
        "retries": max(0, int((recs.get(main["variant"], {}) if main else {}).get("attempts") or 1) - 1),
        "scores": _scores_view(info.get("scores")),
        "thumb": main["image"] if main else kernel,
        "label": (main or {}).get("class_name") or str(f),
    }


#: where the interpretability score comes from (the gallery's settings name it too)
SCORE_PAPER = "https://arxiv.org/abs/2405.13808"
#: the two interpretability scores of a unit, in the order pages show them
SCORE_KINDS = (("natural", "natural references"), ("synthetic", "its pictures as references"))


def _scores_view(raw: Optional[dict]) -> Optional[dict]:
    """A unit's scores (``cnnvis.atlas.scores``): per kind its MIS (or None) and why it is undefined."""
    if not raw:
        return None
    return {kind: {"mis": (raw.get(kind) or {}).get("mis"), "reason": (raw.get(kind) or {}).get("reason")}
            for kind, _ in SCORE_KINDS}


def _layer_scores(units: List[dict]) -> Optional[dict]:
    """Each score's median over a layer's units that have it (None when no unit has either)."""
    out = {}
    for kind, _ in SCORE_KINDS:
        values = [u["scores"][kind]["mis"] for u in units if u.get("scores") and u["scores"][kind]["mis"] is not None]
        out[kind] = statistics.median(values) if values else None
        out[f"{kind}_count"] = len(values)
    return out if any(out[k] is not None for k, _ in SCORE_KINDS) else None


def jump_index(layers: List[dict]) -> dict:
    """What the jump box needs: each layer's title and the units that have a page, as JSON safe inside a
    ``<script>`` element (the box works offline: it only builds a relative link)."""
    rows = [{"name": l["name"], "title": l["title"], "dir": f"units/{layer_file(l['name'])}/",
             "units": [u["filter"] for u in l["units"]]} for l in layers]
    text = json.dumps([[r["title"], r["dir"], r["units"]] for r in rows], separators=(",", ":"))
    return {"layers": rows, "json": text.replace("<", "\\u003c")}


def render_site(out_dir: str, manifest: Optional[dict] = None) -> List[str]:
    """Write the site for ``out_dir/manifest.json`` (or the given manifest). Returns pages changed."""
    from cnnvis import __version__

    if manifest is None:
        with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    ctx = build_context(out_dir, manifest)
    env = _environment()
    common = {"model": ctx["model"], "version": __version__, "settings": ctx["settings"], "score_kinds": SCORE_KINDS,
              "score_paper": (ctx["settings"].get("score") or {}).get("paper") or SCORE_PAPER}
    changed: List[str] = []

    def emit(rel: str, template: str, root: str, **kw):
        text = env.get_template(template).render(root=root, **common, **kw)
        if _write_if_changed(os.path.join(out_dir, rel), text):
            changed.append(rel)

    static_src = os.path.join(os.path.dirname(__file__), "static")
    for name in sorted(os.listdir(static_src)):
        src = os.path.join(static_src, name)
        with open(src, encoding="utf-8") as f:
            if _write_if_changed(os.path.join(out_dir, "static", name), f.read()):
                changed.append(f"static/{name}")

    jump = jump_index(ctx["layers"])
    emit("index.html", "index.html", "", layers=ctx["layers"], n_units=ctx["n_units"],
         n_missing=ctx["n_missing"], strip=ctx["strip"], jump=jump, current=None)
    # one sequence of every unit, shallow to deep, for prev/next
    sequence = [(layer, unit) for layer in ctx["layers"] for unit in layer["units"]]
    for i, layer in enumerate(ctx["layers"]):
        emit(layer["page"], "layer.html", "../", layer=layer, jump=jump, current=layer["name"],
             prev_layer=ctx["layers"][i - 1] if i > 0 else None,
             next_layer=ctx["layers"][i + 1] if i + 1 < len(ctx["layers"]) else None)
    for k, (layer, unit) in enumerate(sequence):
        def neighbour(j):
            if 0 <= j < len(sequence):
                nl, nu = sequence[j]
                label = f"{nu['filter']}" if nl is layer else f"{nl['name']} · {nu['filter']}"
                return {"page": nu["page"], "label": label}
            return None

        emit(unit["page"], "unit.html", "../../", layer=layer, unit=unit, prev=neighbour(k - 1), next=neighbour(k + 1))
    return changed
