"""``cnnvis.interpretability`` and ``cnnvis score``: each unit's Machine Interpretability Score.

One pass over the image set (the gallery's dataset pass, :func:`cnnvis.atlas.examples.collect_examples`)
gives every unit's strongest response in each image and where; :mod:`cnnvis.atlas.scores` turns
them into the natural-reference MIS, and, with the unit's positive and negative pictures, the
synthetic-reference MIS. The pictures are the gallery's (same preset, objective, canvas and seed):
given a gallery folder they are reused, and the ones missing are made there.

Example:
    >>> import cnnvis, torch
    >>> from torch import nn
    >>> lm = cnnvis.load_model("lenet-digits")
    >>> sim = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    >>> result = interpretability(lm, ["conv1"], "0-1", similarity=sim)
    >>> [u.natural.mis is not None for u in result.units], result.units[0].synthetic.reason
    ([True, True], 'no pictures were asked for (synthetic references off)')
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from cnnvis.core.errors import InputError
from cnnvis.core.progress import Progress
from cnnvis.atlas.examples import collect_examples, ImageSet
from cnnvis.atlas.galleries import _layer_rows, DEFAULT_FILTERS, gallery_layers, GalleryRequest
from cnnvis.atlas.runs import execute_workers, parse_workers, plan_images
from cnnvis.atlas.scores import score_examples, ScoreResult, ScoreSettings
from cnnvis.atlas.similarity import default_similarity, Similarity
from cnnvis.atlas.store import Store
from cnnvis.model.layers import resolve_layers
from cnnvis.model.loading import load_model

SCORES_FILE = "scores.json"


def make_pictures(lm, names: Sequence[str], units: Dict[str, List[int]], folder: str, *, seed: int = 0,
                  workers=1, progress: Progress = None) -> Tuple[Store, int]:
    """The positive and negative pictures of ``units`` in ``folder``, made the way the gallery makes them
    (those already there are kept); returns the store and how many were made now."""
    request = GalleryRequest(layers=tuple(names), negative=True, seed=int(seed), workers=workers)
    store = Store(folder)
    sizes = request.sizes(lm, names)
    plan = plan_images(lm, request.image_request(sizes, request.steps_for(lm, names, sizes)), store, layers=list(names),
                       units=units)
    summary = execute_workers(plan, parse_workers(workers, lm), progress=progress)
    return store, summary.written


def interpretability(model, layers: Sequence[str] = (), filters=DEFAULT_FILTERS, *, images: Sequence[str] = (),
                     similarity=None, pictures: Optional[str] = None, settings: Optional[ScoreSettings] = None,
                     skip_bad: bool = False, progress: Progress = None,
                     log: Optional[Callable[[str], None]] = None) -> ScoreResult:
    """The natural- and synthetic-reference MIS of every chosen unit (:mod:`cnnvis.atlas.scores`).

    Args:
        model: a spec, an ``nn.Module`` or a ``LoadedModel``.
        layers: layer specs (default: the gallery's layers); filters: the first N of each, or a spec.
        images: image files/folders; default the crops of the bundled photographs the gallery uses.
        similarity: the similarity model (a spec or module); default Lite1 (Lite0 when Lite1 is inspected).
        pictures: a folder for the units' pictures (a gallery folder reuses the gallery's): the positive
            and negative pictures missing there are made, and the synthetic scores computed. None: natural only.
        settings: K, N, quantile, alpha and the seed (:class:`ScoreSettings`).
    """
    settings = settings or ScoreSettings()
    lm = load_model(model)
    names = resolve_layers(lm, list(layers)) if layers else gallery_layers(lm)
    if not names:
        raise InputError(f"{lm.name} has no convolution layers to score; pass layers with -l")
    rows = _layer_rows(lm, names, filters)
    units = {r["name"]: r["filters"] for r in rows}
    sim = similarity if isinstance(similarity, Similarity) else Similarity(similarity or default_similarity(lm))
    image_set = ImageSet(lm, images, skip_bad=skip_bad)
    stack, image_names = image_set.load()
    if len(stack) < settings.needed:
        raise InputError(f"{len(stack)} usable image{'s' if len(stack) != 1 else ''} in the image set; the score "
                         f"needs at least {settings.needed} (2K+2 with K={settings.k}): pass more with --images")
    records, made = None, 0
    if pictures is not None:
        store, made = make_pictures(lm, names, units, pictures, seed=settings.seed)
        records = store.read().get("records") or []
        if log is not None:
            log(f"pictures: {made} made, the others reused from {pictures}")
    examples = collect_examples(lm, names, stack, names=image_names, k=1)
    request = GalleryRequest(layers=tuple(names))
    wanted = [(name, f) for name in names for f in units[name]]
    scores = score_examples(examples, wanted, sim, settings, folder=pictures, records=records,
                            kind=(request.objective, request.presets[0]), channels=lm.preprocessing.channels,
                            progress=progress)
    if log is not None:
        log(f"scored {len(wanted)} units of {len(names)} layer{'s' if len(names) != 1 else ''}")
    scored = [scores[u] for u in wanted]
    out = ScoreResult(lm.name, scored, settings, sim.describe(), len(stack), list(image_set.skipped),
                      {"folder": os.path.abspath(pictures), "made": made} if pictures is not None else None)
    return out
