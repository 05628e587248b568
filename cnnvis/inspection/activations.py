"""Feature maps of one input: what each channel of a layer does with one image.

Statistics over a population of inputs live in :mod:`cnnvis.inspection.stats` (re-exported here).
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch

from cnnvis.core.errors import InputError
from cnnvis.model.hooks import first_output_tensor, frozen, record
from cnnvis.core.io import colorize, make_grid, safe_name, save_figure, save_npy, save_png, zoom
from cnnvis.model.layers import resolve_layers
from cnnvis.model.loading import load_model
from cnnvis.model.probing import call_model
from cnnvis.inspection.stats import (  # noqa: F401  (re-exported: they used to live here)
    Histogram, LayerStats, StatsResult, compute_stats, save_stats, stats_from_batches)


# ------------------------------------------------------------------ one sample


@torch.no_grad()
def compute_activations(model, image, layers) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Run one input through ``model`` (a spec, an ``nn.Module`` or a ``LoadedModel``) and return
    ``(input, {layer: output})``.

    ``input`` is the image as the model saw it (C x H x W in [0, 1], before normalisation);
    each output has its batch dimension removed (C x H x W for conv layers, F for linear ones).
    The forward pass stops after the deepest requested layer.

    Example:
        >>> import cnnvis, torch
        >>> x, acts = compute_activations(cnnvis.load_model("lenet-digits"), torch.rand(1, 32, 32), ["conv2"])
        >>> tuple(acts["conv2"].shape)
        (16, 10, 10)
    """
    model = load_model(model)
    names = resolve_layers(model, layers)
    x = model.input_tensor(image)
    with frozen(model.model), record(model.model, names, stop=True, detach=True) as rec:
        call_model(model, x, rec.run)
    outputs = {}
    for n in names:
        if not rec.calls[n]:
            raise InputError(f"layer {n!r} did not run in the forward pass, so it has no activations")
        t = first_output_tensor(rec.outputs[n])
        outputs[n] = t[0].float().cpu()
    return x[0].cpu(), outputs


def activation_grid(act: torch.Tensor, scale: str = "channel", cmap: str = "viridis", ncol: Optional[int] = None) -> torch.Tensor:
    """C x H x W feature maps -> one RGB grid, a panel per channel.

    ``scale="channel"`` stretches each panel over its own min..max; ``"layer"`` uses one range
    for all panels so strengths compare.
    """
    if act.ndim != 3:
        raise InputError(f"feature maps must be C x H x W, got shape {tuple(act.shape)}")
    if scale not in ("channel", "layer"):
        raise InputError(f"--scale must be channel or layer, got {scale!r}")
    lo, hi = (float(act.min()), float(act.max())) if scale == "layer" else (None, None)
    panels = [colorize(a, cmap, lo, hi) for a in act]
    return make_grid(panels, ncol=ncol, pad=1, pad_value=1.0)


def save_activations(image: torch.Tensor, outputs: Dict[str, torch.Tensor], out_dir: str, scale: str = "channel") -> dict:
    """Write ``input.png``, and per layer ``<layer>.png`` (grid, or a bar chart for outputs
    without spatial extent) and ``<layer>.npy`` (the raw output). Returns the paths."""
    paths = {"input": save_png(image, os.path.join(out_dir, "input.png")), "layers": {}}
    for name, act in outputs.items():
        base = os.path.join(out_dir, safe_name(name))
        entry = {"npy": save_npy(act.numpy(), base + ".npy")}
        if act.ndim == 3:
            grid = activation_grid(act, scale)
            factor = max(1, min(8, 1024 // max(grid.shape[-2:])))
            entry["png"] = save_png(zoom(grid, factor), base + ".png")
        else:
            entry["png"] = save_figure(_bar_chart(act.flatten(), name), base + ".png")
        paths["layers"][name] = entry
    return paths


def _bar_chart(values: torch.Tensor, title: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.05 * len(values)), 3))
    ax.bar(range(len(values)), values.numpy(), width=1.0, color="#3b6ea5")
    ax.set_xlabel("unit")
    ax.set_ylabel("activation")
    ax.set_title(title)
    ax.axhline(0, color="black", linewidth=0.5)
    return fig
