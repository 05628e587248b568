"""The perceptual similarity of the interpretability score: cosine similarity of another network's features.

The Machine Interpretability Score (:mod:`cnnvis.atlas.scores`) needs a model of how alike two images
look. The paper uses DreamSim, which cannot be had offline; cnnvis uses the ImageNet features of a
network other than the one inspected: the input of its last linear layer (for the EfficientNets, the
1,280 globally pooled channels of the head), compared by cosine similarity.

* default: ``efficientnet-lite1`` (the ``score`` extra, sha256-checked like Lite0);
* ``efficientnet-lite0`` when Lite1 is the model inspected;
* any model spec :func:`cnnvis.load_model` takes (``--similarity``).

Every image is resized to one square side before it is embedded: the crops a unit is scored on are
at most its receptive field, so a side near the crop's own (at least :data:`SMALLEST`, at most
``largest``) keeps their detail without paying for pixels that upsampling would only invent.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    >>> sim = Similarity(net)
    >>> f = sim.embed(torch.rand(5, 3, 20, 20), side=32)
    >>> tuple(f.shape), bool(torch.allclose(f.norm(dim=1), torch.ones(5)))
    ((5, 4), True)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis.core.errors import CnnvisError, InputError, WeightsError
from cnnvis.core.memory import images_per_batch, PASS_PIXELS
from cnnvis.model.hooks import frozen
from cnnvis.model.loading import load_model
from cnnvis.model.probing import call_model, select_output
from cnnvis.model.zoo.efficientnet_lite import EfficientNetLite1

DEFAULT = "efficientnet-lite1"
#: the similarity model when Lite1 itself is inspected
FALLBACK = "efficientnet-lite0"
#: no image is embedded at a side below this (a 3-pixel receptive field is shown at 32 px)
SMALLEST = 32
#: nor above this by default: the deepest units' crops are whole images
LARGEST = 128


def default_similarity(lm) -> str:
    """The similarity model for inspecting ``lm``: Lite1, or Lite0 when ``lm`` is Lite1."""
    is_lite1 = getattr(lm, "name", "") == DEFAULT or isinstance(getattr(lm, "model", lm), EfficientNetLite1)
    return FALLBACK if is_lite1 else DEFAULT


def _feature_module(model: nn.Module) -> Optional[nn.Module]:
    """The last ``nn.Linear`` of the model (its input is the feature vector), or None."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last


#: Pixels a similarity pass embeds at once: half a statistics pass's (9 images at 128 px: Lite1's activations
#: for 18 of them were 0.17 GB, the largest part of the gallery's peak while it scores).
EMBED_PIXELS = PASS_PIXELS // 2


class Similarity:
    """Embeds images with a network's penultimate features; ``embed`` returns unit-length rows.

    ``spec`` is a model spec, an ``nn.Module`` or a loaded model. A model that cannot be loaded
    offline raises :class:`~cnnvis.core.errors.WeightsError` (exit 1) naming what to install.
    """

    def __init__(self, spec, *, device=None, largest: int = LARGEST):
        try:
            self.lm = load_model(spec, device=device)
        except WeightsError as exc:
            raise WeightsError(f"the similarity model cannot be loaded offline: {exc}") from None
        except CnnvisError as exc:
            raise type(exc)(f"the similarity model: {exc}") from None
        self.name = self.lm.name
        self.largest = int(largest)
        if self.largest < SMALLEST:
            raise InputError(f"--similarity-size must be at least {SMALLEST}, got {largest}")
        self._linear = _feature_module(self.lm.model)
        self.features = "the input of its last linear layer" if self._linear is not None else "its output"

    def describe(self) -> dict:
        return {"model": self.name, "weights": self.lm.weights, "features": self.features,
                "similarity": "cosine", "largest_side": self.largest}

    def side(self, crop_side: int) -> int:
        """The side an image of ``crop_side`` pixels is embedded at: its own, rounded up to 8, within
        [SMALLEST, largest] and not above the similarity model's own input size."""
        own = max(self.lm.preprocessing.input_size())
        return int(min(max(SMALLEST, -(-int(crop_side) // 8) * 8), self.largest, own))

    def embed(self, images, side: int) -> torch.Tensor:
        """``N x C x h x w`` images in [0, 1] (a tensor, or a list of ``C x h x w`` images of one size, stacked a
        batch at a time) -> ``N x D`` unit-length features, at ``side`` x ``side``."""
        if len(images) == 0 or (torch.is_tensor(images) and images.ndim != 4):
            raise InputError("no images to embed")
        want = self.lm.preprocessing.channels
        got = images[0].shape[-3]
        if got != want and not (got == 1 or want == 1):
            raise InputError(f"the similarity model {self.name} takes {want}-channel images, got {got}")
        out = []
        step = images_per_batch((side, side), most=64, pixels=EMBED_PIXELS)
        with torch.no_grad(), frozen(self.lm.model):
            for start in range(0, len(images), step):
                part = images[start : start + step]
                x = (part if torch.is_tensor(part) else torch.stack(list(part))).float()
                if got != want:
                    x = x.expand(-1, want, -1, -1) if got == 1 else x.mean(1, keepdim=True)
                if tuple(x.shape[-2:]) != (side, side):
                    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
                out.append(self._features(x.clamp(0, 1).to(self.lm.device)).cpu())
        return F.normalize(torch.cat(out).double(), dim=1).float()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        caught = []
        handle = None
        if self._linear is not None:
            handle = self._linear.register_forward_pre_hook(lambda _m, args: caught.append(args[0]))
        try:
            y = call_model(self.lm, x)  # a failing forward pass is a ModelError naming the model
        finally:
            if handle is not None:
                handle.remove()
        feats = caught[-1] if caught else select_output(y, f"the similarity model {self.name}")[0]
        if feats.ndim == 4:
            feats = feats.mean((2, 3))
        return feats.flatten(1).float()
