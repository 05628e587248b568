"""LeNet-5 for scikit-learn's handwritten digits, and the data split it was trained on.

The digits (8x8, values 0..16, ink high) are scaled to [0, 1] and upsampled
bilinearly to 32x32, the input size of the classic LeNet-5: white ink on black.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

INPUT_SIZE = 32
#: Fraction of each class held out for testing; the split is fixed by ``split_seed``.
TEST_FRACTION = 0.25
SPLIT_SEED = 0


class LeNet5(nn.Module):
    """The classic LeNet-5 layout (conv 5x5 -> pool -> conv 5x5 -> pool -> 3 linear layers)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


def digits_to_tensor(images) -> torch.Tensor:
    """8x8 digit arrays (values 0..16) -> N x 1 x 32 x 32 float tensor in [0, 1]."""
    x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


def digits_split():
    """Return ``(x_train, y_train, x_test, y_test)``: scikit-learn's digits, stratified, fixed seed.

    Needs scikit-learn (it ships the data set, so this works offline).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    y = torch.as_tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(SPLIT_SEED)
    test_idx = []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test_idx.append(idx[: round(len(idx) * TEST_FRACTION)])
    test_mask = torch.zeros(len(y), dtype=torch.bool)
    test_mask[torch.cat(test_idx)] = True
    x = digits_to_tensor(data.images)
    return x[~test_mask], y[~test_mask], x[test_mask], y[test_mask]


def digit_class_names() -> list[str]:
    return [str(i) for i in range(10)]
