"""The two library calls that write a whole site, with the gallery renderer handed in.

:func:`cnnvis.atlas.galleries.build_gallery` and :func:`cnnvis.atlas.runs.run_maximize` compute and
store; they write HTML only through the ``renderer`` they are handed, so the atlas never imports the
site. These are the same calls with :func:`cnnvis.gallery.render.render_site` handed in: what
``cnnvis.build_gallery`` and ``cnnvis.run_maximize`` are, and what the ``cnnvis gallery`` command uses.
"""

from __future__ import annotations

import functools

from cnnvis.atlas import galleries, runs
from cnnvis.gallery.render import render_site


@functools.wraps(galleries.build_gallery)
def build_gallery(model, out_dir, request=None, **options):
    options.setdefault("renderer", render_site)
    return galleries.build_gallery(model, out_dir, request, **options)


@functools.wraps(runs.run_maximize)
def run_maximize(model, layers, filters="all", **options):
    options.setdefault("renderer", render_site)
    return runs.run_maximize(model, layers, filters, **options)


__all__ = ["build_gallery", "run_maximize"]
