"""One forward pass that tells what every layer of a model outputs at one input size, cached.

``list_layers``, ``stage_layers``, synthesis and saliency all need layer output shapes; they
share :func:`probe` instead of running their own passes. The pass runs on deterministic noise
at the requested size (default: the model's input size), in eval mode with no gradients, and
records the output shape of every module (every call, in call order). The result is cached per
(module, size, channels, device, module structure), so a second call costs nothing.

A forward pass that fails becomes one :class:`cnnvis.ModelError` that blames the model and
names the exception (:func:`forward_failure`), with the ``--size`` hint only when the message
is about shapes or sizes.

Example:
    >>> import cnnvis
    >>> p = probe(cnnvis.load_model("lenet-digits"))
    >>> p.shapes["conv2"], p.output, p.calls["relu1"]
    ((16, 10, 10), (10,), 1)
"""

from __future__ import annotations

import re
import weakref
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from cnnvis.core.errors import CnnvisError, ModelError
from cnnvis.model.hooks import preserved, record
from cnnvis.model.layers import layer_names, type_name
from cnnvis.model.loading import load_model
from cnnvis.core.outputs import OUTPUT, first_output_tensor
from cnnvis.model.preprocess import parse_size

Shape = Tuple[int, ...]

_CACHE: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, Probe]]" = weakref.WeakKeyDictionary()

#: Words in an exception message that say the input's size or shape is the likely cause.
_SIZE_WORDS = re.compile(
    r"size|shape|dimension|mat1|mat2|must match|expected input|kernel size|too small|output size|channels",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Probe:
    """What one forward pass at ``size`` showed. Shapes exclude the batch dimension.

    ``shapes[name]``: the output shape of the module's first call (``None`` if it did not run);
    ``calls[name]``: how often it ran; ``order``: recorded outputs in call order, a module
    that runs again adding ``name#1``, ``name#2``…; ``output``: the shape of the model's output
    tensor and ``output_from`` which part of the output that is (``tensor``, ``[0]``, ``['out']``).
    """

    size: Tuple[int, int]
    channels: int
    shapes: Dict[str, Optional[Shape]]
    calls: Dict[str, int]
    order: Tuple[Tuple[str, Shape], ...]
    output: Optional[Shape]
    output_from: str = "tensor"
    types: Dict[str, str] = field(default_factory=dict)
    failure: Optional[ModelError] = None
    output_error: Optional[ModelError] = None  # the pass ran, but its output names no tensor to use

    def shape(self, layer: str) -> Optional[Shape]:
        """The output shape of ``layer`` (a layer name or :data:`cnnvis.synthesis.objectives.OUTPUT`).

        When the pass failed after ``layer`` ran (a classifier that needs another input size
        behind a convolution that does not), the layer's shape is still known; asking for a
        layer the pass never reached raises the failure.
        """
        if layer == OUTPUT:
            self.check()
            if self.output_error is not None:
                raise ModelError(str(self.output_error))
            return self.output
        if self.shapes.get(layer) is None:
            self.check()
        return self.shapes.get(layer)

    def check(self) -> "Probe":
        """Raise the forward pass's failure, if it failed."""
        if self.failure is not None:
            raise ModelError(str(self.failure))
        return self


#: Modules that act on each channel separately and keep the shape (eval mode): what may sit between a
#: convolution and its nonlinearity.
PER_CHANNEL = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "FrozenBatchNorm2d", "Identity",
               "Dropout", "Dropout2d", "Dropout3d")


def normalised_output(found: Probe, layer: str) -> str:
    """The module whose output is ``layer``'s response after its per-channel normalisation: the
    layer itself, or the batch norm (identity, dropout) that runs right after it, in the same
    parent module, with the same output shape — the input of the layer's nonlinearity.

    Example:
        >>> import cnnvis
        >>> p = probe(cnnvis.load_model("efficientnet-lite0", "none"))
        >>> normalised_output(p, "blocks.5.depthwise_conv"), normalised_output(p, "conv_stem")
        ('blocks.5.bn1', 'bn0')
    """
    return pre_activation(found, layer)


#: Modules that apply one function to every value (eval mode) and keep the shape: a unit's nonlinearity.
ACTIVATIONS = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
               "Hardswish", "Hardsigmoid", "Hardtanh", "Sigmoid", "Tanh", "Softplus", "Softsign", "Tanhshrink")


