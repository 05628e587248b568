"""From a unit back to the input: captum attributions for a class or any internal unit, and
theoretical and effective receptive fields.

Modules: :mod:`~cnnvis.attribution.gradients`, :mod:`~cnnvis.attribution.receptive`.
"""
