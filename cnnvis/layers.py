"""Listing a model's layers and resolving what a user calls a layer.

Layers are named by their dotted ``named_modules()`` names (``features.28``, ``layer4.1.conv2``).
A spec is one of: an exact name; a glob (``features.*``, ``layer?.0.conv1``); or ``type:NAME``
for every module whose class (or a base class) is called NAME (``type:Conv2d``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple, Union

from torch import nn

from cnnvis.errors import UnknownLayerError, close_matches


@dataclass(frozen=True)
class LayerInfo:
    """One row of ``cnnvis layers``. ``output_shape`` excludes the batch dimension and is
    ``None`` for a module that did not run in the forward pass (e.g. auxiliary heads in eval mode)."""

    name: str
    type: str
    output_shape: Optional[Tuple[int, ...]]
    channels: Optional[int]
    params: int
    calls: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_shape"] = list(self.output_shape) if self.output_shape is not None else None
        return d


def _module(model) -> nn.Module:
    if isinstance(model, str):
        from cnnvis.models import load_model

        model = load_model(model)
    return model.model if hasattr(model, "preprocessing") and hasattr(model, "model") else model


def type_name(module: nn.Module) -> str:
    """The class name users know (TorchScript modules report their original class)."""
    return getattr(module, "original_name", None) or type(module).__name__


def layer_names(model) -> List[str]:
    """Every dotted ``named_modules()`` name except the root's empty name."""
    return [name for name, _ in _module(model).named_modules() if name]


def get_layer(model, name: str) -> nn.Module:
    modules = dict(_module(model).named_modules())
    if name not in modules or not name:
        resolve_layers(model, [name])  # raises with close matches
    return modules[name]


def _is_type(module: nn.Module, wanted: str) -> bool:
    wanted = wanted.lower()
    if type_name(module).lower() == wanted:
        return True
    return any(cls.__name__.lower() == wanted for cls in type(module).__mro__)


def resolve_layers(model, specs: Union[str, Sequence[str]], *, model_name: Optional[str] = None) -> List[str]:
    """Layer specs -> exact layer names, in model order, without duplicates.

    Raises :class:`UnknownLayerError` naming close matches and how to list the layers.

    Example:
        >>> import cnnvis
        >>> resolve_layers(cnnvis.load_model("lenet-digits"), ["type:Conv2d", "fc*"])
        ['conv1', 'conv2', 'fc1', 'fc2', 'fc3']
    """
    if isinstance(specs, str):
        specs = [specs]
    if isinstance(model, str):
        from cnnvis.models import load_model

        model = load_model(model)
    module = _module(model)
    model_name = model_name or getattr(model, "name", None) or type(module).__name__
    named = [(n, m) for n, m in module.named_modules() if n]
    names = [n for n, _ in named]
    chosen = set()
    for spec in specs:
        spec = str(spec).strip()
        if spec.startswith("type:"):
            wanted = spec[len("type:"):]
            hits = {n for n, m in named if _is_type(m, wanted)}
            if not hits:
                types = sorted({type_name(m) for _, m in named})
                near = close_matches(wanted, types)
                hint = f"; did you mean {', '.join('type:' + t for t in near)}?" if near else f"; types here: {', '.join(types[:12])}"
                raise UnknownLayerError(f"no layer of type {wanted!r} in {model_name}{hint}")
        elif any(ch in spec for ch in "*?["):
            hits = set(fnmatch.filter(names, spec))
            if not hits:
                raise UnknownLayerError(
                    f"pattern {spec!r} matches no layer of {model_name}; run 'cnnvis layers {model_name}' to list them"
                )
        elif spec in names:
            hits = {spec}
        else:
            near = close_matches(spec, names)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise UnknownLayerError(
                f"unknown layer {spec!r} in {model_name}{hint}; run 'cnnvis layers {model_name}' to list them"
            )
        chosen |= hits
    return [n for n in names if n in chosen]


