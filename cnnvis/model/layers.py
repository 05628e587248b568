"""Listing a model's layers and resolving what a user calls a layer.

Layers are named by their dotted ``named_modules()`` names (``features.28``, ``layer4.1.conv2``).
A spec is one of: an exact name; a glob (``features.*``, ``layer?.0.conv1``); or ``type:NAME``
for every module whose class (or a base class) is called NAME (``type:Conv2d``).
"""

from __future__ import annotations

import fnmatch
from typing import List, Optional, Sequence, Union

from torch import nn

from cnnvis.core.errors import InputError, UnknownLayerError, close_matches
from cnnvis.model.loading import load_model


def _module(model) -> nn.Module:
    if isinstance(model, str):
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


def parse_filter_spec(spec, count: int) -> List[int]:
    """``"all"``, ``"0-19"``, ``"3,7,9"``, ``"0-3,8"``, an int N (the first N) -> sorted indices.

    Raises :class:`InputError` naming the valid range ``0..count-1`` for an index out of range.

    Example:
        >>> parse_filter_spec("0-2,7", 16)
        [0, 1, 2, 7]
    """
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
