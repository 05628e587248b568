"""The ``cnnvis`` command line: one click group; every command is a thin layer over the library.

The group and its error handling live in :mod:`cnnvis.cli.app`; each module below registers its
commands on it.
"""

from __future__ import annotations

import sys

from .app import CONTEXT_SETTINGS, EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, CnnvisClickError, Group, main  # noqa: F401

from . import commands  # noqa: E402,F401  models, layers
from . import inspect_cmds  # noqa: E402,F401  filters, activations, stats
from . import gradient_cmds  # noqa: E402,F401  saliency, receptive-field
from . import maximize_cmd  # noqa: E402,F401  maximize
from . import gallery_cmd  # noqa: E402,F401  gallery
from . import technique_cmds  # noqa: E402,F401  accentuate, dream, caricature
from . import store_cmds  # noqa: E402,F401  export, merge
from . import score_cmd  # noqa: E402,F401  score

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
