"""Recording layer outputs: the only place in cnnvis that registers forward hooks.

Every hook is removed in ``finally``: after success, an exception, or Ctrl-C.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Sequence, Union

import torch
from torch import nn

from cnnvis.core.errors import CnnvisError
from cnnvis.model.layers import resolve_layers
from cnnvis.model.loading import load_model
from cnnvis.core.outputs import first_output_tensor  # noqa: F401  (re-exported: hooks.first_output_tensor)


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass once every needed layer has run."""


def _copy(value, detach: bool):
    """Clone tensors (nested in tuples/lists/dicts too) so later in-place ops cannot change them."""
    if isinstance(value, torch.Tensor):
        value = value.detach() if detach else value
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_copy(v, detach) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v, detach) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v, detach) for k, v in value.items()}
    return value


def call_name(layer: str, call: int) -> str:
    """Name of the ``call``-th output (0-based) of a layer that runs more than once: ``layer#1``…"""
    return layer if call == 0 else f"{layer}#{call}"


class Recording:
    """What :func:`record` yields.

    ``outputs[name]`` is the layer's output from its first call in the last forward pass;
    a module that runs more than once in one pass also has ``name#1``, ``name#2``, … (in call
    order), and ``calls[name]`` lists all of them.
    """

    def __init__(self, model: nn.Module, layers: List[str], stop: bool, normalize=None):
        self.model = model
        self.layers = layers
        self.stop = stop
        self.outputs: Dict[str, object] = {}
        self.calls: Dict[str, list] = {name: [] for name in layers}
        self.stopped = False
        self._normalize = normalize
        self._stopping = False

    def __getitem__(self, name: str):
        return self.outputs[name]

    def clear(self) -> None:
        self.outputs.clear()
        for v in self.calls.values():
            v.clear()
        self.stopped = False

    def run(self, x: torch.Tensor, *args, **kwargs):
        """Clear, run the model on ``x`` and return its output (``None`` if stopped early).

        With ``stop=True`` the pass ends as soon as every recorded layer has produced an
        output, so the layers after them cost nothing.
        """
        self.clear()
        if self._normalize is not None:
            x = self._normalize(x)
        self._stopping = self.stop
        try:
            return self.model(x, *args, **kwargs)
        except _StopForward:
            self.stopped = True
            return None
        finally:
            self._stopping = False

    __call__ = run

    def _hook(self, name: str, detach: bool, shapes_only: bool):
        def hook(module, inputs, output):
            calls = self.calls[name]
            if shapes_only:
                t = first_output_tensor(output)
                value = None if t is None else tuple(t.shape)
            else:
                value = _copy(output, detach)
            self.outputs[call_name(name, len(calls))] = value
            calls.append(value)
            if self._stopping and all(self.calls[n] for n in self.layers):
                raise _StopForward()

        return hook


@contextlib.contextmanager
def record(
    model,
    layers: Union[str, Sequence[str]],
    *,
    stop: bool = False,
    detach: bool = False,
    shapes_only: bool = False,
) -> Iterator[Recording]:
    """Record the outputs of the named layers while the context is open.

    Args:
        model: an ``nn.Module``, or a :class:`cnnvis.LoadedModel` or spec string (whose ``run`` then
            normalises inputs in [0, 1] first).
        layers: layer specs: dotted ``named_modules()`` names, globs (``features.*``) or
            ``type:Conv2d``; unknown names raise :class:`UnknownLayerError` with close matches.
        stop: end ``rec.run(x)`` right after the last needed layer (plain ``model(x)`` calls
            inside the context always run to the end).
        detach: store outputs without autograd history (outputs keep it by default so
            gradients can flow back to the input).
        shapes_only: store only the shape of each output's first tensor (cheap; for listings).

    Outputs are cloned, so an in-place op after the layer (``ReLU(inplace=True)``) cannot change them.

    Example:
        >>> import cnnvis, torch
        >>> lm = cnnvis.load_model("lenet-digits")
        >>> with cnnvis.record(lm, ["conv1", "conv2"], stop=True) as rec:
        ...     _ = rec.run(torch.rand(1, 1, 32, 32))
        >>> tuple(rec["conv2"].shape), rec.stopped
        ((1, 16, 10, 10), True)
    """
    normalize = None
    if isinstance(model, str):
        model = load_model(model)
    if hasattr(model, "preprocessing") and hasattr(model, "model"):
        normalize = model.preprocessing.normalize
        model = model.model
    if isinstance(model, torch.jit.ScriptModule):
        raise CnnvisError(
            "TorchScript models cannot be hooked (PyTorch runs no forward hooks in compiled code); "
            "load the Python model (package.module:callable, or an architecture name with --weights FILE)"
        )
    names = resolve_layers(model, layers)
    modules = dict(model.named_modules())
    rec = Recording(model, names, stop, normalize)
    handles = []
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(rec._hook(name, detach, shapes_only)))
        yield rec
    finally:
        for h in handles:
            h.remove()


def _as_module(model) -> nn.Module:
    """The ``nn.Module`` of a module, a :class:`cnnvis.LoadedModel` or a spec string."""
    if isinstance(model, nn.Module):
        return model
    if hasattr(model, "preprocessing") and isinstance(getattr(model, "model", None), nn.Module):
        return model.model
    return load_model(model).model


@contextlib.contextmanager
def preserved(model) -> Iterator[nn.Module]:
    """Restore every module's train/eval mode and every parameter's ``requires_grad`` on exit.

    ``model`` is an ``nn.Module``, a :class:`cnnvis.LoadedModel` or a spec; the module is yielded.
    """
    model = _as_module(model)
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)


@contextlib.contextmanager
def frozen(model, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Eval mode and no weight gradients while open; the model's own settings come back after.

    ``model`` is an ``nn.Module``, a :class:`cnnvis.LoadedModel` or a spec; the module is yielded.
    """
    model = _as_module(model)
    with preserved(model):
        if eval_mode:
            model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model


def count_hooks(model) -> int:
    """Number of forward (pre-)hooks registered anywhere in ``model`` (for checks and tests)."""
    model = _as_module(model)
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
    return total