def list_layers(model, *, size=None) -> List[LayerInfo]:
    """Every layer with its type, output shape (from the cached probe pass), channels and parameters.

    ``model`` is a spec, an ``nn.Module`` or a ``LoadedModel``; the probe input is noise at the
    model's input size (``size`` overrides it). ``params`` counts the module's parameters
    including its children's. The model's mode is restored.

    Example:
        >>> import cnnvis
        >>> [l.output_shape for l in list_layers(cnnvis.load_model("lenet-digits"))][:2]
        [(6, 28, 28), (6, 28, 28)]
    """
    from cnnvis.models import load_model
    from cnnvis.probing import probe

    lm = load_model(model)
    module = lm.model
    modules = dict(module.named_modules())
    names = layer_names(module)
    if not names:
        return []
    found = probe(lm, size).check()
    rows = []
    for n in names:
        out = found.shapes.get(n)
        channels = out[0] if out else None
        params = sum(p.numel() for p in modules[n].parameters())
        rows.append(LayerInfo(n, type_name(modules[n]), out, channels, params, found.calls.get(n, 0)))
    return rows


def parse_filter_spec(spec, count: int) -> List[int]:
    """``"all"``, ``"0-19"``, ``"3,7,9"``, ``"0-3,8"``, an int N (the first N) -> sorted indices.

    Raises :class:`InputError` naming the valid range ``0..count-1`` for an index out of range.

    Example:
        >>> parse_filter_spec("0-2,7", 16)
        [0, 1, 2, 7]
    """
    from cnnvis.errors import InputError

    if spec is None or str(spec).strip().lower() in ("", "all"):
        return list(range(count))
    if isinstance(spec, int):
        if spec < 1:
            raise InputError(f"--filters {spec}: give a positive count, a range like 0-19, a list like 3,7,9, or all")
        return list(range(min(spec, count)))
    if not isinstance(spec, str):
        chosen = {int(i) for i in spec}
    else:
        chosen = set()
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            lo, dash, hi = part.partition("-")
            try:
                lo_i = int(lo)
                hi_i = int(hi) if dash else lo_i
            except ValueError:
                raise InputError(
                    f"--filters {spec!r}: {part!r} is not an index; use a range like 0-19, a list like 3,7,9, or all"
                ) from None
            if hi_i < lo_i:
                raise InputError(f"--filters range {part!r} runs backwards; write it as {hi_i}-{lo_i}")
            if lo_i < 0 or hi_i >= count:  # checked before the range is expanded
                bad = lo_i if lo_i < 0 else max(lo_i, count)
                raise InputError(f"filter {bad} is out of range: this layer has {count} channels (0..{count - 1})")
            chosen.update(range(lo_i, hi_i + 1))
    bad = sorted(i for i in chosen if i < 0 or i >= count)
    if bad:
        raise InputError(
            f"filter {bad[0]} is out of range: this layer has {count} channels (0..{count - 1})"
        )
    return sorted(chosen)


def stage_layers(model, *, size=None) -> List[str]:
    """One representative layer per resolution stage, shallow to deep: the first convolution
    (in forward order) whose output has a smaller spatial size than every convolution before it.

    For VGG-16 this is ``features.0, .5, .10, .17, .24`` (conv1_1 … conv5_1, the classic plot);
    for ResNets the stem and the first convolution of each ``layerN``. Convolutions with a 1x1
    output (after global pooling: squeeze-excitation gates, convolutional classifiers) are skipped.

    Example:
        >>> import cnnvis
        >>> stage_layers(cnnvis.load_model("lenet-digits"))
        ['conv1', 'conv2']
    """
    from cnnvis.models import load_model
    from cnnvis.probing import probe

    lm = load_model(model)
    convs = {n for n, m in lm.model.named_modules() if n and isinstance(m, nn.Conv2d)}
    if not convs:
        return []
    chosen, smallest = [], None
    for key, shape in probe(lm, size).check().order:  # call order
        if key not in convs or len(shape) != 3 or shape[1] * shape[2] == 1:
            continue  # 1x1 maps come after global pooling (squeeze-excitation gates, conv classifiers)
        side = shape[1] * shape[2]
        if smallest is None or side < smallest:
            chosen.append(key)
            smallest = side
    return chosen
