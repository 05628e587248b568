"""The record database: commit cost that does not grow, concurrent writers, migration, export, bad folders."""

import json
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time

import pytest

from cnnvis.atlas.store import DATABASE, DATABASE_VERSION, MANIFEST, Store, record_key
from cnnvis.core.errors import CnnvisError, InputError

PY = sys.executable


def _rec(layer, unit, variant="channel-relu-robust", **extra):
    return {"layer": layer, "filter": unit, "variant": variant, "fingerprint": f"fp{unit}", "image": None,
            "objective_final": unit * 0.5, **extra}


def _commit_times(store: Store, first: int, commits: int = 25) -> float:
    """The median time of ``commits`` commits of 8 new records each, starting at unit ``first``."""
    times = []
    for k in range(commits):
        batch = [_rec("wide", first + 8 * k + i) for i in range(8)]
        t0 = time.perf_counter()
        store.commit(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def test_commit_cost_does_not_grow_with_the_records_stored(tmp_path):
    small, large = Store(str(tmp_path / "small")), Store(str(tmp_path / "large"))
    small.commit([_rec("wide", u) for u in range(250)])
    large.commit([_rec("wide", u) for u in range(8000)])
    _commit_times(small, 100_000, 5), _commit_times(large, 100_000, 5)  # warm both
    ratio = _commit_times(large, 200_000) / _commit_times(small, 200_000)
    # 32x the records: a manifest rewritten on every commit costs ~32x; the database about the same
    assert ratio < 3, ratio
    assert len(Store(str(tmp_path / "large")).records()) == 8000 + 8 * 30


_WRITER = textwrap.dedent("""
    import sys
    from cnnvis.atlas.store import Store
    folder, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = Store(folder)
    for start in range(0, count, 8):
        store.commit([{"layer": name, "filter": u, "variant": "v", "fingerprint": "f", "image": None}
                      for u in range(start, min(start + 8, count))])
    store.commit(export=True)
""")


@pytest.mark.slow
def test_concurrent_writers_in_processes_lose_nothing(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    folder = tmp_path / "shared"
    writers = [subprocess.Popen([PY, str(script), str(folder), f"layer{i}", "240"]) for i in range(4)]
    assert [w.wait(240) for w in writers] == [0, 0, 0, 0]
    keys = set(Store(str(folder)).records())
    assert keys == {(f"layer{i}", u, "v") for i in range(4) for u in range(240)}
    exported = json.loads((folder / MANIFEST).read_text())["records"]
    assert {record_key(r) for r in exported} == keys and len(exported) == 960


def _create_together(barrier, root, rank, rounds, failures):
    for r in range(rounds):
        barrier.wait(60)
        try:
            Store(os.path.join(root, f"round{r}")).commit([{"layer": "l", "filter": 10 * rank + i, "variant": "v",
                                                            "fingerprint": "f", "image": None} for i in range(3)])
        except Exception as exc:  # noqa: BLE001 - the test counts every failure
            failures.put(f"round {r}, writer {rank}: {exc}")


def test_writers_that_create_a_new_database_at_the_same_moment_lose_nothing(tmp_path):
    # shards started together all open a store that does not exist yet and switch it to WAL at once;
    # SQLite answers "database is locked" at once to all but one of them, without its busy timeout
    ctx = multiprocessing.get_context("fork")
    writers, rounds = 4, 25
    barrier, failures = ctx.Barrier(writers), ctx.SimpleQueue()
    procs = [ctx.Process(target=_create_together, args=(barrier, str(tmp_path), k, rounds, failures))
             for k in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert errors == [] and [p.exitcode for p in procs] == [0] * writers
    for r in range(rounds):
        assert set(Store(str(tmp_path / f"round{r}")).records()) == {("l", 10 * k + i, "v") for k in range(writers)
                                                                     for i in range(3)}


def test_a_version_2_folder_is_read_then_moved_into_the_database(tmp_path):
    old = {"version": 2, "records": [_rec("conv2", 3), _rec("conv1", 1), _rec("conv1", 0)],
           "model": {"name": "lenet-digits", "fingerprint": "m"},
           "gallery": {"settings": {"preset": "robust"}, "units": {"conv1/0": {"stats": {"count": 4}}}}}
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    store = Store(str(tmp_path))
    read = store.read()
    assert not (tmp_path / DATABASE).exists()  # reading writes nothing
    assert [record_key(r) for r in read["records"]] == [("conv1", 0, "channel-relu-robust"),
                                                        ("conv1", 1, "channel-relu-robust"),
                                                        ("conv2", 3, "channel-relu-robust")]
    assert list(read) == ["version", "records", "model", "gallery"] and read["gallery"] == old["gallery"]
    Store(str(tmp_path)).commit([_rec("conv2", 4)], export=True)
    assert (tmp_path / DATABASE).is_file()
    with sqlite3.connect(tmp_path / DATABASE) as db:
        assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 4
        assert [n for (n,) in db.execute("SELECT name FROM sections ORDER BY rowid")] == ["model", "gallery"]
    exported = json.loads((tmp_path / MANIFEST).read_text())
    assert exported == {**old, "records": sorted(old["records"] + [_rec("conv2", 4)],
                                                 key=lambda r: (r["layer"], r["filter"]))}


def test_the_exported_manifest_equals_the_records_and_sections(tmp_path):
    store = Store(str(tmp_path))
    store.commit([_rec("b", 2), _rec("a", 10), _rec("a", 9, "channel-l2-plain")],
                 update=lambda s: s.update(model={"name": "m"}))
    store.commit([_rec("a", 10, objective_final=99.0)], update=lambda s: s.update(gallery={"layers": []}))
    path = Store(str(tmp_path)).export()
    exported = json.loads(open(path).read())
    records = Store(str(tmp_path)).records()
    assert [record_key(r) for r in exported["records"]] == sorted(records)
    assert all(r == records[record_key(r)] for r in exported["records"])
    assert records[("a", 10, "channel-relu-robust")]["objective_final"] == 99.0  # an upsert replaces
    assert exported["version"] == 2 and exported["model"] == {"name": "m"} and exported["gallery"] == {"layers": []}


def test_a_damaged_database_is_named_and_force_rebuilds_it(tmp_path):
    Store(str(tmp_path)).commit([_rec("a", 1)], export=True)
    (tmp_path / DATABASE).write_bytes(b"\0garbage" * 512)
    with pytest.raises(InputError, match=f"{DATABASE} is damaged.*--force"):
        Store(str(tmp_path)).records()
    store = Store(str(tmp_path), force=True)
    store.commit([_rec("a", 2)], export=True)
    assert (tmp_path / (DATABASE + ".damaged")).read_bytes().startswith(b"\0garbage")
    # rebuilt from the last export (manifest.json), then the new record
    assert set(Store(str(tmp_path)).records()) == {("a", 1, "channel-relu-robust"), ("a", 2, "channel-relu-robust")}


def test_a_folder_from_a_newer_version_names_both_versions(tmp_path):
    Store(str(tmp_path)).commit([_rec("a", 1)])
    with sqlite3.connect(tmp_path / DATABASE) as db:
        db.execute(f"PRAGMA user_version={DATABASE_VERSION + 5}")
    with pytest.raises(InputError, match=f"newer cnnvis.*{DATABASE_VERSION + 5}.*up to {DATABASE_VERSION}"):
        Store(str(tmp_path)).records()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / MANIFEST).write_text(json.dumps({"version": 7, "records": []}))
    with pytest.raises(InputError, match="newer cnnvis.*version 7.*up to 2"):
        Store(str(tmp_path / "old")).read()


def test_a_store_that_cannot_be_written_fails_before_any_work(tmp_path):
    (tmp_path / DATABASE).mkdir()  # the database's place is taken: it cannot be opened
    with pytest.raises(CnnvisError, match=DATABASE) as info:
        Store(str(tmp_path)).prepare()
    assert not isinstance(info.value, InputError)  # a runtime failure (exit 1), not a usage error
    assert os.listdir(tmp_path) == [DATABASE]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_fails_with_one_line_and_writes_nothing(tmp_path):
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(CnnvisError):
            Store(str(tmp_path / "out")).prepare()
    finally:
        os.chmod(tmp_path, 0o755)
    assert os.listdir(tmp_path) == []


def test_values_are_stored_compressed_and_a_version_1_database_is_still_read(tmp_path):
    import zlib

    records = [_rec("a", u, loss_curve=[round(0.1 * k, 4) for k in range(128)]) for u in range(20)]
    Store(str(tmp_path)).commit(records, update=lambda s: s.update(gallery={"units": {"a/1": {"x": list(range(500))}}}))
    with sqlite3.connect(tmp_path / DATABASE) as db:
        rows = dict(((layer, unit), blob) for layer, unit, blob in db.execute("SELECT layer, unit, record FROM records"))
        (section,) = db.execute("SELECT value FROM sections WHERE name='gallery'").fetchone()
        assert db.execute("PRAGMA user_version").fetchone()[0] == DATABASE_VERSION == 2
    text = json.dumps(records[3], separators=(",", ":"))
    assert isinstance(rows["a", 3], bytes) and json.loads(zlib.decompress(rows["a", 3])) == records[3]
    assert len(rows["a", 3]) < 0.6 * len(text)
    assert json.loads(zlib.decompress(section)) == {"units": {"a/1": {"x": list(range(500))}}}

    old = tmp_path / "old"  # a database version 1 wrote: JSON text
    old.mkdir()
    with sqlite3.connect(old / DATABASE) as db:
        db.executescript("CREATE TABLE records (layer TEXT NOT NULL, unit INTEGER NOT NULL, variant TEXT NOT NULL, "
                         "record TEXT NOT NULL, PRIMARY KEY (layer, unit, variant)); CREATE TABLE sections "
                         "(name TEXT PRIMARY KEY, value TEXT NOT NULL); PRAGMA user_version=1;")
        db.execute("INSERT INTO records VALUES ('a', 1, 'channel-relu-robust', ?)", (json.dumps(_rec("a", 1)),))
        db.execute("INSERT INTO sections VALUES ('model', ?)", (json.dumps({"name": "m"}),))
    assert Store(str(old)).records() == {("a", 1, "channel-relu-robust"): _rec("a", 1)}
    Store(str(old)).commit([_rec("a", 2)], update=lambda s: s["model"].update(weights="w"))
    read = Store(str(old)).read()
    assert [record_key(r) for r in read["records"]] == [("a", 1, "channel-relu-robust"), ("a", 2, "channel-relu-robust")]
    assert read["model"] == {"name": "m", "weights": "w"}
    with sqlite3.connect(old / DATABASE) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        kinds = dict(((layer, unit), kind) for layer, unit, kind in db.execute("SELECT layer, unit, typeof(record) FROM records"))
    assert kinds == {("a", 1): "text", ("a", 2): "blob"}  # old rows stay as written, new ones are compressed
