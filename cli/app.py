"""The ``cnnvis`` click group (``main``) and how every failure becomes one ``Error:`` line.

The commands register themselves on ``main`` from their own modules; ``cnnvis.cli`` imports them all."""

from __future__ import annotations

import errno
import io
import os
import re
import sys
import warnings

import click

import cnnvis
from cnnvis.core.errors import CnnvisError, describe_exception
from cnnvis.core.memory import keep_freed_memory

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class CnnvisClickError(click.ClickException):
    """Prints ``Error: <message>`` (no usage block) and exits with the error's own status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


#: Exit status after a broken pipe (``cnnvis models | head -1``): 128 + SIGPIPE, what a process killed by
#: SIGPIPE reports, as ``git log | head -1`` does; the shell shows the last command's status unless pipefail.
EXIT_BROKEN_PIPE = 141
#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


class Group(click.Group):
    """Turns every failure into one ``Error:`` line and an exit status; a traceback only with CNNVIS_DEBUG=1.

    Library errors keep their own status (2 usage, 1 runtime); click's usage errors are one line
    too. Anything else a command lets out, including what the user's own code raises
    (``SystemExit`` from ``sys.exit(0)``, any ``BaseException`` subclass), is a runtime failure (1)
    named by its type and first line; Ctrl-C is 130. Warnings (PIL, torch, the user's code) are held while the command runs: after a
    failure they are dropped, so the error stays one line; after success each is one ``Warning:``
    line on stderr. A closed output pipe ends the command quietly.
    """

    def invoke(self, ctx):
        if os.environ.get("CNNVIS_DEBUG"):
            return super().invoke(ctx)
        with warnings.catch_warnings(record=True) as caught:  # the filters in force still apply
            try:
                result = super().invoke(ctx)
            except BaseException as exc:
                raise _one_line(exc) from None
        for w in _unique(caught):
            click.echo(f"Warning: {w}", err=True)
        return result


def _unique(caught) -> list:
    """One line per distinct warning, in order: ``message (Category)``."""
    lines = []
    for w in caught:
        text = (str(w.message).strip().splitlines() or [""])[0]
        line = f"{text} ({w.category.__name__})"
        if line not in lines:
            lines.append(line)
    return lines


def _one_line(exc: BaseException) -> BaseException:
    """The exception click should see instead of ``exc``: its own exceptions as they are, else one line."""
    if isinstance(exc, click.UsageError):  # one line too, not click's usage block
        where = f" (see '{exc.ctx.command_path} -h')" if exc.ctx is not None else ""
        return CnnvisClickError(exc.format_message().rstrip() + where, exc.exit_code)
    if isinstance(exc, (click.exceptions.Exit, click.ClickException, click.Abort)):
        return exc
    if _is_broken_pipe(exc):
        _silence_stdout()
        return click.exceptions.Exit(EXIT_BROKEN_PIPE)
    if isinstance(exc, CnnvisError):
        return CnnvisClickError(str(exc), exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return CnnvisClickError("interrupted", EXIT_INTERRUPTED)
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _OUT_OF_MEMORY.search(str(exc))):
        return CnnvisClickError("out of memory; try a smaller --size or --batch-size", 1)
    if isinstance(exc, SystemExit):  # no command of ours exits this way: the user's code called sys.exit()
        return CnnvisClickError(
            f"the model's code called sys.exit({exc.code!r}) (SystemExit) and cnnvis stopped; "
            f"set CNNVIS_DEBUG=1 for the traceback", 1)
    if isinstance(exc, OSError) and exc.filename and exc.errno in _FILE_ERRNOS:
        where = os.fspath(exc.filename)
        if os.path.basename(where).endswith(".cnnvis-tmp"):
            where = os.path.dirname(where)  # the temporary file of an atomic write: name its folder
        reason = (exc.strerror or describe_exception(exc)).lower()
        return CnnvisClickError(f"cannot use {where}: {reason}; {_FILE_ADVICE.get(exc.errno, _FILE_ADVICE[None])}", 1)
    return CnnvisClickError(f"{describe_exception(exc)} (set CNNVIS_DEBUG=1 for the traceback)", 1)


_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory", re.IGNORECASE)  # torch's allocators
_FILE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                errno.EEXIST, errno.ENAMETOOLONG, errno.ENOENT}
_FILE_ADVICE = {
    errno.EROFS: "choose a writable folder with -o",
    errno.ENOSPC: "free some space or choose another folder with -o",
    errno.EDQUOT: "free some space or choose another folder with -o",
    errno.EACCES: "check its permissions or choose another folder with -o",
    errno.EPERM: "check its permissions or choose another folder with -o",
    None: "check the path or choose another folder with -o",
}


def _is_broken_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real file (a test runner's buffer): nothing will be flushed to a pipe


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
      cnnvis dream efficientnet-lite0 cat.jpg -l blocks.10
      cnnvis accentuate efficientnet-lite0 cat.jpg -l blocks.10 --filter 7
      cnnvis caricature efficientnet-lite0 cat.jpg -l blocks.10

    Run 'cnnvis COMMAND -h' for a command's options.
    """
    keep_freed_memory()  # long runs of same-sized tensors: no mmap and page faults per step (core/memory.py)
