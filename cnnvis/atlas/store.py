"""The record store of an output folder: one record per image, keyed by (layer, unit, variant).

Every command that synthesises images (``maximize``, ``gallery``, and the techniques) writes
through one :class:`Store`. The folder holds the images and ``manifest.json``::

    {"version": 2,
     "model": {...},                      # the model that made the newest records
     "records": [ {record}, ... ],        # one per image, see below
     ...}                                 # sections other writers own (the gallery's "gallery")

A record is a flat JSON object with at least ``layer``, ``filter`` (the unit), ``variant``,
``image`` (the PNG, relative to the folder) and ``fingerprint``. The **variant** names how the
image was made: objective and preset (``channel-l2-plain``), and where it applies the sign
(``…-negative``), the diversity index, the technique.

* **Finished** means: a record with the key exists, its fingerprint equals the one the caller
  computed now, and its image file exists. Anything else is computed again.
* **Fingerprints** hash content, not names (:func:`model_fingerprint` hashes the weights and the
  architecture, :func:`files_fingerprint` the bytes of input images), so replacing a weights
  file or an image folder in place invalidates what was made from it, and copying the same
  weights elsewhere does not.
* **Concurrent writers** (shards, ``maximize`` runs on other filters, a ``maximize`` beside a
  ``gallery``) never lose a record: :meth:`Store.commit` takes an exclusive lock on the folder,
  re-reads the manifest, merges its records in by key and writes it back, so whatever the
  interleaving the last writer's manifest holds every record.
* **Atomic**: every file is written whole (temporary file, then rename), a record only after
  its image, and temporary files of killed processes are removed by the next run.

Example:
    >>> import tempfile, torch
    >>> store = Store(tempfile.mkdtemp())
    >>> rel = store.save_image(torch.zeros(1, 4, 4), "conv1", 3, "channel-l2-plain")
    >>> _ = store.commit([{"layer": "conv1", "filter": 3, "variant": "channel-l2-plain", "image": rel,
    ...                   "fingerprint": "abc"}])
    >>> store.finished(("conv1", 3, "channel-l2-plain"), "abc"), store.finished(("conv1", 3, "channel-l2-plain"), "xyz")
    (True, False)
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

from cnnvis.core.errors import InputError
from cnnvis.core.files import FolderLock, layer_file, remove_stale_temps, write_json
from cnnvis.core.io import save_png

MANIFEST = "manifest.json"
VERSION = 2

Key = Tuple[str, int, str]


def variant_name(objective: str, preset: str, *, negative: bool = False, diversity: int = 0, index: int = 0,
                 technique: Optional[str] = None) -> str:
    """The variant part of a record's key: ``<objective>-<preset>`` plus what else made it differ.

    Example:
        >>> variant_name("channel-l2", "plain"), variant_name("channel-mean", "maco", negative=True)
        ('channel-l2-plain', 'channel-mean-maco-negative')
        >>> variant_name("channel-mean", "maco", diversity=4, index=2)
        'channel-mean-maco-diverse4-2'
    """
    name = f"{technique}-" if technique else ""
    name += f"{objective}-{preset}"
    if negative:
        name += "-negative"
    if diversity > 1:
        name += f"-diverse{int(diversity)}-{int(index)}"
    return name


def record_key(rec: dict) -> Key:
    """(layer, unit, variant) of a record; records written before variants existed use objective-preset."""
    variant = rec.get("variant") or f"{rec['objective']}-{rec['preset']}"
    return (str(rec["layer"]), int(rec["filter"]), str(variant))


def image_path(layer: str, unit: int, variant: str) -> str:
    """Where a record's image lives, relative to the folder: ``<layer>/<variant>/NNNN.png``."""
    return f"{layer_file(layer)}/{variant}/{int(unit):04d}.png"


def grid_path(layer: str, variant: str) -> str:
    """The grid of one layer's images of one variant: ``<layer>/<variant>/grid.png``."""
    return f"{layer_file(layer)}/{variant}/grid.png"


