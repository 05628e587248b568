"""The ``cnnvis`` command line: one click group; every command is a thin layer over the library."""

from __future__ import annotations

import os
import sys

import click

import cnnvis
from cnnvis.errors import CnnvisError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class CnnvisClickError(click.ClickException):
    """Prints ``Error: <message>`` (no usage block) and exits with the error's own status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class Group(click.Group):
    """Turns library errors into one clear line; a traceback only with CNNVIS_DEBUG=1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CnnvisError as exc:
            if os.environ.get("CNNVIS_DEBUG"):
                raise
            raise CnnvisClickError(str(exc), exc.exit_code) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except MemoryError:
            raise CnnvisClickError("out of memory; try a smaller --size or --batch-size", 1) from None
        except Exception as exc:  # a runtime failure: one line, no traceback
            if os.environ.get("CNNVIS_DEBUG"):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            raise CnnvisClickError(
                f"{type(exc).__name__}: {first} (set CNNVIS_DEBUG=1 for the traceback)", 1
            ) from None


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(cnnvis.__version__, "-V", "--version", prog_name="cnnvis")
def main():
    """See what a convolutional network has learned.

    \b
    Examples:
      cnnvis models                                   # the names you can use
      cnnvis layers lenet-digits                      # every layer, shape, channels
      cnnvis layers mypkg.nets:make_net --size 64     # your own nn.Module
      cnnvis filters efficientnet-lite0 -l conv_stem  # kernels as images
      cnnvis activations lenet-digits digit.png -l conv1 -l conv2
      cnnvis stats lenet-digits digits/ -l conv2 --json
      cnnvis saliency efficientnet-lite0 cat.jpg --method smoothgrad
      cnnvis receptive-field vgg16 --weights none --json
      cnnvis maximize lenet-digits -l conv2 --preset robust
      cnnvis gallery efficientnet-lite0               # the whole tour as an HTML site

    Run 'cnnvis COMMAND -h' for a command's options.
    """


# each module registers its commands on ``main``
from . import commands  # noqa: E402,F401
from . import inspect_cmds  # noqa: E402,F401  filters, activations, stats
from . import gradient_cmds  # noqa: E402,F401  saliency, receptive-field
from . import maximize_cmd  # noqa: E402,F401  maximize
from . import gallery_cmd  # noqa: E402,F401  gallery

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