def response_chain(found: Probe, layer: str) -> Tuple[str, ...]:
    """The modules from ``layer`` to the output the next layer reads: the layer, its per-channel
    normalisation (batch norm, identity, dropout) and its activation, as far as they follow it in
    the same parent module with the same output shape. A unit's response is the last one's output,
    channel by channel.

    Example:
        >>> import cnnvis
        >>> p = probe(cnnvis.load_model("efficientnet-lite0", "none"))
        >>> response_chain(p, "blocks.5.depthwise_conv"), response_chain(p, "blocks.5.project_conv")
        (('blocks.5.depthwise_conv', 'blocks.5.bn1', 'blocks.5.act1'), ('blocks.5.project_conv', 'blocks.5.bn2'))
    """
    names = [n for n, _ in found.order]
    if layer not in names:
        return (layer,)
    i = names.index(layer)
    shape = found.order[i][1]
    parent = layer.rpartition(".")[0]
    chain = [layer]
    for name, out in found.order[i + 1:]:
        kind = found.types.get(name)
        if "#" in name or out != shape or name.rpartition(".")[0] != parent:
            break
        if kind in PER_CHANNEL and not found.types.get(chain[-1]) in ACTIVATIONS:
            chain.append(name)
        elif kind in ACTIVATIONS:
            chain.append(name)
            break
        else:
            break
    return tuple(chain)


def unit_output(found: Probe, layer: str) -> str:
    """The module whose output is ``layer``'s units' response: the end of :func:`response_chain`
    (``blocks.5.depthwise_conv`` → ``blocks.5.act1``; a layer that nothing follows: itself)."""
    return response_chain(found, layer)[-1]


def pre_activation(found: Probe, layer: str) -> str:
    """The module whose output is ``layer``'s response before its activation (after its batch norm):
    the chain of :func:`response_chain` without the activation."""
    chain = response_chain(found, layer)
    if len(chain) > 1 and found.types.get(chain[-1]) in ACTIVATIONS:
        return chain[-2]
    return chain[-1]


def layer_before(found: Probe, layer: str) -> Optional[str]:
    """The output recorded just before ``layer``'s in call order — what it reads (the previous block, or
    the activation of the expansion before a depthwise convolution); None for the first layer.

    Example:
        >>> import cnnvis
        >>> p = probe(cnnvis.load_model("efficientnet-lite0", "none"))
        >>> layer_before(p, "blocks.5.depthwise_conv"), layer_before(p, "blocks.5.expand_conv"), layer_before(p, "conv_stem")
        ('blocks.5.act0', 'blocks.4', None)
    """
    names = [n for n, _ in found.order]
    if layer not in names:
        return None
    i = names.index(layer)
    for name in reversed(names[:i]):
        if "#" not in name:
            return name
    return None


def _module_key(module: nn.Module) -> tuple:
    return tuple((name, type(m).__name__) for name, m in module.named_modules())


def probe(model, size=None) -> Probe:
    """The cached :class:`Probe` of ``model`` (a spec, an ``nn.Module`` or a ``LoadedModel``) at ``size``.

    A failing pass does not raise here: :meth:`Probe.shape` and :meth:`Probe.check` raise it for
    whoever needs what the pass did not reach.
    """
    lm = load_model(model)
    module = lm.model
    hw = parse_size(size) if size is not None else tuple(lm.preprocessing.input_size())
    key = (hw, lm.preprocessing.channels, str(lm.device), _module_key(module))
    per_model = _CACHE.setdefault(module, {})
    if key not in per_model:
        per_model.clear()  # one size at a time is what callers use; keep memory flat
        per_model[key] = _run_probe(lm, hw)
    return per_model[key]


def names_order(lm):
    """A sort key for layer names: forward (call) order, the model's output last."""
    order = {n: i for i, (n, _s) in enumerate(probe(lm).order)}
    return lambda name: (order.get(name, len(order) + 1), name)


def probe_noise(lm, size: Tuple[int, int], batch: int = 1) -> torch.Tensor:
    """Deterministic noise in [0, 1], ``batch x C x H x W`` on the model's device (not normalised)."""
    g = torch.Generator().manual_seed(0)
    return torch.rand((batch, lm.preprocessing.channels) + tuple(size), generator=g).to(lm.device)


