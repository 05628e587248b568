"""The examples in docstrings are tests too."""

import doctest
import importlib

import pytest

MODULES = ["cnnvis.model.loading", "cnnvis.model.layers", "cnnvis.model.hooks", "cnnvis.model.probing",
           "cnnvis.inspection.filters", "cnnvis.inspection.activations", "cnnvis.inspection.stats",
           "cnnvis.attribution.gradients", "cnnvis.attribution.receptive",
           "cnnvis.synthesis.objectives", "cnnvis.synthesis.units", "cnnvis.synthesis.maco", "cnnvis.synthesis.params",
           "cnnvis.synthesis.health", "cnnvis.synthesis.quality", "cnnvis.synthesis.photos", "cnnvis.synthesis.techniques",
           "cnnvis.atlas.runs", "cnnvis.atlas.galleries", "cnnvis.atlas.store", "cnnvis.atlas.examples",
           "cnnvis.atlas.circuits", "cnnvis.atlas.scores", "cnnvis.atlas.similarity", "cnnvis.atlas.interpret",
           "cnnvis.core.files", "cnnvis.core.progress", "cnnvis.core.display"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
