"""cnnvis: see what a convolutional network has learned.

The public API, in one place::

    import cnnvis
    lm = cnnvis.load_model("lenet-digits")             # or "vgg16", "pkg.mod:make_net", a file …
    cnnvis.list_layers(lm)                              # names, types, shapes, channels, params
    with cnnvis.record(lm, ["conv1"], stop=True) as rec:
        rec.run(images)                                 # images: N x C x H x W in [0, 1]
    rec["conv1"]

Names load on first use, so ``import cnnvis`` is cheap and imports neither torch nor the
gallery renderer until a name that needs them is touched.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports below exist for type checkers)
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cnnvis._version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "activations": ("activation_grid", "compute_activations", "save_activations"),
    "stats": ("LayerStats", "StatsResult", "compute_stats", "save_stats"),
    "errors": ("BadImageError", "CnnvisError", "InputError", "ModelError", "UnknownLayerError", "UnknownModelError",
               "UnknownWeightsError", "WeightsError"),
    "filters": ("FilterImages", "render_filters", "save_filters"),
    "galleries": ("GalleryRequest", "GallerySummary", "build_gallery"),
    "gradients": ("Attribution", "Target", "Unit", "parse_unit", "saliency"),
    "receptive": ("EffectiveField", "ReceptiveField", "effective_receptive_fields", "receptive_fields"),
    "hooks": ("Recording", "frozen", "preserved", "record"),
    "layers": ("get_layer", "layer_names", "resolve_layers"),
    "models": ("LoadedModel", "available_models", "load_model"),
    "objectives": ("Objective", "channel_l2", "channel_mean", "channel_relu", "class_logit", "direction", "neuron"),
    "preprocess": ("Preprocessing",),
    "probing": ("LayerInfo", "Probe", "list_layers", "probe"),
    "runs": ("ImageRequest", "RunSummary", "run_maximize"),
    "store": ("Store",),
    "synthesis": ("Maximization", "Settings", "Synthesis", "Variant", "make_settings", "maximize", "synthesize"),
    "techniques": ("TechniqueResult", "accentuate", "caricature", "dream", "layer_l2"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnvis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cnnvis.{module}"), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from cnnvis.activations import activation_grid, compute_activations, save_activations
    from cnnvis.errors import (BadImageError, CnnvisError, InputError, ModelError, UnknownLayerError, UnknownModelError,
                               UnknownWeightsError, WeightsError)
    from cnnvis.filters import FilterImages, render_filters, save_filters
    from cnnvis.galleries import GalleryRequest, GallerySummary, build_gallery
    from cnnvis.gradients import Attribution, Target, Unit, parse_unit, saliency
    from cnnvis.hooks import Recording, frozen, preserved, record
    from cnnvis.layers import get_layer, layer_names, resolve_layers
    from cnnvis.models import LoadedModel, available_models, load_model
    from cnnvis.objectives import Objective, channel_l2, channel_mean, channel_relu, class_logit, direction, neuron
    from cnnvis.preprocess import Preprocessing
    from cnnvis.probing import LayerInfo, Probe, list_layers, probe
    from cnnvis.receptive import EffectiveField, ReceptiveField, effective_receptive_fields, receptive_fields
    from cnnvis.runs import ImageRequest, RunSummary, run_maximize
    from cnnvis.stats import LayerStats, StatsResult, compute_stats, save_stats
    from cnnvis.store import Store
    from cnnvis.synthesis import Maximization, Settings, Synthesis, Variant, make_settings, maximize, synthesize
    from cnnvis.techniques import TechniqueResult, accentuate, caricature, dream, layer_l2
