"""The record store of an output folder: one record per image, keyed by (layer, unit, variant).

Every command that synthesises images (``maximize``, ``gallery``, and the techniques) writes
through one :class:`Store`. The records live in ``records.sqlite`` (SQLite, write-ahead log): one row
per record keyed (layer, unit, variant), its compact JSON compressed with zlib, upserted in one short
transaction, so a commit costs the same with 40 records or 40,000. At the end of every run the store writes ``manifest.json``, the
export that scripts and the renderer read (:meth:`Store.export`; ``cnnvis export DIR`` writes it
too, and ``Store(folder).records()`` reads the records directly)::

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
* **Concurrent writers** (workers, shards, ``maximize`` runs on other filters, a ``maximize`` beside a
  ``gallery``) never lose a record: each commit is one SQLite transaction that upserts its records
  by key; no process holds a lock while it computes. Exports, grids and pages are written under
  an exclusive lock on the folder from the database as it stands, so the last writer's show every
  record.
* **Earlier folders**: a folder holding only ``manifest.json`` (version 2) is read as it is and
  moved into the database the first time it is written.
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

import contextlib
import filecmp
import hashlib
import json
import os
import shutil
import sqlite3
import time
import urllib.parse
import zlib
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

from cnnvis.core.errors import CnnvisError, InputError
from cnnvis.core.files import FolderLock, compact_json, layer_file, remove_stale_temps, write_json
from cnnvis.core.io import save_png

MANIFEST = "manifest.json"
#: the version of the exported ``manifest.json`` (unchanged since the database came in)
VERSION = 2
DATABASE = "records.sqlite"
#: the version of the database's layout (SQLite's ``user_version``); a newer one is refused. 1: JSON text;
#: 2: JSON compressed with zlib (a BLOB; a main job's records and gallery section take 0.5 MB instead of
#: 1.35 MB), text still read, so a version-1 database simply gains compressed rows as it is written.
DATABASE_VERSION = 2
#: zlib's level for the database's values (6: its default; 9 saves under 1% more and costs twice the time)
_ZLIB_LEVEL = 6
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (layer TEXT NOT NULL, unit INTEGER NOT NULL, variant TEXT NOT NULL,
                                    record TEXT NOT NULL, PRIMARY KEY (layer, unit, variant));
CREATE TABLE IF NOT EXISTS sections (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

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
        force: treat every record as unfinished, and rebuild a damaged database or manifest instead
            of stopping (the damaged file is kept beside it as ``….damaged``).
    """

    def __init__(self, folder: str, *, force: bool = False):
        self.folder = os.fspath(folder)
        self.force = bool(force)
        self._lock = FolderLock(self.folder)
        self._records: Optional[Dict[Key, dict]] = None
        self._cleaned = False
        self._checked = False

    # ------------------------------------------------------------------ the database

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.folder, MANIFEST)

    @property
    def database_path(self) -> str:
        return os.path.join(self.folder, DATABASE)

    def _damaged(self, exc: Exception) -> None:
        """A damaged database: a clear error, or with ``force`` set it aside and start afresh."""
        if not self.force:
            raise InputError(f"{self.database_path} is damaged ({exc}); pass --force to rebuild it (from "
                             f"{MANIFEST}, the last export, where there is one; the damaged file is kept as "
                             f"{DATABASE}.damaged)") from None
        os.replace(self.database_path, self.database_path + ".damaged")
        for tail in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.database_path + tail)
        self._checked = False

    @contextlib.contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        """A connection in one transaction (``BEGIN IMMEDIATE`` when writing: writers queue, none is lost)."""
        try:
            db = sqlite3.connect(self.database_path, timeout=600, isolation_level=None)
            if not write:
                db.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # opens the file (and the log beside it)
        except sqlite3.OperationalError as exc:
            if write:
                self._check_folder()  # a read-only or full folder: the system's own words for it
                raise CnnvisError(f"cannot open {self.database_path} ({exc}): is {self.folder} writable?") from None
            # a folder nobody may write (a finished site on read-only storage): its log cannot be opened
            # beside it, and nothing can change the file, so read it as it is
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.database_path)) + "?immutable=1"
            db = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            if not self._checked:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > DATABASE_VERSION:
                    raise InputError(f"{self.database_path} was written by a newer cnnvis (database version {version}; "
                                     f"this one reads up to {DATABASE_VERSION}): upgrade cnnvis to read it")
                if write:
                    _switch_to_wal(db)
                    db.executescript(_SCHEMA)
                    if version != DATABASE_VERSION:
                        db.execute(f"PRAGMA user_version={DATABASE_VERSION}")
                    self._checked = True
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def _check_folder(self) -> None:
        """Raise the system's ``OSError`` (read-only file system, permission denied, no space) when a file
        cannot be created in the folder; return when one can."""
        probe = os.path.join(self.folder, f".cnnvis-probe-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)

    def _load(self) -> Tuple[Dict[Key, dict], Dict[str, object]]:
        """(records by key, sections) as they stand: from the database, or from a version-2 manifest.json
        when the folder has no database yet."""
        if os.path.isfile(self.database_path):
            try:
                with self._connect(write=False) as db:
                    if not db.execute("SELECT name FROM sqlite_master WHERE name='records'").fetchone():
                        return {}, {}
                    rows = db.execute("SELECT record FROM records").fetchall()
                    sections = db.execute("SELECT name, value FROM sections ORDER BY rowid").fetchall()
                records = [_check_record(_decode(r), self.database_path) for (r,) in rows]
                return {record_key(r): r for r in records}, {n: _decode(v) for n, v in sections}
            except sqlite3.OperationalError as exc:
                raise CnnvisError(f"cannot read {self.database_path} ({exc})") from None
            except (sqlite3.DatabaseError, ValueError, zlib.error) as exc:
                self._damaged(exc)
                return {}, {}
        manifest = self._read_manifest()
        records = {record_key(r): r for r in manifest.pop("records", [])}
        manifest.pop("version", None)
        return records, manifest

    def _read_manifest(self) -> dict:
        """A version-2 ``manifest.json`` (empty when there is none); damaged: an error, or with ``force``
        kept as ``manifest.json.damaged`` and started afresh."""
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
            if not isinstance(manifest, dict) or not isinstance(manifest.get("records", []), list):
                raise ValueError("not a cnnvis manifest (an object with a list of records)")
            if int(manifest.get("version", VERSION)) > VERSION:
                raise InputError(f"{self.manifest_path} was written by a newer cnnvis (manifest version "
                                 f"{manifest['version']}; this one reads up to {VERSION}): upgrade cnnvis to read it")
            for rec in manifest.get("records", []):
                _check_record(rec, self.manifest_path)
        except FileNotFoundError:
            manifest = {}
        except NotADirectoryError:
            raise InputError(f"{self.folder} is not a folder; pass another -o") from None
        except (ValueError, TypeError, UnicodeDecodeError, InputError) as exc:
            if not self.force or "newer cnnvis" in str(exc):
                detail = str(exc) if isinstance(exc, InputError) else f"{self.manifest_path} is damaged ({exc})"
                if not isinstance(exc, InputError):
                    detail += "; pass --force to rebuild it (the damaged file is kept as manifest.json.damaged)"
                raise InputError(detail) from None
            os.replace(self.manifest_path, self.manifest_path + ".damaged")
            manifest = {}
        return manifest

    # ------------------------------------------------------------------ reading

    def read(self) -> dict:
        """The folder's manifest as :meth:`export` writes it: ``version``, every record (sorted by layer,
        unit, variant) and the other sections. A damaged store is a clear error naming the file,
        unless ``force``."""
        records, sections = self._load()
        self._records = records
        return {"version": VERSION, "records": sorted(records.values(), key=_order), **sections}

    def records(self) -> Dict[Key, dict]:
        """Every record, by key (read once; :meth:`commit` keeps it current)."""
        if self._records is None:
            self._records = self._load()[0]
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
        """Create the folder, remove temporary files that killed runs left in it, and open the database
        for writing (moving a version-2 manifest into it): a folder that cannot be written fails here,
        before any work."""
        if not self._cleaned:
            try:
                os.makedirs(self.folder, exist_ok=True)
            except OSError as exc:
                raise CnnvisError(f"cannot create {self.folder} ({exc.strerror}): pass another -o") from None
            remove_stale_temps(self.folder)
            self._cleaned = True
            self.commit()

    def save_image(self, image, layer: str, unit: int, variant: str) -> str:
        """Write one image where its record will say it is; returns the relative path."""
        self.prepare()
        rel = image_path(layer, unit, variant)
        save_png(image, os.path.join(self.folder, rel), keep_identical=True)
        return rel

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Move a version-2 ``manifest.json`` into an empty database (once: the first write)."""
        if db.execute("SELECT 1 FROM records LIMIT 1").fetchone() or db.execute("SELECT 1 FROM sections LIMIT 1").fetchone():
            return
        manifest = self._read_manifest()
        if manifest:
            _upsert(db, manifest.pop("records", []))
            manifest.pop("version", None)
            for name, value in manifest.items():
                db.execute("INSERT OR REPLACE INTO sections (name, value) VALUES (?, ?)", (name, _encode(value)))

    def commit(self, records: Iterable[dict] = (), *, update: Optional[Callable[[dict], None]] = None,
               after: Optional[Callable[[dict], None]] = None, export: bool = False) -> Optional[dict]:
        """Upsert ``records`` by key in one transaction; its cost does not grow with the records stored.

        ``update(sections)`` may change the other sections (``model``, ``gallery``) in the same
        transaction. With ``export`` the store then writes ``manifest.json``, and ``after(manifest)``
        runs (derived files such as grids and pages), both under the folder lock and from the
        database as it stands, so the last writer's files show every record; the manifest is returned.
        """
        records = list(records)
        for rec in records:
            _check_record(rec, "a new record")
        self.prepare()
        for attempt in (0, 1):
            try:
                with self._connect(write=True) as db:
                    self._migrate(db)
                    _upsert(db, records)
                    if update is not None:
                        stored = {name: _text(value) for name, value in
                                  db.execute("SELECT name, value FROM sections ORDER BY rowid")}
                        sections = {name: json.loads(text) for name, text in stored.items()}
                        update(sections)
                        for name, value in sections.items():
                            if name not in ("version", "records") and stored.get(name) != compact_json(value):
                                db.execute("INSERT INTO sections (name, value) VALUES (?, ?) ON CONFLICT(name) "
                                           "DO UPDATE SET value = excluded.value", (name, _encode(value)))
                break
            except sqlite3.OperationalError as exc:  # read-only, full disk, locked for ten minutes
                self._check_folder()
                raise CnnvisError(f"cannot write {self.database_path} ({exc}): is {self.folder} writable?") from None
            except (sqlite3.DatabaseError, zlib.error) as exc:
                if attempt:
                    raise CnnvisError(f"cannot write {self.database_path} ({exc})") from None
                self._damaged(exc)
        if self._records is not None:
            for rec in records:
                self._records[record_key(rec)] = rec
        if not (export or after):
            return None
        with self._lock:
            manifest = self.read()
            if export:
                write_json(manifest, self.manifest_path, compact=True)
            if after is not None:
                after(manifest)
        return manifest

    def export(self) -> str:
        """Write ``manifest.json`` from the database (what ``cnnvis export`` does); returns its path."""
        self.commit(export=True)
        return self.manifest_path

    def writable(self) -> bool:
        """Whether files can be written in the folder (or it can be created)."""
        folder = self.folder
        while not os.path.exists(folder):
            parent = os.path.dirname(os.path.abspath(folder))
            if parent == folder:
                return False
            folder = parent
        return os.access(folder, os.W_OK | os.X_OK)


def _switch_to_wal(db: sqlite3.Connection, patience: float = 600.0) -> None:
    """Put the database in write-ahead-log mode. SQLite answers "database is locked" at once, without
    waiting for its busy timeout, when two processes switch a new database together (shards starting at
    the same moment), so try again, with growing pauses, for up to ``patience`` seconds."""
    deadline, pause = time.monotonic() + patience, 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 0.25)


def _encode(value) -> bytes:
    """A record or section as the database keeps it: compact JSON, compressed (deterministic bytes)."""
    return zlib.compress(compact_json(value).encode("utf-8"), _ZLIB_LEVEL)


def _text(value) -> str:
    """The compact JSON :func:`_encode` compressed, or a version-1 database's JSON text as it is."""
    return zlib.decompress(value).decode("utf-8") if isinstance(value, bytes) else value


def _decode(value):
    return json.loads(_text(value))


def _upsert(db: sqlite3.Connection, records: Sequence[dict]) -> None:
    db.executemany("INSERT INTO records (layer, unit, variant, record) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT(layer, unit, variant) DO UPDATE SET record = excluded.record",
                   [(*record_key(r), _encode(r)) for r in records])


def _order(rec: dict):
    return (str(rec["layer"]), int(rec["filter"]), str(rec.get("variant") or ""))


def merge_folders(destination: str, sources: Sequence[str], *, force: bool = False) -> Tuple[int, int]:
    """Merge output folders (say, one per node or shard, written apart) into ``destination``: every file
    they hold is copied over (a file already there with other bytes is an error, unless ``force``), their
    records upserted by key, and their sections merged (a gallery's layers by name, its units by key).
    Everything is checked before anything is written. Returns (records, files copied). The caller
    exports and renders (``cnnvis merge`` does)."""
    skip = {DATABASE, DATABASE + "-wal", DATABASE + "-shm", MANIFEST, FolderLock.NAME, "index.html"}
    stats = os.path.join("stats", "stats.json")  # per layer: each part holds its own layers
    parts = []
    for source in sources:
        if os.path.abspath(source) == os.path.abspath(destination):
            raise InputError(f"{source} is the folder being merged into; name other folders to merge")
        if not os.path.isfile(os.path.join(source, DATABASE)) and not os.path.isfile(os.path.join(source, MANIFEST)):
            raise InputError(f"{source} holds no cnnvis records ({DATABASE} or {MANIFEST}); name folders that a "
                             f"maximize, gallery or technique wrote")
        files = []
        for root, dirs, names in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not (root == source and d in ("static", "units", "layers")))
            for name in sorted(names):
                rel = os.path.relpath(os.path.join(root, name), source)
                if rel in skip or ".tmp" in name:
                    continue
                src, dst = os.path.join(source, rel), os.path.join(destination, rel)
                if rel != stats and not force and os.path.exists(dst) and not filecmp.cmp(src, dst, shallow=False):
                    raise InputError(f"{rel} differs between {source} and {destination}: the folders were not "
                                     f"made by one run split in parts; pass --force to take {source}'s")
                files.append(rel)
        parts.append((source, Store(source).read(), files))
    target = Store(destination)
    target.prepare()
    copied, records = 0, 0
    for source, manifest, files in parts:
        for rel in files:
            src, dst = os.path.join(source, rel), os.path.join(destination, rel)
            if os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False):
                continue
            if rel == stats and os.path.exists(dst):
                with open(src, encoding="utf-8") as a, open(dst, encoding="utf-8") as b:
                    write_json({**json.load(b), **json.load(a)}, dst)
            else:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(src, dst + ".merge-tmp")
                os.replace(dst + ".merge-tmp", dst)
            copied += 1
        sections = {k: v for k, v in manifest.items() if k not in ("version", "records")}
        target.commit(manifest["records"], update=lambda mine, theirs=sections: _merge_sections(mine, theirs))
        records += len(manifest["records"])
    return records, copied


def _merge_sections(mine: dict, theirs: dict) -> None:
    for name, value in theirs.items():
        if name != "gallery" or not isinstance(mine.get(name), dict):
            mine.setdefault(name, value)
            continue
        gallery = mine[name]
        for key, part in value.items():
            if key == "layers":
                by_name = {l["name"]: l for l in gallery.get("layers") or []}
                for layer in part or []:
                    old = by_name.get(layer["name"])
                    if old is None:
                        by_name[layer["name"]] = layer
                    elif old.get("linked") or layer.get("linked"):  # several parts each link their own units
                        by_name[layer["name"]] = {**old, **layer, "filters": sorted(
                            set(old.get("filters") or []) | set(layer.get("filters") or []))}
                order = [l["name"] for l in gallery.get("layers") or []]
                order += [l["name"] for l in part or [] if l["name"] not in order]
                gallery["layers"] = [by_name[n] for n in order]
            elif key == "units":
                gallery.setdefault("units", {}).update(part or {})
            else:
                gallery.setdefault(key, part)
