"""The examples in docstrings are tests too."""

import doctest
import importlib

import pytest

MODULES = ["cnnvis.models", "cnnvis.layers", "cnnvis.hooks", "cnnvis.filters", "cnnvis.activations", "cnnvis.stats", "cnnvis.gradients",
           "cnnvis.receptive", "cnnvis.objectives", "cnnvis.synthesis", "cnnvis.runs", "cnnvis.galleries",
           "cnnvis.store", "cnnvis.probing", "cnnvis.files", "cnnvis.progress", "cnnvis.display", "cnnvis.maco", "cnnvis.examples", "cnnvis.circuits",
           "cnnvis.params", "cnnvis.health", "cnnvis.quality"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
