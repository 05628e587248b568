"""A gallery unit's analysis over the image set: the dataset pass (examples and statistics of the unit's
response), each example's crop and saliency, the histogram, the strongest inputs and the interpretability
scores. :func:`examine_units` needs none of the unit's pictures, so a gallery runs it while they are
drawn (``execute_pool``'s ``alongside``); :func:`add_scores` reads the stored pictures afterwards.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from cnnvis.core.errors import InputError
from cnnvis.core.memory import release_freed_memory
from cnnvis.atlas.circuits import strongest_inputs
from cnnvis.atlas.examples import collect_examples, example_file, example_saliency, ImageSet, saliency_file, OVERLAY_SIDE
from cnnvis.atlas.store import Store
from cnnvis.inspection.stats import add_batch, LayerStats, save_stats, StatsResult
from cnnvis.model.probing import names_order, probe, response_chain


#: Shares of a unit's analysis cost counted as each part ends (the main job, one thread beside the
#: pictures: the dataset pass 19 s, the natural scores 30 s, the examples' saliency and files 49 s), so the
#: time left does not wait for the first layer's examples to see the work done
PASS_SHARE, SCORES_SHARE = 0.2, 0.3


def unit_key(layer: str, f: int) -> str:
    """A unit's key in the manifest's ``gallery.units``."""
    return f"{layer}/{int(f)}"


def examine_units(lm, store: Store, image_set: ImageSet, units: List[Tuple[str, int]], analysis_fp: str, top_k: int,
                  reporter, scorer=None):
    """Dataset examples, saliency, statistics, histograms and natural scores of ``units``; writes their files.
    ``(entries, natural scores or None, units)``: :func:`add_scores` adds the scores once the pictures are stored.
    ``reporter`` (the gallery's) takes ``say(line)`` and ``finish(units, line, cost)``, a unit's examples
    costing its ``examples_cost``."""
    folder = store.folder
    images, names = image_set.load()
    wanted = sorted({layer for layer, _ in units}, key=names_order(lm))
    t_examples = time.perf_counter()
    found = probe(lm, tuple(images.shape[-2:]))
    chains = {layer: response_chain(found, layer) for layer in wanted}
    measured = list(dict.fromkeys([chains[l][-1] for l in wanted] + wanted))  # the response, and the raw output
    examples, raw = dataset_pass(lm, wanted, images, names, top_k, measured)
    stats = StatsResult({layer: raw.layers[chains[layer][-1]] for layer in wanted}, raw.skipped)
    save_stats(stats, os.path.join(folder, "stats"))
    release_freed_memory()  # the pass's batches
    reporter.say(f"dataset pass over {len(images)} images for {len(wanted)} layers "
                 f"({time.perf_counter() - t_examples:.0f} s)")
    reporter.finish(0, "", PASS_SHARE * reporter.examples_cost * len(units))
    natural = None
    if scorer is not None and len(images) < scorer.settings.needed:
        reporter.say(f"no interpretability scores: {len(images)} images, they need {scorer.settings.needed}")
    elif scorer is not None:
        natural = scorer.natural(examples, units)
        release_freed_memory()  # the similarity model's batches
    reporter.finish(0, "", SCORES_SHARE * reporter.examples_cost * len(units))
    out = {}
    for layer in wanted:
        mine = [f for l, f in units if l == layer]
        for f in mine:
            out[unit_key(layer, f)] = unit_entry(lm, folder, examples[layer], stats.layers[layer], layer, f,
                                                 analysis_fp, chains[layer], raw.layers[layer])
        reporter.finish(len(mine), f"examples of {len(mine)} unit{'s' if len(mine) != 1 else ''} of {layer} finished",
                        (1 - PASS_SHARE - SCORES_SHARE) * reporter.examples_cost * len(mine))
        release_freed_memory()  # the next layer's saliency needs buffers of other sizes
    return out, natural, units


def add_scores(store: Store, reporter, scorer, out: Dict[str, dict], natural, units) -> Dict[str, dict]:
    """The entries of :func:`examine_units` with the units' scores: the synthetic ones read the stored pictures."""
    if natural is None:
        return out
    scores = scorer.synthetic(natural, store.folder, store.read().get("records"))
    reporter.say(f"interpretability scores of {len(units)} units ({scorer.seconds:.0f} s)")
    for (layer, f), unit in scores.items():
        out[unit_key(layer, f)]["scores"] = {k: v for k, v in unit.to_dict().items() if k in ("natural", "synthetic")}
    return out


def dataset_pass(lm, layers: List[str], images: torch.Tensor, names: List[str], k: int, measured: List[str]):
    """One pass over the image set for the examples of ``layers`` and the statistics of ``measured``:
    ``(examples, StatsResult)``, the same numbers as :func:`collect_examples` and
    :func:`cnnvis.inspection.stats.stats_from_batches` over the same batches, for one forward pass a batch."""
    stats: Dict[str, LayerStats] = {}
    examples = collect_examples(lm, layers, images, names=names, k=k, also=measured,
                                on_batch=lambda outputs, items: add_batch(stats, outputs, items, 0))
    return examples, StatsResult(stats, ())


def stats_entry(s, f: int) -> dict:
    return {"mean": float(s.mean[f]), "std": float(s.std[f]), "min": float(s.min[f]), "max": float(s.max[f]),
            "fraction_active": float(s.fraction_active[f]), "count": s.count}


def unit_entry(lm, folder: str, ex, s, layer: str, f: int, analysis_fp: str,
               chain: Sequence[str] = (), raw=None) -> dict:
    """One unit's statistics, histogram and examples (crops, saliency, values).

    Statistics, histogram and example values are all of the unit's response (``reads``, the end of
    ``chain``); ``raw_stats`` are of the layer's own output when that is another quantity."""
    entry = {
        "layer": layer,
        "filter": int(f),
        "stats": stats_entry(s, f),
        "analysis_fingerprint": analysis_fp,
        "reads": ex.reads,
        "chain": list(chain or (layer,)),
        "before": ex.before,
    }
    if raw is not None and raw is not s:
        entry["raw_stats"] = stats_entry(raw, f)
    peaks = ex.peaks[f]
    counts, edges = torch.histogram(peaks.double(), bins=20)
    entry["histogram"] = {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges],
                          "what": f"the unit's largest response ({ex.reads}) in each of {len(peaks)} images"}
    for side in ("top", "bottom"):
        which = (ex.top if side == "top" else ex.bottom)[f]
        maps = example_saliency(lm, ex, f, which)
        items = []
        for e, m in zip(which, maps):
            crop = ex.crop(e)
            heat = m / m.max() if float(m.max()) > 0 else m
            items.append({"image": example_file(folder, crop), "saliency": saliency_file(folder, heat),
                          "saliency_cells": max(heat.shape[-2:]) <= OVERLAY_SIDE,  # one cell per pixel: drawn crisp
                          "value": e.value, "name": os.path.basename(e.name),
                          "position": [e.y, e.x], "box": list(ex.box(e)), "pre": e.pre})
        entry[side] = items
    return entry


def inputs_entry(lm, layer: str, f: int, k: int) -> Optional[dict]:
    try:
        s = strongest_inputs(lm, layer, f, k=k)
    except InputError:
        return None
    return {"source": s.source, "through": s.through,
            "excitatory": [{"channel": l.channel, "strength": l.strength} for l in s.excitatory],
            "inhibitory": [{"channel": l.channel, "strength": l.strength} for l in s.inhibitory]}
