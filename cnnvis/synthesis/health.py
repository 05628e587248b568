"""What kind of unit is this: live, an off-unit, or flat — decided by measurement, before any picture.

A unit's *response* is what the next layer reads: the layer's output after its batch norm and its
activation, channel by channel (:func:`cnnvis.model.probing.unit_output`). Three kinds of unit:

* **flat** — its response does not vary: its kernel is negligible next to its layer's largest
  (efficientnet-lite0's ``conv_stem`` filter 11 has weights of at most 4e-8 against 3.7), or its
  response before the activation has no spread over natural crops (the channel it reads is never
  active). No picture can mean anything for it; it is shown as such.
* **off** — it answers most where its input is silent: its response to a black input is at least
  its best response to a natural crop (both before the activation, which may clip them alike), or every weight of its kernel works against it (all weights
  non-positive, counting the sign of its batch norm's scale) while its input is never negative (it
  comes out of a ReLU). Such a unit is live, but what can be drawn for it is what switches it
  *off*: its negative picture leads (``blocks.5.depthwise_conv`` unit 3 of efficientnet-lite0: an
  all-non-positive kernel on a ReLU6 input, brick walls drive it to -9 before its activation).
* **live** — anything else: its positive picture leads.

The measurement is one forward pass over :data:`CROPS` natural crops (the photographs bundled with
scikit-image and scikit-learn, :func:`cnnvis.synthesis.quality.natural_crops`) at the size the pictures are
made, a black image and four ``U[0, 1]`` noise images; it is cached per (model, layer, size).

Example:
    >>> import cnnvis
    >>> lm = cnnvis.load_model("lenet-digits")
    >>> from cnnvis.synthesis import select_units
    >>> h = unit_health(lm, select_units(lm, "conv1", "all", "channel-relu"), (32, 32))
    >>> set(h.kinds.values()) <= {"flat", "live", "off"}, len(h.kinds), h.natural[0]["max"] >= h.natural[0]["min"]
    (True, 6, True)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Dict

import torch

from cnnvis.core.memory import images_per_batch
from cnnvis.synthesis.objectives import OUTPUT, make_objective
from cnnvis.model.hooks import first_output_tensor, frozen, record
from cnnvis.model.layers import get_layer
from cnnvis.model.probing import call_model, pre_activation, probe
from cnnvis.synthesis.quality import natural_crops

#: A kernel below this fraction of its layer's largest is negligible.
FLAT = 1e-6
#: A unit whose response before its activation spreads over the natural crops by less than this fraction
#: of its layer's median spread does not vary (efficientnet-lite0's pruned stem filters: 2e-5).
FLAT_SPREAD = 1e-4
#: Natural crops measured per layer and size.
CROPS = 256
#: Activations whose output is never negative.
NONNEGATIVE = ("ReLU", "ReLU6", "Hardtanh", "Sigmoid", "Softplus", "Hardsigmoid")
#: A unit whose response to a black input comes within this share of its natural spread of its best
#: natural response (or above it) is an off-unit.
OFF_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Health:
    """The kinds of a selection's units, why, and the layer's typical objective value on noise.

    ``kinds[u]`` is ``live``, ``off`` or ``flat``; ``reasons[u]`` says why in words (off and flat);
    ``scale`` is the median over the layer's channels of the objective's largest value on four noise
    images (what a diversity term's floor is measured against); ``natural`` per unit: the spatial-mean
    response's ``min``, ``max`` over the natural crops and ``black``, its response to a black input.
    """

    kinds: Dict[int, str]
    reasons: Dict[int, str]
    scale: float
    natural: Dict[int, dict] = field(default_factory=dict)

    def kind(self, unit: int) -> str:
        return self.kinds.get(unit, "live")

    def judge(self, unit: int, result):
        """``result`` (a :class:`cnnvis.synthesis.Synthesis`) marked with its unit's kind: a flat unit's
        picture is ``flat`` (with the reason); an off-unit's keeps its status and says it is one."""
        kind = self.kind(unit)
        if kind == "flat" and result.status in ("ok", "dead"):
            return replace(result, status="flat", reason=self.reasons[unit], unit_kind="flat")
        if kind == "off":
            return replace(result, unit_kind="off", unit_note=self.reasons.get(unit))
        return replace(result, unit_kind=kind)


_HEALTH: Dict[tuple, Health] = {}
#: :func:`_measure_many`'s results by (model, module read, module before it, objective, size): one pass over the crops
#: serves every selection of a layer (a gallery's own units, their off-units' negative pictures, a worker's chunk).
_MEASURED: Dict[tuple, tuple] = {}

#: Activations that map a whole range of inputs to one value (a ReLU's 0).
CLIPPING = ("ReLU", "ReLU6", "Hardtanh", "Hardsigmoid", "Hardswish", "RReLU")


def _module_type(lm, name: str) -> str:
    module = dict(lm.model.named_modules()).get(name)
    return type(module).__name__ if module is not None else ""


def input_is_nonnegative(lm, layer: str, size) -> bool:
    """Whether ``layer``'s input is the output of a ReLU-like module (it is then never negative)."""
    found = probe(lm, size)
    names = [n for n, _ in found.order]
    if layer not in names:
        return False
    i = names.index(layer)
    modules = dict(lm.model.named_modules())
    module = modules[layer]
    for name, shape in reversed(found.order[:i]):  # the last output before this layer's, of its input's width
        if shape and shape[0] == getattr(module, "in_channels", -1):
            kind = found.types.get(name.split("#")[0], "")
            return kind in NONNEGATIVE and (kind != "Hardtanh" or float(getattr(
                modules[name.split("#")[0]], "min_val", -1)) >= 0)
    return False


def _bn_sign(lm, found, layer: str, channels: int) -> torch.Tensor:
    """Per channel, the sign with which ``layer``'s output reaches its activation (its batch norm's scale)."""
    bn = dict(lm.model.named_modules()).get(pre_activation(found, layer))
    sign = torch.ones(channels)
    if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) and bn.weight is not None and bn.weight.numel() == channels:
        sign = torch.where(bn.weight.detach().cpu() < 0, -1.0, 1.0)
    return sign


