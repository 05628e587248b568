"""Looking at what is there: kernels as images, one sample's feature maps, and streaming
per-channel statistics with top-activating samples over a population.

Modules: :mod:`~cnnvis.inspection.filters`, :mod:`~cnnvis.inspection.activations`,
:mod:`~cnnvis.inspection.stats`.
"""