def fingerprint(*parts) -> str:
    """A short hash of JSON-able parts (settings, names, seeds, other fingerprints)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_fingerprint(lm) -> str:
    """A hash of what decides a model's outputs: its architecture (module tree) and the content of
    every parameter and buffer. Where the weights came from (a path, a name) does not enter it."""
    import torch

    h = hashlib.sha256()
    module = lm.model if hasattr(lm, "model") else lm
    h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not isinstance(t, torch.Tensor):
                continue
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            data = t.detach().to("cpu").contiguous().reshape(-1)
            if data.numel():
                h.update(data.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def files_fingerprint(paths: Sequence[str]) -> str:
    """A hash of files' names and contents (input images: replaced in place, they hash differently)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(os.path.abspath(path).encode() + b"\0")
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            h.update(f"unreadable:{type(exc).__name__}".encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _check_record(rec, where: str) -> dict:
    if not isinstance(rec, dict) or not {"layer", "filter"} <= set(rec) or not (
        rec.get("variant") or {"objective", "preset"} <= set(rec)
    ):
        raise InputError(
            f"{where} holds a damaged record ({json.dumps(rec)[:80]}): each needs layer, filter and variant; "
            f"fix or delete the file, or pass --force to rebuild it"
        )
    try:
        int(rec["filter"])
    except (TypeError, ValueError):
        raise InputError(f"{where} holds a record whose filter {rec['filter']!r} is not a number; pass --force to rebuild it") from None
    return rec


class Store:
    """The records of one output folder (see the module docstring).

    Args:
        folder: the output folder (created on the first write).
        force: treat every record as unfinished, and rebuild a damaged manifest instead of stopping.
    """

    def __init__(self, folder: str, *, force: bool = False):
        self.folder = os.fspath(folder)
        self.force = bool(force)
        self._lock = FolderLock(self.folder)
        self._records: Optional[Dict[Key, dict]] = None
        self._cleaned = False

    # ------------------------------------------------------------------ reading

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.folder, MANIFEST)

    def read(self) -> dict:
        """The manifest (an empty one when there is none). A damaged file is a clear error naming it,
        unless ``force``, which starts a fresh one and keeps the damaged file as ``manifest.json.damaged``."""
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
            if not isinstance(manifest, dict) or not isinstance(manifest.get("records", []), list):
                raise ValueError("not a cnnvis manifest (an object with a list of records)")
            for rec in manifest.get("records", []):
                _check_record(rec, self.manifest_path)
        except FileNotFoundError:
            manifest = {}
        except NotADirectoryError:
            raise InputError(f"{self.folder} is not a folder; pass another -o") from None
        except (ValueError, UnicodeDecodeError, InputError) as exc:
            if not self.force:
                detail = str(exc) if isinstance(exc, InputError) else f"{self.manifest_path} is damaged ({exc})"
                if not isinstance(exc, InputError):
                    detail += "; pass --force to rebuild it (the damaged file is kept as manifest.json.damaged)"
                raise InputError(detail) from None
            os.replace(self.manifest_path, self.manifest_path + ".damaged")
            manifest = {}
        manifest.setdefault("version", VERSION)
        manifest.setdefault("records", [])
        return manifest

    def records(self) -> Dict[Key, dict]:
        """Every record, by key (read once; :meth:`commit` keeps it current)."""
        if self._records is None:
            self._records = {record_key(r): r for r in self.read()["records"]}
        return self._records

    def get(self, key: Key) -> Optional[dict]:
        return self.records().get(key)

    def exists(self, rel: Optional[str]) -> bool:
        return bool(rel) and os.path.isfile(os.path.join(self.folder, rel))

    def finished(self, key: Key, fp: str) -> bool:
        """Whether the image ``key`` is done with fingerprint ``fp`` (always False with ``force``)."""
        if self.force:
            return False
        rec = self.get(key)
        return rec is not None and rec.get("fingerprint") == fp and self.exists(rec.get("image"))

    # ------------------------------------------------------------------ writing

    def prepare(self) -> None:
        """Create the folder and remove temporary files that killed runs left in it."""
        if not self._cleaned:
            os.makedirs(self.folder, exist_ok=True)
            remove_stale_temps(self.folder)
            self._cleaned = True

    def save_image(self, image, layer: str, unit: int, variant: str) -> str:
        """Write one image where its record will say it is; returns the relative path."""
        self.prepare()
        rel = image_path(layer, unit, variant)
        save_png(image, os.path.join(self.folder, rel), keep_identical=True)
        return rel

    def commit(self, records: Iterable[dict] = (), *, update: Optional[Callable[[dict], None]] = None,
               after: Optional[Callable[[dict], None]] = None) -> dict:
        """Merge ``records`` into the manifest under the folder lock; returns the merged manifest.

        ``update(manifest)`` may change other sections while the lock is held; ``after(manifest)``
        runs after the write, still under the lock (derived files such as grids and pages, so the
        last writer's derived files show every record).
        """
        records = list(records)
        for rec in records:
            _check_record(rec, "a new record")
        self.prepare()
        with self._lock:
            manifest = self.read()
            merged = {record_key(r): r for r in manifest["records"]}
            for rec in records:
                merged[record_key(rec)] = rec
            manifest["records"] = sorted(merged.values(), key=_order)
            manifest["version"] = VERSION
            if update is not None:
                update(manifest)
            write_json(manifest, self.manifest_path)
            self._records = merged
            if after is not None:
                after(manifest)
        return manifest

    def writable(self) -> bool:
        """Whether files can be written in the folder (or it can be created)."""
        folder = self.folder
        while not os.path.exists(folder):
            parent = os.path.dirname(os.path.abspath(folder))
            if parent == folder:
                return False
            folder = parent
        return os.access(folder, os.W_OK | os.X_OK)


def _order(rec: dict):
    return (str(rec["layer"]), int(rec["filter"]), str(rec.get("variant") or ""))
