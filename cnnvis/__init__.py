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
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING

from cnnvis._version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "inspection.activations": ("activation_grid", "compute_activations", "save_activations"),
    "inspection.stats": ("LayerStats", "StatsResult", "compute_stats", "save_stats"),
    "core.errors": ("BadImageError", "CnnvisError", "InputError", "ModelError", "UnknownLayerError", "UnknownModelError",
               "UnknownWeightsError", "WeightsError"),
    "inspection.filters": ("FilterImages", "render_filters", "save_filters"),
    "atlas.galleries": ("GalleryRequest", "GallerySummary"),
    "gallery.site": ("build_gallery", "run_maximize"),
    "attribution.gradients": ("Attribution", "Target", "Unit", "parse_unit", "saliency"),
    "attribution.receptive": ("EffectiveField", "ReceptiveField", "effective_receptive_fields", "receptive_fields"),
    "model.hooks": ("Recording", "frozen", "preserved", "record"),
    "model.layers": ("get_layer", "layer_names", "resolve_layers"),
    "model.loading": ("LoadedModel", "available_models", "load_model"),
    "synthesis.objectives": ("Objective", "channel_l2", "channel_mean", "channel_relu", "class_logit", "direction", "neuron"),
    "model.preprocess": ("Preprocessing",),
    "model.probing": ("LayerInfo", "Probe", "list_layers", "probe"),
    "atlas.runs": ("ImageRequest", "RunSummary"),
    "atlas.store": ("Store",),
    "atlas.interpret": ("interpretability",),
    "atlas.scores": ("Score", "ScoreResult", "ScoreSettings", "UnitScores"),
    "synthesis.settings": ("Settings", "make_settings"),
    "synthesis.ascent": ("Synthesis", "synthesize"),
    "synthesis.units": ("Maximization", "Variant", "maximize"),
    "synthesis.techniques": ("TechniqueResult", "accentuate", "caricature", "dream", "layer_l2"),
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


#: where each module of the flat layout before the wings lives now: ``import cnnvis.hooks`` and
#: ``from cnnvis.models import load_model`` keep working, and give the same module objects
_MOVED = {
    "errors": "core.errors", "files": "core.files", "io": "core.io", "progress": "core.progress",
    "outputs": "core.outputs", "display": "core.display",
    "models": "model.loading", "preprocess": "model.preprocess", "layers": "model.layers",
    "probing": "model.probing", "hooks": "model.hooks", "zoo": "model.zoo",
    "filters": "inspection.filters", "activations": "inspection.activations", "stats": "inspection.stats",
    "gradients": "attribution.gradients", "receptive": "attribution.receptive",
    "params": "synthesis.params", "objectives": "synthesis.objectives", "maco": "synthesis.maco",
    "techniques": "synthesis.techniques", "health": "synthesis.health", "quality": "synthesis.quality",
    "store": "atlas.store", "runs": "atlas.runs", "examples": "atlas.examples", "circuits": "atlas.circuits",
    "galleries": "atlas.galleries",
}


class _FormerPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``cnnvis.<former>`` (and what lies below it) as the module that now holds it."""

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != __name__ or parts[1] not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        parts = spec.name.split(".")
        return importlib.import_module(".".join([__name__, _MOVED[parts[1]]] + parts[2:]))

    def exec_module(self, module):
        pass  # already executed under its own name


sys.meta_path.insert(0, _FormerPaths())


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from cnnvis.inspection.activations import activation_grid, compute_activations, save_activations
    from cnnvis.core.errors import (BadImageError, CnnvisError, InputError, ModelError, UnknownLayerError, UnknownModelError,
                               UnknownWeightsError, WeightsError)
    from cnnvis.inspection.filters import FilterImages, render_filters, save_filters
    from cnnvis.atlas.galleries import GalleryRequest, GallerySummary
    from cnnvis.gallery.site import build_gallery, run_maximize
    from cnnvis.attribution.gradients import Attribution, Target, Unit, parse_unit, saliency
    from cnnvis.model.hooks import Recording, frozen, preserved, record
    from cnnvis.model.layers import get_layer, layer_names, resolve_layers
    from cnnvis.model.loading import LoadedModel, available_models, load_model
    from cnnvis.synthesis.objectives import Objective, channel_l2, channel_mean, channel_relu, class_logit, direction, neuron
    from cnnvis.model.preprocess import Preprocessing
    from cnnvis.model.probing import LayerInfo, Probe, list_layers, probe
    from cnnvis.attribution.receptive import EffectiveField, ReceptiveField, effective_receptive_fields, receptive_fields
    from cnnvis.atlas.runs import ImageRequest, RunSummary
    from cnnvis.inspection.stats import LayerStats, StatsResult, compute_stats, save_stats
    from cnnvis.atlas.store import Store
    from cnnvis.atlas.interpret import interpretability
    from cnnvis.atlas.scores import Score, ScoreResult, ScoreSettings, UnitScores
    from cnnvis.synthesis.ascent import Synthesis, synthesize
    from cnnvis.synthesis.settings import Settings, make_settings
    from cnnvis.synthesis.units import Maximization, Variant, maximize
    from cnnvis.synthesis.techniques import TechniqueResult, accentuate, caricature, dream, layer_l2
