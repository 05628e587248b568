"""What a picture costs before it is made: the weights of the time left and of the pool's order
(:meth:`cnnvis.atlas.runs.Plan.work`), in estimated seconds of one thread."""

from __future__ import annotations

import math
from typing import Dict, Tuple

from cnnvis.model.probing import probe


#: The fewest pixels a unit's analysis is weighed by (a gallery's ``EXAMPLES_COST`` scales with the input's
#: pixels): its fixed work does not shrink with the image, so a tiny model's examples do not look free.
STEP_PIXELS = 32 * 32

#: What one picture-step costs at one thread, in ms: a fixed part (parameterisation, transforms, optimiser),
#: a part per module run up to the layer (each call's overhead) and a part per million activation elements
#: computed up to it (forward and backward). Fitted on the main job's records (efficientnet-lite0, twelve
#: layers and sizes from 32 to 224 px, each within 0.83-1.19 of its measured time per step); pixels alone
#: were off by 3x between a deep layer's 96 px thumbnails and a shallow one's 224 px pictures.
STEP_FIXED_MS, STEP_MODULE_MS, STEP_MELEMENT_MS = 0.38, 0.0144, 2.33

_STEP_COSTS: Dict[int, Tuple[object, Dict[str, float]]] = {}  # id(probe) -> (probe, layer -> seconds)


def step_seconds(lm, layer: str, size: Tuple[int, int]) -> float:
    """The estimated seconds of one picture-step of ``layer`` at ``size`` on one thread (the time left's
    weights and the pool's order: :meth:`Plan.work`). ``layer`` not among the recorded modules (the
    output): the whole network."""
    found = probe(lm, tuple(size))
    kept = _STEP_COSTS.get(id(found))
    if kept is None or kept[0] is not found:
        kept = _STEP_COSTS[id(found)] = (found, {})
    costs = kept[1]
    if layer not in costs:
        bare = [name.split("#")[0] for name, _ in found.order]
        parents = {name.rsplit(".", k)[0] for name in bare for k in range(1, name.count(".") + 1)}
        leaves = [(name, shape) for name, (_, shape) in zip(bare, found.order) if name not in parents]
        last = max((i for i, (name, _) in enumerate(leaves) if name == layer or name.startswith(layer + ".")),
                   default=len(leaves) - 1)
        elements = sum(math.prod(shape) for _, shape in leaves[: last + 1])
        costs[layer] = (STEP_FIXED_MS + STEP_MODULE_MS * (last + 1) + STEP_MELEMENT_MS * elements / 1e6) / 1000
    return costs[layer]