def _kernel_kinds(lm, selection, size, kinds: Dict[int, str], reasons: Dict[int, str]) -> None:
    """Flat units by their kernel; off-units by a kernel that works against them on a non-negative input."""
    weight = getattr(get_layer(lm, selection.layer), "weight", None)
    if not (isinstance(weight, torch.Tensor) and weight.ndim >= 2 and weight.shape[0] == selection.channels):
        return
    w = weight.detach().float().cpu().flatten(1)
    per = w.abs().amax(1)
    top = float(per.max())
    nonnegative_input = input_is_nonnegative(lm, selection.layer, size)
    sign = _bn_sign(lm, probe(lm, size), selection.layer, selection.channels)
    for u in selection.filters:
        if top > 0 and float(per[u]) < FLAT * top:
            kinds[u], reasons[u] = "flat", (f"its kernel's weights are at most {float(per[u]):.2g}, negligible next "
                                            f"to the layer's largest ({top:.2g})")
        elif nonnegative_input and bool((w[u] * sign[u] <= 0).all()):
            kinds[u], reasons[u] = "off", (
                "every weight of its kernel works against it and its input is never negative (it comes out of a "
                "ReLU), so it answers most where its input is silent")


def _measure_many(lm, specs, size):
    """For every ``(reads, before, objective)`` in ``specs`` at one ``size``: the spatial means of ``reads`` and
    ``before`` over the natural crops and a black image (``{name: N x C}``, ``{name: C}``), and the objective's
    values on four noise images (``4 x C``). One forward pass over the crops records every layer named and stops
    after the deepest: a layer's values are those of its own pass (the same batches through the same operations).
    The crops are made and run a batch at a time
    (:func:`cnnvis.core.memory.images_per_batch`), so a 224 px layer holds a few images' activations at once, not 32."""
    channels = lm.preprocessing.channels
    try:
        natural_crops(tuple(size), channels, 1, seed=0)
        count = CROPS
    except ImportError:  # the photographs are not installed: no natural measurement
        count = 0
    batch = images_per_batch(size)
    noise = torch.rand((4, channels) + tuple(size), generator=torch.Generator().manual_seed(0))
    wanted = list(dict.fromkeys(name for reads, before, _ in specs for name in (reads, before)))
    means = {name: [] for name in wanted}
    noise_values = {}
    with torch.no_grad(), frozen(lm.model), record(lm.model, wanted, stop=True, detach=True) as rec:
        chunks = (natural_crops(tuple(size), channels, min(batch, count - k), seed=0, start=k)
                  for k in range(0, count, batch))
        for chunk in itertools.chain(chunks, [torch.zeros((1, channels) + tuple(size))]):  # the crops, then black
            call_model(lm, chunk.to(lm.device), rec.run)
            for name in wanted:
                a = first_output_tensor(rec[name]).float()
                means[name].append(a.flatten(2).mean(2).cpu() if a.ndim > 2 else a.cpu())
        call_model(lm, noise.to(lm.device), rec.run)
        for reads, _, objective in dict.fromkeys(specs):
            a = first_output_tensor(rec[reads]).float()
            n, c = a.shape[:2]
            flat = a.reshape(n * c, 1, *a.shape[2:])  # every channel of every noise image as one batch element
            noise_values[reads, objective] = make_objective(objective, reads, [0] * (n * c))({reads: flat}).view(n, c).cpu()
    out = {name: torch.cat(v) for name, v in means.items()}
    return {(reads, before, objective): ({name: out[name][:-1] for name in (reads, before)},
                                         {name: out[name][-1] for name in (reads, before)},
                                         noise_values[reads, objective])
            for reads, before, objective in specs}


