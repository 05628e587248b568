"""The files a gallery writes for each layer beside its units' pictures: the kernels (an image per filter on its
own scale and on the layer's, and the values the pages draw) and a DeepDream of the layer.

Folder layout::

    kernels/<layer>/filter-NNNN.png, shared-NNNN.png, values-<hash>.f32
    dreams/<layer>.webp, dreams/meta.json
"""

from __future__ import annotations

import hashlib
import os
from typing import List, Optional, Sequence

from cnnvis.atlas.store import fingerprint
from cnnvis.core.errors import CnnvisError, InputError
from cnnvis.core.files import layer_file, write_bytes
from cnnvis.core.io import encode_image, read_json, save_json, save_png
from cnnvis.inspection.filters import default_zoom, kernel_weight, render_filters, save_filters, zoom
from cnnvis.synthesis.techniques import dream

__all__ = ["DREAM_QUALITY", "KERNEL_VALUES", "dream_file", "kernel_images", "kernel_values", "write_dreams"]


#: Kernels with at most this many weights carry their values into the pages (shown on hover).
KERNEL_VALUES = 2048


def kernel_values(lm, folder: str, layer: str, filters: Sequence[int]) -> Optional[dict]:
    """The layer's largest |w| (the colour scale) and kernel shape; the filters' kernels (in x kh x kw) go to
    ``kernels/<layer>/values-<hash>.f32`` (little-endian float32, one row per filter in ``filters`` order) for the
    pages to draw, written once, not into every copy of the manifest (the main job's linked 1x1 layers
    carried 1.3 MB of values into both the database and the export)."""
    try:
        w = kernel_weight(lm, layer)
    except InputError:
        return None
    entry = {"max": float(w.abs().max()), "shape": list(w.shape[1:]), "filters": []}
    if w[0].numel() > KERNEL_VALUES or not filters:
        return entry
    data = w[list(filters)].detach().float().cpu().flatten(1).numpy().astype("<f4").tobytes()
    # named by content: an entry always points at the rows it describes, whichever writer's entry is kept
    rel = f"kernels/{layer_file(layer)}/values-{hashlib.sha256(data).hexdigest()[:16]}.f32"
    write_bytes(os.path.join(folder, rel), data, keep_identical=True)
    return dict(entry, filters=[int(f) for f in filters], file=rel)


#: WebP quality of the DeepDreams.
DREAM_QUALITY = 90


def dream_file(layer: str) -> str:
    """A layer's DeepDream: a photograph changed, not a measurement, so a WebP (a sixth of the PNG's bytes)."""
    return f"dreams/{layer_file(layer)}.webp"


def write_dreams(lm, folder: str, layers: List[dict], model_fp: str, force: bool) -> int:
    """A DeepDream of each layer on one bundled photograph (the photo and the dream side by side),
    redone when the model's weights change. Returns how many were made."""
    try:
        from skimage import data

        photo = data.chelsea()
    except Exception:  # scikit-image missing: no dreams
        return 0
    meta_path = os.path.join(folder, "dreams", "meta.json")
    meta = read_json(meta_path, default={}, damaged="default") or {}
    done = 0
    for layer in layers:
        rel = dream_file(layer["name"])
        key = fingerprint(model_fp, layer["name"], "chelsea", 1)
        if not force and meta.get(layer["name"]) == key and os.path.isfile(os.path.join(folder, rel)):
            continue
        try:
            result = dream(lm, photo, layer["name"], octaves=3, steps=8)
        except InputError:
            continue  # a layer dream cannot amplify (no spatial output): none to show
        write_bytes(os.path.join(folder, rel), encode_image(result.pair(), "WEBP", quality=DREAM_QUALITY),
                    keep_identical=True)
        stale = os.path.join(folder, rel[:-len(".webp")] + ".png")  # an earlier version's PNG
        if os.path.isfile(stale):
            os.remove(stale)
        meta[layer["name"]] = key
        done += 1
    if done:
        save_json(meta, meta_path)
    return done


def kernel_images(lm, folder: str, layers: List[dict], force: bool) -> None:
    """Kernel images of every layer that has kernels, each filter on its own scale and once more on the layer's
    shared scale (the layer page's grid switches between them); deterministic, so shards agree. No grid image:
    the page lays the filters out itself (``cnnvis filters`` writes one)."""
    for layer in layers:
        where = os.path.join(folder, "kernels", layer_file(layer["name"]))
        wanted = [f"filter-{f:04d}.png" for f in layer["filters"]] + [f"shared-{f:04d}.png" for f in layer["filters"]]
        if not force and all(os.path.isfile(os.path.join(where, name)) for name in wanted):
            continue
        try:
            spec = ",".join(map(str, layer["filters"]))
            result = render_filters(lm, layer["name"], spec)
            shared = render_filters(lm, layer["name"], spec, scale="layer")
        except CnnvisError:
            continue  # a layer without kernels simply has none to show
        # no weight.npy: the pages show the kernels' values, and `cnnvis filters` writes the exact weights
        save_filters(result, os.path.join(folder, "kernels"), folder=layer_file(layer["name"]), weights=False,
                     grid=False)
        side = default_zoom(max(max(im.shape[-2:]) for im in shared.images))
        for f, im in zip(shared.indices, shared.images):
            save_png(zoom(im, side), os.path.join(where, f"shared-{f:04d}.png"), keep_identical=True)
