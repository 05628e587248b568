"""Render a gallery folder's ``manifest.json`` into a static site. No torch: only the manifest and files.

Pages: ``index.html`` -> ``layers/<layer>.html`` -> ``units/<layer>/<filter>.html``, every link
relative, styles and the keyboard script copied into ``static/``. A page is rewritten only
when its text changes, so re-rendering a finished site touches nothing.

The manifest (written by :mod:`cnnvis.runs`) is a JSON object::

    {"model": {"name", "weights", "input"}, "settings": {...},
     "layers": [{"name", "type", "channels", "output_shape", "kernel_grid", "histogram", "channel_chart"}],
     "units": [{"layer", "filter", "dead", "retries", "kernel",
                "images": {"robust": {"image", "objective", "objective_initial", "objective_final", "loss_curve", ...},
                           "plain": {...}},
                "stats": {"mean", "std", "min", "max", "fraction_active", "count"},
                "top": [{"image", "saliency", "name", "score"}]}],
     "missing": 0}

Paths inside it are relative to the gallery folder. Missing keys are fine: a page shows what exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from typing import Dict, List, Optional

STRIP = 16  # thumbnails per layer on the index page
SETTINGS_SKIP = {"image", "objective", "objective_initial", "objective_final", "loss_curve", "layer", "filter",
                 "dead", "status", "versions", "retries", "preset", "settings", "unit_seed", "channels",
                 "layer_channels", "model", "weights", "fingerprint", "class_name"}


def page_name(layer: str) -> str:
    """A layer name as a file name: kept when already safe, else sanitised plus a short hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", layer).strip(".") or "_"
    if safe != layer:
        safe += "-" + hashlib.sha1(layer.encode("utf-8")).hexdigest()[:6]
    return safe


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
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".page.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


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
    return " ".join(
        f"{pad + (width - 2 * pad) * i / n:.1f},{height - pad - (height - 2 * pad) * (v - lo) / span:.1f}"
        for i, v in enumerate(values)
    )


def _record_view(rec: dict) -> dict:
    settings = []
    for key, value in rec.items():
        if key in SETTINGS_SKIP or value is None or isinstance(value, (dict, list)) and len(json.dumps(value)) > 200:
            continue
        settings.append((key, value if not isinstance(value, float) else f"{value:.4g}"))
    return {
        "image": rec.get("image"),
        "objective": rec.get("objective", "?"),
        "objective_initial": rec.get("objective_initial"),
        "objective_final": rec.get("objective_final"),
        "settings": settings,
        "curve_points": _curve_points(rec.get("loss_curve")),
        "all_settings": json.dumps(rec.get("settings"), indent=1, sort_keys=True) if rec.get("settings") else None,
        "versions": ", ".join(f"{k} {v}" for k, v in (rec.get("versions") or {}).items()),
    }


def _exists(out_dir: str, rel: Optional[str]) -> Optional[str]:
    """Keep a path only if the file is there (so every <img> on a page loads)."""
    if rel and os.path.isfile(os.path.join(out_dir, rel)):
        return rel.replace(os.sep, "/")
    return None


def build_context(out_dir: str, manifest: dict) -> dict:
    """The manifest turned into what the templates need: pages, thumbnails, neighbours."""
    layers: List[dict] = []
    by_name: Dict[str, dict] = {}
    for info in manifest.get("layers", []):
        layer = dict(info)
        layer["page"] = f"layers/{page_name(layer['name'])}.html"
        for key in ("kernel_grid", "histogram", "channel_chart"):
            layer[key] = _exists(out_dir, layer.get(key))
        layer["units"] = []
        layers.append(layer)
        by_name[layer["name"]] = layer
    for raw in manifest.get("units", []):
        layer = by_name.get(raw.get("layer"))
        if layer is None:
            continue
        unit = {"filter": int(raw["filter"]), "dead": bool(raw.get("dead")), "retries": raw.get("retries") or 0}
        unit["page"] = f"units/{page_name(layer['name'])}/{unit['filter']}.html"
        images = []
        for preset in ("robust", "plain"):
            rec = (raw.get("images") or {}).get(preset)
            if rec and _exists(out_dir, rec.get("image")):
                view = _record_view(rec)
                view["image"] = _exists(out_dir, rec["image"])
                images.append((preset, view))
        for preset, rec in sorted((raw.get("images") or {}).items()):
            if preset not in ("robust", "plain") and rec and _exists(out_dir, rec.get("image")):
                images.append((preset, _record_view(rec)))
        unit["images"] = images
        unit["kernel"] = _exists(out_dir, raw.get("kernel"))
        unit["stats"] = raw.get("stats") or None
        unit["top"] = [
            {"image": _exists(out_dir, t.get("image")), "saliency": _exists(out_dir, t.get("saliency")),
             "name": t.get("name") or os.path.basename(t.get("image") or ""), "score": t.get("score")}
            for t in raw.get("top") or [] if _exists(out_dir, t.get("image"))
        ]
        unit["thumb"] = images[0][1]["image"] if images else unit["kernel"]
        layer["units"].append(unit)
    for layer in layers:
        layer["units"].sort(key=lambda u: u["filter"])
    return {
        "model": manifest.get("model", {"name": "model", "weights": "?", "input": "?"}),
        "settings": manifest.get("settings", {}),
        "layers": layers,
        "n_units": sum(len(l["units"]) for l in layers),
        "n_missing": int(manifest.get("missing") or 0),
        "strip": STRIP,
    }


def render_site(out_dir: str, manifest: Optional[dict] = None) -> List[str]:
    """Write the site for ``out_dir/manifest.json`` (or the given manifest). Returns pages changed."""
    from cnnvis import __version__

    if manifest is None:
        with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    ctx = build_context(out_dir, manifest)
    env = _environment()
    common = {"model": ctx["model"], "version": __version__}
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

    emit("index.html", "index.html", "", settings=ctx["settings"], layers=ctx["layers"], n_units=ctx["n_units"],
         n_missing=ctx["n_missing"], strip=ctx["strip"])
    # one sequence of every unit, shallow to deep, for prev/next
    sequence = [(layer, unit) for layer in ctx["layers"] for unit in layer["units"]]
    for i, layer in enumerate(ctx["layers"]):
        emit(layer["page"], "layer.html", "../", layer=layer,
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
