"""A model and what it is made of: loading (zoo, torchvision, your own module, TorchScript),
preprocessing, the layer inventory and look-ups, probing a layer's response chain, and hooks.

Modules: :mod:`~cnnvis.model.loading`, :mod:`~cnnvis.model.zoo`, :mod:`~cnnvis.model.preprocess`,
:mod:`~cnnvis.model.layers`, :mod:`~cnnvis.model.probing`, :mod:`~cnnvis.model.hooks`.
"""
