"""The one pipeline: plan -> fixed chunks -> run -> store. Resume, shards and determinism are tested here once."""

import filecmp
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import cnnvis
import cnnvis.atlas.runs
import cnnvis.synthesis.units
from cnnvis.core.errors import InputError
from cnnvis.atlas.runs import _pool_items, ImageRequest, execute, execute_pool, parse_shard, plan_images
from cnnvis.gallery.site import run_maximize
from cnnvis.atlas.store import MANIFEST, Store

KEYS = {"layer", "filter", "variant", "image", "objective", "preset", "settings", "steps", "lr", "size", "seed",
        "objective_initial", "objective_final", "loss_curve", "seconds", "versions", "dead", "status", "fingerprint"}


@pytest.fixture(scope="module")
def lenet():
    return cnnvis.load_model("lenet-digits")


def _files(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs
                  if not f.startswith("."))


def _pngs(folder):
    return [f for f in _files(folder) if f.endswith(".png")]


def _records(folder):
    return json.loads((folder / MANIFEST).read_text())["records"]


def test_outputs_manifest_and_resume(lenet, tmp_path):
    s1 = run_maximize(lenet, ["conv2"], "0-1", out_dir=str(tmp_path), steps=6, batch_size=2)
    assert (s1.written, s1.skipped) == (2, 0)
    s2 = run_maximize(lenet, ["conv2"], "0-3", out_dir=str(tmp_path), steps=6, batch_size=2)
    assert (s2.written, s2.skipped) == (2, 2) and [r["filter"] for r in s2.records] == [2, 3]
    records = _records(tmp_path)
    assert [r["filter"] for r in records] == [0, 1, 2, 3]
    for r in records:
        assert KEYS <= set(r)
        assert (tmp_path / r["image"]).is_file() and r["image"] == f"conv2/channel-l2-plain/{r['filter']:04d}.png"
        assert r["variant"] == "channel-l2-plain"
        assert len(r["loss_curve"]) == 6 and float(f"{r['objective_initial']:.5g}") == r["loss_curve"][0]
        assert r["settings"]["steps"] == 6 and r["settings"]["normalize_grad"] is True
    assert _files(tmp_path) == ["conv2/channel-l2-plain/0000.png", "conv2/channel-l2-plain/0001.png",
                                "conv2/channel-l2-plain/0002.png", "conv2/channel-l2-plain/0003.png",
                                "conv2/channel-l2-plain/grid.png", "manifest.json", "records.sqlite"]
    grid = np.asarray(Image.open(tmp_path / "conv2/channel-l2-plain/grid.png"))
    assert grid.shape[:2] == (2 + 2 * 34, 2 + 2 * 34)  # 4 tiles of 32 px, 2 px padding
    # other settings make the finished records stale; --force recomputes
    assert run_maximize(lenet, ["conv2"], "0-3", out_dir=str(tmp_path), steps=7).written == 4
    assert run_maximize(lenet, ["conv2"], "0-3", out_dir=str(tmp_path), steps=7, force=True).written == 4
    assert len(_records(tmp_path)) == 4


