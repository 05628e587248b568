"""Files without torch: atomic writes, file names for layers, folder locks, leftover temp files.

Both sides of cnnvis use this module: the torch side (:mod:`cnnvis.core.io`, :mod:`cnnvis.atlas.store`) and
the torch-free gallery renderer (:mod:`cnnvis.gallery.render`). It imports nothing heavy.

* Every write goes to a temporary file in the same folder, then ``os.replace`` renames it over
  the target, so a reader never sees half a file. The file gets the permissions the user's
  umask gives a new file (0644 under umask 022), not ``mkstemp``'s 0600.
* A process killed while writing leaves its temporary file behind; its name carries the host
  and process id, so the next run in that folder (:func:`remove_stale_temps`) removes the
  leftovers of dead processes and never a file another live process is still writing.
* :func:`layer_file` turns a layer name into a file name that is distinct for distinct layers
  (``a b`` and ``a_b`` do not collide).

Example:
    >>> layer_file("features.10"), layer_file("a b") != layer_file("a_b")
    ('features.10', True)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import time
from typing import Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

#: Suffix of every temporary file cnnvis writes (``.<name>.<host>.<pid>.<random>.cnnvis-tmp``).
TEMP_SUFFIX = ".cnnvis-tmp"
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def layer_file(layer: str) -> str:
    """A layer name as a file or folder name, distinct for distinct names.

    Names made only of letters, digits and ``._-`` are kept (``features.10``); anything else is
    replaced by ``_`` and a short hash of the original name is appended, so ``a b`` and ``a_b``
    (or ``<script>`` and ``_script_``) never share a file.
    """
    layer = str(layer)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", layer).strip(".") or "_"
    if safe != layer:
        safe += "-" + hashlib.sha1(layer.encode("utf-8")).hexdigest()[:6]
    return safe


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions a new file gets under the current umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def _temp_name(path: str) -> str:
    return f".{os.path.basename(path)}.{_HOST}.{os.getpid()}.{os.urandom(4).hex()}{TEMP_SUFFIX}"


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: Optional[str] = None) -> Iterator:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, _temp_name(path))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: PathLike, data: bytes, *, keep_identical: bool = False) -> bool:
    """Atomically write ``data``; with ``keep_identical`` a file already holding exactly it is left
    untouched. Returns True when the file was written."""
    if keep_identical:
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return False
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass
    with atomic_write(path) as f:
        f.write(data)
    return True


def write_text(path: PathLike, text: str, *, keep_identical: bool = False) -> bool:
    """Like :func:`write_bytes` for UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"), keep_identical=keep_identical)


def compact_json(obj) -> str:
    """``obj`` as JSON without whitespace (large, machine-read text: the record store, its export)."""
    return json.dumps(obj, separators=(",", ":"))


def write_json(obj, path: PathLike, *, compact: bool = False) -> str:
    """Write ``obj`` as indented JSON (``compact``: :func:`compact_json`), atomically."""
    write_text(path, (compact_json(obj) if compact else json.dumps(obj, indent=2)) + "\n")
    return os.fspath(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: PathLike, *, max_age: float = 3600.0) -> int:
    """Remove temporary files that killed cnnvis processes left below ``folder``; returns how many.

    A temporary file of this host is removed when its process is gone; one of another host (a
    shared folder) only when it is older than ``max_age`` seconds.
    """
    removed = 0
    now = time.time()
    for root, _dirs, files in os.walk(os.fspath(folder)):
        for name in files:
            if not name.endswith(TEMP_SUFFIX):
                continue
            parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 3)
            path = os.path.join(root, name)
            try:
                host, pid = parts[1], int(parts[2])
            except (IndexError, ValueError):
                host, pid = "", -1
            try:
                stale = (not _pid_alive(pid)) if host == _HOST and pid > 0 else now - os.path.getmtime(path) > max_age
                if stale:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


class FolderLock:
    """An exclusive lock on a folder (``fcntl.flock`` on ``<folder>/.cnnvis.lock``), re-entrant
    within one process. Where ``flock`` is missing (Windows) it is a no-op."""

    NAME = ".cnnvis.lock"

    def __init__(self, folder: PathLike):
        self.path = os.path.join(os.fspath(folder), self.NAME)
        self._fd: Optional[int] = None
        self._depth = 0

    def __enter__(self) -> "FolderLock":
        if self._depth == 0:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows
                fcntl = None
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                self._fd = None  # a read-only folder: nothing will be written, so nothing to guard
            if fcntl is not None and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
