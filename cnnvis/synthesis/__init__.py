"""Pictures made by gradient ascent: parameterisations, objectives, the settings and presets,
the one optimisation loop, units to pictures, MACO, the techniques on photographs, and the
measurements that judge units and pictures.

Modules: :mod:`~cnnvis.synthesis.params`, :mod:`~cnnvis.synthesis.objectives`,
:mod:`~cnnvis.synthesis.settings`, :mod:`~cnnvis.synthesis.ascent`, :mod:`~cnnvis.synthesis.units`,
:mod:`~cnnvis.synthesis.maco`, :mod:`~cnnvis.synthesis.techniques`, :mod:`~cnnvis.synthesis.health`,
:mod:`~cnnvis.synthesis.quality`.

``cnnvis.synthesis.<name>`` still reads every name the single module of earlier versions had
(``make_settings``, ``synthesize``, ``maximize``, ``field_settings``, ``DIVERSITY_KEEP``, …).
"""

import importlib

#: the modules that together hold what ``cnnvis/synthesis.py`` held before the wings
_FORMER = ("settings", "ascent", "units")


def __getattr__(name: str):
    if not name.startswith("__"):
        for module in _FORMER:
            found = importlib.import_module(f"{__name__}.{module}")
            if hasattr(found, name):
                return getattr(found, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