def _keys(lm, selection, size):
    """``(model key, measurement key or None)`` of a selection at ``size``."""
    pre = lm.preprocessing  # the same network fed other numbers is another measurement
    model_key = (id(lm.model), tuple(pre.mean), tuple(pre.std))
    if selection.layer == OUTPUT or selection.objective == "class":
        return model_key, None
    reads = selection.reads or selection.layer
    return model_key, (model_key, reads, selection.before or reads, selection.objective, size)


def measure_health(lm, items) -> None:
    """Measure at once what :func:`unit_health` will need for each ``(selection, size)`` of ``items``: one pass over
    the crops per size for all of its layers, instead of one per layer (a gallery's three 224 px layers of
    efficientnet-lite0 cost one pass through ``conv_head``). The values are those :func:`unit_health` would measure
    itself."""
    groups: Dict[tuple, list] = {}
    for selection, size in items:
        size = tuple(int(s) for s in size)
        _, key = _keys(lm, selection, size)
        if key is not None and key not in _MEASURED:
            groups.setdefault(size, []).append(key)
    for size, keys in groups.items():
        keys = list(dict.fromkeys(keys))
        if len(_MEASURED) + len(keys) > 32:
            _MEASURED.clear()
        found = _measure_many(lm, [k[1:4] for k in keys], size)
        for k in keys:
            _MEASURED[k] = found[k[1:4]]


def unit_health(lm, selection, size) -> Health:
    """The :class:`Health` of a selection's units (a :class:`cnnvis.synthesis.Selection`) for pictures
    of ``size`` (height, width), cached."""
    size = tuple(int(s) for s in size)
    model_key, measured_key = _keys(lm, selection, size)
    key = (model_key, selection, size)
    if key in _HEALTH:
        return _HEALTH[key]
    kinds: Dict[int, str] = {u: "live" for u in selection.filters}
    reasons: Dict[int, str] = {}
    natural: Dict[int, dict] = {}
    scale = 0.0
    if measured_key is not None:
        _kernel_kinds(lm, selection, size, kinds, reasons)
        _, reads, before, _, _ = measured_key
        measure_health(lm, [(selection, size)])  # measured once per layer and size, cached
        crops, black, noise = _MEASURED[measured_key]
        scale = float(noise.abs().amax(0).median())
        if len(crops[reads]):
            spread = crops[before].amax(0) - crops[before].amin(0)
            typical = float(spread.median())
            top, low = crops[reads].amax(0), crops[reads].amin(0)
            top_before = crops[before].amax(0)  # where an activation clips, the response before it still ranks
            # a clipping activation's output can be constant while its input varies: no spread to judge there
            measurable = _module_type(lm, before) not in CLIPPING
            for u in selection.filters:
                natural[u] = {"min": float(low[u]), "max": float(top[u]), "black": float(black[reads][u]),
                              "spread_before": float(spread[u]), "max_before": float(top_before[u]),
                              "min_before": float(crops[before].amin(0)[u]), "black_before": float(black[before][u])}
                if kinds[u] == "flat":
                    continue
                if measurable and float(spread[u]) <= FLAT_SPREAD * max(typical, 1e-30):
                    kinds[u], reasons[u] = "flat", (
                        f"its response does not depend on the input: before the activation it is the same for all "
                        f"{len(crops[before])} natural crops (spread {float(spread[u]):.2g} against the layer's "
                        f"typical {typical:.2g}), so the channel it reads is never active")
                elif kinds[u] == "live" and float(black[before][u]) >= float(top_before[u]) - OFF_TOLERANCE * float(spread[u]):
                    kinds[u], reasons[u] = "off", (
                        f"its response to a black input ({float(black[before][u]):.3g} before its activation) is at "
                        f"least its best response to {len(crops[before])} natural crops ({float(top_before[u]):.3g}): "
                        f"it answers most where its input is silent")
    if len(_HEALTH) > 32:
        _HEALTH.clear()
    _HEALTH[key] = Health(kinds, reasons, scale, natural)
    return _HEALTH[key]