def test_same_seed_gives_byte_identical_pngs(lenet, tmp_path):
    for name in ("a", "b"):
        run_maximize(lenet, ["conv2"], "0-2", out_dir=str(tmp_path / name), preset="robust", steps=5, size=32)
    for rel in _pngs(tmp_path / "a"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_interrupted_run_leaves_no_partial_files_and_resumes_to_the_same_pngs(lenet, tmp_path):
    request = ImageRequest(("conv2",), "0-5", "channel-l2", ("plain",), batch_size=2, overrides={"steps": 4})

    def stop_in_second_batch(done, total):
        if done > 2.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(plan_images(lenet, request, Store(str(tmp_path / "i"))), progress=stop_in_second_batch)
    assert not [f for f in os.listdir(tmp_path / "i") if "tmp" in f]
    first = {f: os.stat(tmp_path / "i" / f).st_mtime_ns for f in _pngs(tmp_path / "i")}
    # the grid is drawn when the job's chunks are all stored (once, not after every chunk)
    assert sorted(first) == ["conv2/channel-l2-plain/0000.png", "conv2/channel-l2-plain/0001.png"]
    assert [r["filter"] for r in _records(tmp_path / "i")] == [0, 1]
    again = execute(plan_images(lenet, request, Store(str(tmp_path / "i"))))
    assert (again.written, again.skipped) == (4, 2)
    execute(plan_images(lenet, request, Store(str(tmp_path / "r"))))
    assert _files(tmp_path / "i") == _files(tmp_path / "r")
    for f in _pngs(tmp_path / "r"):
        assert filecmp.cmp(tmp_path / "i" / f, tmp_path / "r" / f, shallow=False), f
    for f, stamp in first.items():  # finished images were not rewritten
        if not f.endswith("grid.png"):
            assert os.stat(tmp_path / "i" / f).st_mtime_ns == stamp, f


def test_shards_partition_the_chunks_and_equal_one_run(lenet, tmp_path):
    request = ImageRequest(("conv1", "conv2"), "0-4", "channel-l2", ("plain",), batch_size=2, overrides={"steps": 3})
    one = execute(plan_images(lenet, request, Store(str(tmp_path / "one"))))
    parts = []
    for i in range(3):
        plan = plan_images(lenet, ImageRequest(**{**request.__dict__, "shard": f"{i}/3"}), Store(str(tmp_path / "s")))
        parts.append({(c.job.layer, u) for c in plan.mine for u in c.units})
        execute(plan)
    assert set.union(*parts) == {(l, f) for l in ("conv1", "conv2") for f in range(5)}
    assert sum(map(len, parts)) == 10 and all(parts)  # disjoint, none empty
    assert one.written == 10
    assert _files(tmp_path / "one") == _files(tmp_path / "s")
    for f in _pngs(tmp_path / "one"):
        assert filecmp.cmp(tmp_path / "one" / f, tmp_path / "s" / f, shallow=False), f


def test_shard_parsing(monkeypatch):
    assert parse_shard("2/3") == (2, 3)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard(None) == (1, 4)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(InputError, match="shard"):
            parse_shard(bad)


class _Dead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.copy_(torch.tensor([-10.0, 0.0]))
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


def test_dead_filter_recorded_and_crossed_out(tmp_path):
    s = run_maximize(_Dead(), ["relu"], "all", out_dir=str(tmp_path), steps=3, size=8, retries=0)
    dead, alive = s.records
    assert dead["dead"] and dead["status"] == "dead" and not alive["dead"] and s.dead == 1
    grid = np.asarray(Image.open(tmp_path / "relu/channel-l2-plain/grid.png"))
    assert tuple(grid[2, 2]) == (255, 0, 0)  # the dead tile's corner carries the red cross
    assert tuple(grid[2, 2 + 10]) != (255, 0, 0)
    saved = np.asarray(Image.open(tmp_path / dead["image"]))
    assert saved.shape == (8, 8, 3) and tuple(saved[0, 0]) != (255, 0, 0)  # the PNG itself is the noise


def test_a_module_and_a_spec_work_like_a_loaded_model(tmp_path):
    net = _Dead()
    a = run_maximize(net, ["conv"], "1", out_dir=str(tmp_path / "a"), steps=2, size=8)
    b = run_maximize(cnnvis.load_model(net, size=8), ["conv"], "1", out_dir=str(tmp_path / "b"), steps=2)
    assert (tmp_path / "a" / a.records[0]["image"]).read_bytes() == (tmp_path / "b" / b.records[0]["image"]).read_bytes()
    c = run_maximize("lenet-digits", ["conv1"], "0", out_dir=str(tmp_path / "c"), steps=2)
    assert c.written == 1


def test_distinct_files_for_layers_whose_names_sanitise_alike(tmp_path):
    net = torch.nn.Sequential()
    net.add_module("a b", torch.nn.Conv2d(3, 2, 3))
    net.add_module("a_b", torch.nn.Conv2d(2, 2, 3))
    s = run_maximize(net, ["a b", "a_b"], "0", out_dir=str(tmp_path), steps=2, size=12)
    paths = [r["image"] for r in s.records]
    assert len(set(paths)) == 2 and len({p.split("/")[0] for p in paths}) == 2
    assert all((tmp_path / p).is_file() for p in paths)


def test_local_workers_write_the_files_of_one_process(lenet, tmp_path):
    kw = dict(steps=6, batch_size=2, preset="robust", size=32)
    one = run_maximize(lenet, ["conv1", "conv2"], "0-4", out_dir=str(tmp_path / "one"), workers=1, **kw)
    two = run_maximize(lenet, ["conv1", "conv2"], "0-4", out_dir=str(tmp_path / "two"), workers=2, **kw)
    assert one.written == two.written == 10
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    for f in _pngs(tmp_path / "one"):
        assert filecmp.cmp(tmp_path / "one" / f, tmp_path / "two" / f, shallow=False), f

    def strip(records):
        return [{k: v for k, v in r.items() if k not in ("seconds",)} for r in records]

    assert strip(_records(tmp_path / "one")) == strip(_records(tmp_path / "two"))
    again = run_maximize(lenet, ["conv1", "conv2"], "0-4", out_dir=str(tmp_path / "two"), workers=2, **kw)
    assert (again.written, again.skipped) == (0, 10)


def test_one_queue_runs_several_plans_costliest_first(lenet, tmp_path):
    def plans(folder):
        store = Store(str(folder))
        kw = dict(steps=4, batch_size=2, preset="robust")
        return [plan_images(lenet, ImageRequest.of(["conv1"], "0-3", size=32, **kw), store),
                plan_images(lenet, ImageRequest.of(["conv2"], "0-5", size=48, **kw), store)]

    pooled = plans(tmp_path / "pool")
    # the costliest chunks first: conv2's three 48-px chunks before conv1's two 32-px ones
    assert [(p, k) for p, k, _n, _c in _pool_items(pooled)] == [(1, 0), (1, 1), (1, 2), (0, 0), (0, 1)]
    jobs, phases, ticks = [], [], []
    summaries = execute_pool(pooled, 2, on_job=lambda job, recs: jobs.append((job.layer, [r["filter"] for r in recs])),
                             on_plan=lambda p, s: phases.append((p, s.written)), progress=lambda d, t: ticks.append(d / t))
    # one line per job with all of its records, whichever worker made them; one per plan
    assert sorted((layer, sorted(f)) for layer, f in jobs) == [("conv1", [0, 1, 2, 3]), ("conv2", list(range(6)))]
    assert sorted(phases) == [(0, 4), (1, 6)]
    assert [[r["filter"] for r in s.records] for s in summaries] == [[0, 1, 2, 3], list(range(6))]
    assert ticks[-1] == 1.0 and all(0.0 <= t <= 1.0 for t in ticks)
    exported = json.loads((tmp_path / "pool" / MANIFEST).read_text())["records"]
    assert sorted((r["layer"], r["filter"]) for r in exported) == [("conv1", f) for f in range(4)] + [("conv2", f) for f in range(6)]
    # the files of one process running the plans one after the other
    for plan in plans(tmp_path / "one"):
        execute(plan)
    assert _pngs(tmp_path / "one") == _pngs(tmp_path / "pool")
    for f in _pngs(tmp_path / "one"):
        assert filecmp.cmp(tmp_path / "one" / f, tmp_path / "pool" / f, shallow=False), f
    assert execute_pool(plans(tmp_path / "pool"), 2)[1].skipped == 6  # nothing left to do


def test_work_alongside_the_pool_runs_here_at_one_thread_and_the_files_stay_those_of_one_process(lenet, tmp_path):
    def plans(folder):
        kw = dict(steps=4, batch_size=2, preset="robust", size=32)
        return [plan_images(lenet, ImageRequest.of(["conv1", "conv2"], "0-3", **kw), Store(str(folder)))]

    threads = torch.get_num_threads()
    seen = []

    def beside():  # runs while the first worker draws: this process, the last worker's share of threads
        seen.append((os.getpid(), torch.get_num_threads()))

    (pooled,) = execute_pool(plans(tmp_path / "pool"), 2, alongside=beside)
    assert seen == [(os.getpid(), max(1, threads // 2))] and torch.get_num_threads() == threads
    assert pooled.written == 8
    execute(plans(tmp_path / "one")[0])
    assert _pngs(tmp_path / "one") == _pngs(tmp_path / "pool")
    for f in _pngs(tmp_path / "one"):
        assert filecmp.cmp(tmp_path / "one" / f, tmp_path / "pool" / f, shallow=False), f

    # an error there is raised once every picture is stored: nothing of the pool's work is lost
    def fails():
        raise InputError("the image set is empty")

    with pytest.raises(InputError, match="image set is empty"):
        execute_pool(plans(tmp_path / "error"), 2, alongside=fails)
    assert _pngs(tmp_path / "error") == _pngs(tmp_path / "one")
    assert torch.get_num_threads() == threads
    # without a pool (one worker) it runs first, at this process's threads
    seen.clear()
    assert execute_pool(plans(tmp_path / "one"), 1, alongside=beside)[0].skipped == 8 and seen == [(os.getpid(), threads)]


def test_the_last_worker_takes_no_chunk_before_the_work_alongside_ends(lenet, tmp_path):
    import multiprocessing as mp
    import queue

    from cnnvis.atlas.runs import _pool_worker

    plans = [plan_images(lenet, ImageRequest.of(["conv1"], "0-1", steps=2, size=16, batch_size=2), Store(str(tmp_path)))]
    items = _pool_items(plans)
    ctx = mp.get_context("fork")
    tasks, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    tasks.put(0)
    tasks.put(None)
    worker = ctx.Process(target=_pool_worker, args=(plans, items, tasks, results, 1, go), daemon=True)
    worker.start()
    try:
        with pytest.raises(queue.Empty):
            results.get(timeout=1.0)  # waiting on go: no chunk taken, nothing reported
        go.set()
        messages = []
        while not messages or messages[-1][0] != "done":
            messages.append(results.get(timeout=60))
        assert messages[-1][1] == 0 and messages[-1][2].written == 2
    finally:
        worker.join(timeout=10)
        if worker.is_alive():
            worker.terminate()


def test_a_chunk_of_large_pictures_runs_in_smaller_batches_with_the_same_pixels(lenet, tmp_path, monkeypatch):
    kw = dict(steps=5, batch_size=4, preset="robust", size=32)
    whole = run_maximize(lenet, ["conv2"], "0-3", out_dir=str(tmp_path / "whole"), **kw)
    monkeypatch.setattr(cnnvis.atlas.runs, "cpu_batch", lambda size, units, copies=1: 1 if size == (32, 32) else units)
    split = run_maximize(lenet, ["conv2"], "0-3", out_dir=str(tmp_path / "split"), **kw)
    assert [r["batch_size"] for r in whole.records] == [4] * 4 and [r["batch_size"] for r in split.records] == [1] * 4
    # every picture has its own seeds: the same pixels, up to the rounding some CPUs' convolutions do
    # differently for another batch size (a last bit here and there)
    for f in _pngs(tmp_path / "whole"):
        a = np.asarray(Image.open(tmp_path / "whole" / f), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "split" / f), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() <= 2 and (a == b).mean() >= 0.9, f
    assert cnnvis.synthesis.units.cpu_batch((224, 224), 8) == 4 and cnnvis.synthesis.units.cpu_batch((96, 96), 8) == 8


def test_the_pools_progress_weighs_chunks_by_cost_and_ends_exactly_at_the_total():
    from types import SimpleNamespace

    from cnnvis.atlas.runs import _PoolTally

    job = SimpleNamespace()
    plan = SimpleNamespace(chunks=[SimpleNamespace(job=job)] * 3)
    seen = []
    tally = _PoolTally([plan], [(0, 0, 1, 3.0), (0, 1, 1, 5.0), (0, 2, 1, 7.0)], lambda d, t: seen.append((d, t)),
                       None, None)
    for n, f in [(0, 0.1), (2, 0.3), (1, 0.7), (0, 0.05), (2, 1.0), (0, 1.0), (1, 0.9)]:
        tally.report(n, f)
    assert seen[3] == seen[2]  # a late, smaller report of a chunk moves nothing back
    assert seen[-1][0] == pytest.approx(3 + 7 + 5 * 0.9) and seen[-1][1] == 15.0
    tally.report(1, 1.0)
    assert seen[-1] == (15.0, 15.0)  # all done: exactly the total, whatever the rounding


class _Fails(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x):
        if x.shape[0] > 1:  # the probe passes; the optimisation batches fail
            raise ValueError("exploded in a worker")
        return self.conv(x)


def test_an_error_in_a_worker_is_raised_here(tmp_path):
    with pytest.raises(cnnvis.ModelError, match="exploded in a worker"):
        run_maximize(_Fails(), ["conv"], "all", out_dir=str(tmp_path), steps=2, size=8, batch_size=1, workers=2)
