"""A small gallery folder built without torch, for renderer and browser tests."""

import json
import os

import numpy as np
from PIL import Image


def write_demo_gallery(folder, layers=(("features.0", 6), ("features.5", 4)), dead=(("features.0", 2),)):
    """A gallery folder with small PNGs and a manifest, built without torch."""
    rng = np.random.default_rng(0)
    units, infos = [], []
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    for li, (name, n) in enumerate(layers):
        infos.append({"name": name, "type": "Conv2d", "channels": n, "output_shape": [n, 16, 16]})
        for f in range(n):
            rel = f"img/{li}_{f}.png"
            Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(os.path.join(folder, rel))
            units.append({
                "layer": name, "filter": f, "dead": (name, f) in dead, "kernel": rel,
                "images": {"robust": {"image": rel, "objective": "channel-l2", "objective_initial": 0.5,
                                      "objective_final": 4.0, "loss_curve": [0.5, 1.0, 2.0, 4.0], "steps": 4, "seed": 0}},
                "stats": {"mean": 0.1, "std": 0.2, "min": -1.0, "max": 2.0, "fraction_active": 0.5, "count": 3},
                "top": [{"image": rel, "saliency": rel, "score": 1.0, "name": "a.png"}],
            })
    manifest = {"model": {"name": "demo", "weights": "none", "input": "3x16x16"},
                "settings": {"preset": "robust", "steps": 4, "size": 16, "seed": 0}, "layers": infos, "units": units}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return manifest
