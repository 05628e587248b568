"""cnnvis: see what a convolutional network has learned.

The public API, in one place::

    import cnnvis
    lm = cnnvis.load_model("lenet-digits")             # or "vgg16", "pkg.mod:make_net", a file …
    cnnvis.list_layers(lm)                              # names, types, shapes, channels, params
    with cnnvis.record(lm, ["conv1"], stop=True) as rec:
        rec.run(images)                                 # images: N x C x H x W in [0, 1]
    rec["conv1"]
"""

from cnnvis.activations import LayerStats, StatsResult, activation_grid, compute_activations, compute_stats, save_activations, save_stats
from cnnvis.errors import CnnvisError, InputError, UnknownLayerError, UnknownModelError, WeightsError
from cnnvis.filters import FilterImages, render_filters, save_filters
from cnnvis.galleries import GallerySummary, build_gallery
from cnnvis.gradients import Attribution, Target, Unit, parse_unit, saliency
from cnnvis.receptive import EffectiveField, ReceptiveField, effective_receptive_fields, receptive_fields
from cnnvis.hooks import Recording, frozen, preserved, record
from cnnvis.layers import LayerInfo, get_layer, layer_names, list_layers, resolve_layers
from cnnvis.models import LoadedModel, available_models, load_model
from cnnvis.objectives import Objective, channel_l2, channel_mean, class_logit, neuron
from cnnvis.preprocess import Preprocessing
from cnnvis.runs import RunSummary, run_maximize
from cnnvis.synthesis import Maximization, Settings, Synthesis, make_settings, maximize, synthesize

__version__ = "0.1.0"

__all__ = [
    "GallerySummary",
    "build_gallery",
    "Maximization",
    "Objective",
    "RunSummary",
    "Settings",
    "Synthesis",
    "channel_l2",
    "channel_mean",
    "class_logit",
    "make_settings",
    "maximize",
    "neuron",
    "run_maximize",
    "synthesize",
    "Attribution",
    "EffectiveField",
    "ReceptiveField",
    "Target",
    "Unit",
    "effective_receptive_fields",
    "parse_unit",
    "receptive_fields",
    "saliency",
    "CnnvisError",
    "FilterImages",
    "LayerStats",
    "StatsResult",
    "activation_grid",
    "compute_activations",
    "compute_stats",
    "render_filters",
    "save_activations",
    "save_filters",
    "save_stats",
    "InputError",
    "LayerInfo",
    "LoadedModel",
    "Preprocessing",
    "Recording",
    "UnknownLayerError",
    "UnknownModelError",
    "WeightsError",
    "__version__",
    "available_models",
    "frozen",
    "get_layer",
    "layer_names",
    "list_layers",
    "load_model",
    "preserved",
    "record",
    "resolve_layers",
]
