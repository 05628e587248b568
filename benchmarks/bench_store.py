"""The record store's commit cost against the number of records stored, beside the manifest rewrite it replaced.

    python benchmarks/bench_store.py            # the table and the concurrency check, a few minutes on 2 cores
    python benchmarks/bench_store.py --quick    # up to 4,000 records

Each row fills a fresh folder with N records of the gallery's real size (about 2.3 KB), then times commits
of 8 new records: ``database`` is :class:`cnnvis.atlas.store.Store` (SQLite, one upsert transaction);
``manifest rewrite`` is what the store did before (under the folder lock: read manifest.json, merge the
records by key, sort, write it back). Then 4 writer processes each commit 2,000 records in batches of 8
into one folder, and the records are counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

from cnnvis.atlas.store import Store, record_key
from cnnvis.core.files import FolderLock, write_json


def record(layer: str, unit: int) -> dict:
    """A record the size of the gallery's (its curve is most of it)."""
    return {"layer": layer, "filter": unit, "variant": "channel-relu-robust", "image": f"{layer}/{unit:04d}.png",
            "fingerprint": "0123456789abcdef", "objective": "channel-relu", "preset": "robust", "status": "ok",
            "loss_curve": [round(0.001 * i * (unit % 7 + 1), 6) for i in range(256)], "seed": 0, "steps": 256}


def rewrite_commit(folder: str, records) -> None:
    """The store before the database: the whole manifest read, merged and written on every commit."""
    path = os.path.join(folder, "manifest.json")
    with FolderLock(folder):
        try:
            with open(path) as f:
                manifest = json.load(f)
        except FileNotFoundError:
            manifest = {"version": 2, "records": []}
        merged = {record_key(r): r for r in manifest["records"]}
        merged.update({record_key(r): r for r in records})
        manifest["records"] = sorted(merged.values(), key=lambda r: (r["layer"], r["filter"], r["variant"]))
        write_json(manifest, path)


def timed(commit, start: int, commits: int) -> float:
    times = []
    for k in range(commits):
        batch = [record("wide", start + 8 * k + i) for i in range(8)]
        t0 = time.perf_counter()
        commit(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[4])
    from bench_store import record
    from cnnvis.atlas.store import Store
    folder, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = Store(folder)
    for start in range(0, count, 8):
        store.commit([record(name, u) for u in range(start, min(start + 8, count))])
""")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sizes = [250, 1000, 4000] + ([] if args.quick else [40000])
    print("| records stored | database: ms per commit of 8 | manifest rewrite: ms per commit of 8 | manifest size |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            db_dir, json_dir = os.path.join(tmp, f"db{n}"), os.path.join(tmp, f"json{n}")
            Store(db_dir).commit([record("wide", u) for u in range(n)])
            db_ms = timed(Store(db_dir).commit, 10 ** 6, 40)
            rewrite = "-"
            if n <= 4000 or not args.quick:
                rewrite_commit(json_dir, [record("wide", u) for u in range(n)])
                rewrite = f"{timed(lambda b: rewrite_commit(json_dir, b), 10 ** 6, 5 if n > 4000 else 20):.1f}"
            size = os.path.getsize(os.path.join(json_dir, "manifest.json")) / 1e6 if os.path.isdir(json_dir) else 0
            print(f"| {n:,} | {db_ms:.2f} | {rewrite} | {size:.1f} MB |", flush=True)
        folder = os.path.join(tmp, "shared")
        script = os.path.join(tmp, "writer.py")
        with open(script, "w") as f:
            f.write(_WRITER)
        here = os.path.dirname(os.path.abspath(__file__))
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, script, folder, f"layer{i}", "2000", here]) for i in range(4)]
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - t0
        found = len(Store(folder).records())
        print(f"\n4 concurrent writers x 2,000 records in commits of 8: exit codes {codes}, {found:,} of 8,000 "
              f"records stored ({'none lost' if found == 8000 else 'LOST ' + str(8000 - found)}), {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
