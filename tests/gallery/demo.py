"""A small gallery folder built without torch, for renderer and browser tests."""

import json
import os

import numpy as np
from PIL import Image


def write_demo_gallery(folder, layers=(("features.0", 6), ("features.5", 4)), dead=(("features.0", 2),)):
    """A gallery folder with small PNGs and a manifest (the format cnnvis.atlas.store writes), built without torch."""
    rng = np.random.default_rng(0)
    records, infos, units = [], [], {}
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    for li, (name, n) in enumerate(layers):
        kernels = {}
        for f in range(n):
            rel = f"img/{li}_{f}.png"
            Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(os.path.join(folder, rel))
            kernels[str(f)] = rel
            is_dead = (name, f) in dead
            records.append({"layer": name, "filter": f, "variant": "channel-l2-robust", "image": rel,
                            "objective": "channel-l2", "preset": "robust", "dead": is_dead,
                            "status": "dead" if is_dead else "ok", "objective_initial": 0.5, "objective_final": 4.0,
                            "loss_curve": [0.5, 1.0, 2.0, 4.0], "steps": 4, "seed": 0, "fingerprint": "demo"})
            units[f"{name}/{f}"] = {
                "layer": name, "filter": f,
                "stats": {"mean": 0.1, "std": 0.2, "min": -1.0, "max": 2.0, "fraction_active": 0.5, "count": 3},
                "top": [{"image": rel, "saliency": rel, "score": 1.0, "name": "a.png"}],
            }
        infos.append({"name": name, "type": "Conv2d", "channels": n, "output_shape": [n, 16, 16],
                      "filters": list(range(n)), "kernels": kernels})
    manifest = {"version": 2, "model": {"name": "demo", "weights": "none", "input": "3x16x16"}, "records": records,
                "gallery": {"settings": {"preset": "robust", "objective": "channel-l2", "steps": 4, "size": 16,
                                         "seed": 0, "variants": ["channel-l2-robust"]},
                            "layers": infos, "units": units}}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return manifest
