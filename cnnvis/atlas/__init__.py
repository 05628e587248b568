"""Many units, on disk: the record store, runs over layers and units (workers, shards, resume),
dataset examples, circuits, and the gallery's build step. The site's HTML is written by a
renderer the caller hands in (``cnnvis.gallery``), never imported from here.

Modules: :mod:`~cnnvis.atlas.store`, :mod:`~cnnvis.atlas.runs`, :mod:`~cnnvis.atlas.examples`,
:mod:`~cnnvis.atlas.circuits`, :mod:`~cnnvis.atlas.galleries` (its units' analysis in
:mod:`~cnnvis.atlas.analysis`).
"""
