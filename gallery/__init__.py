"""The static HTML gallery renderer (installed as ``cnnvis.gallery``).

It reads only a run's ``manifest.json`` and the files beside it, never torch.
"""