def _run_probe(lm, size: Tuple[int, int]) -> Probe:
    module = lm.model
    names = layer_names(module)
    modules = dict(module.named_modules())
    x = probe_noise(lm, size)
    if isinstance(module, torch.jit.ScriptModule):  # no hooks run inside compiled code: the output only
        with preserved(module), torch.no_grad():
            module.eval()
            tensor, where = select_output(call_model(lm, x), lm.name)
        return Probe(size, lm.preprocessing.channels, {n: None for n in names}, {n: 0 for n in names}, (),
                     tuple(tensor.shape[1:]), where, {n: type_name(modules[n]) for n in names})
    failure, output, where, output_error = None, None, "tensor", None
    with preserved(module), torch.no_grad(), record(module, names, detach=True, shapes_only=True) as rec:
        module.eval()
        try:
            out = call_model(lm, x, rec.run)
        except ModelError as exc:
            failure = exc  # the layers that ran before the failure keep their shapes
        else:
            try:
                tensor, where = select_output(out, lm.name)
                output = tuple(tensor.shape[1:])
            except ModelError as exc:  # the pass ran; only its output is unusable (for class targets)
                output_error = exc
    shapes = {n: (tuple(rec.calls[n][0][1:]) if rec.calls[n] and rec.calls[n][0] is not None else None) for n in names}
    order = tuple((k, tuple(v[1:])) for k, v in rec.outputs.items() if v is not None)
    return Probe(size, lm.preprocessing.channels, shapes, {n: len(rec.calls[n]) for n in names}, order,
                 output, where, {n: type_name(modules[n]) for n in names}, failure, output_error)


def call_model(lm, x: torch.Tensor, run=None):
    """Run the model on ``x`` (in [0, 1]); any failure of its forward pass becomes a :class:`ModelError`.

    ``run`` is what to call with the normalised input (default the module itself).
    """
    try:
        return (run or lm.model)(lm.preprocessing.normalize(x))
    except (CnnvisError, KeyboardInterrupt, GeneratorExit):
        raise
    except MemoryError:
        raise
    except BaseException as exc:  # SystemExit, RecursionError, user-defined BaseException subclasses
        raise forward_failure(lm, exc, tuple(x.shape)) from None


def forward_failure(lm, exc: BaseException, shape: Tuple[int, ...]) -> ModelError:
    """One line that blames the model's forward pass and names the exception."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > 300:
        first = first[:297] + "…"
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    message = f"the forward pass of {lm.name} failed on a {'x'.join(map(str, shape))} input ({what})"
    if isinstance(exc, RecursionError):
        message += "; the model recurses without end"
    elif _SIZE_WORDS.search(first):
        h, w = shape[-2:]
        message += f"; if {h}x{w} is not a size the model accepts, pass the size it expects with --size"
    return ModelError(message)


def select_output(value, model_name: str = "the model") -> Tuple[torch.Tensor, str]:
    """The tensor that stands for a model's output, and where it came from.

    A tensor is itself; a tuple or list gives its first tensor (``[0]``); a dict gives ``'out'``
    (torchvision's segmentation models), else its only tensor; anything else is a :class:`ModelError`.
    """
    if isinstance(value, torch.Tensor):
        return value, "tensor"
    if isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            t = first_output_tensor(v)
            if t is not None:
                return t, f"[{i}]"
        raise ModelError(f"{model_name} returned a {type(value).__name__} without tensors")
    if isinstance(value, dict):
        if isinstance(value.get("out"), torch.Tensor):
            return value["out"], "['out']"
        tensors = [k for k, v in value.items() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return value[tensors[0]], f"[{tensors[0]!r}]"
        keys = ", ".join(repr(k) for k in value) or "none"
        raise ModelError(
            f"{model_name} returned a dict with keys {keys}; cnnvis uses the key 'out' or the only tensor: "
            f"wrap the model so that it returns one tensor"
        )
    raise ModelError(f"{model_name} returned {type(value).__name__}, not a tensor, tuple, list or dict of tensors")


# ------------------------------------------------------------------ the layer inventory


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
