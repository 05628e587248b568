"""What every part of cnnvis needs to talk about a layer's output: the name of the model's own output
(:data:`OUTPUT`) and the tensor that stands for a module's output (:func:`first_output_tensor`).

The bottom of the house: it imports nothing of cnnvis.

Example:
    >>> import torch
    >>> first_output_tensor({"aux": [torch.zeros(1)], "out": torch.ones(2)}).shape
    torch.Size([1])
"""

from __future__ import annotations

from typing import Optional

import torch

#: The name objectives and probes use for the model's own output (not a module name: it starts with @).
OUTPUT = "@output"


def first_output_tensor(value) -> Optional[torch.Tensor]:
    """The first tensor in a (possibly nested) module output: a tensor itself, else the first one found
    in a tuple, list or dict (in order); None when there is none."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for v in value:
            t = first_output_tensor(v)
            if t is not None:
                return t
    return None
