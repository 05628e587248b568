"""The record store: finished records, content fingerprints, concurrent writers, files as users expect."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import cnnvis
from cnnvis.core.errors import InputError
from cnnvis.core.files import TEMP_SUFFIX, _HOST, atomic_write, remove_stale_temps
from cnnvis.gallery.site import run_maximize
from cnnvis.atlas.store import DATABASE, MANIFEST, Store, files_fingerprint, model_fingerprint

PY = sys.executable


def _rec(layer, f, variant="channel-l2-plain", fp="x", image=None):
    return {"layer": layer, "filter": f, "variant": variant, "fingerprint": fp, "image": image}


def test_finished_needs_the_key_the_fingerprint_and_the_image(tmp_path):
    store = Store(str(tmp_path))
    rel = store.save_image(torch.zeros(1, 4, 4), "conv1", 2, "channel-l2-plain")
    store.commit([_rec("conv1", 2, image=rel, fp="abc")])
    again = Store(str(tmp_path))
    assert again.finished(("conv1", 2, "channel-l2-plain"), "abc")
    assert not again.finished(("conv1", 2, "channel-l2-plain"), "other")
    assert not again.finished(("conv1", 2, "channel-mean-plain"), "abc")
    assert not Store(str(tmp_path), force=True).finished(("conv1", 2, "channel-l2-plain"), "abc")
    os.remove(tmp_path / rel)
    assert not Store(str(tmp_path)).finished(("conv1", 2, "channel-l2-plain"), "abc")


_WRITER = textwrap.dedent("""
    import os, sys, time
    from cnnvis.atlas.store import Store
    folder, layer, filt, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

    def hold(sections):  # runs inside the writer's transaction, before it commits
        if pause != "-":
            open(pause + ".reached", "w").close()
            deadline = time.time() + 30
            while os.path.exists(pause) and time.time() < deadline:
                time.sleep(0.02)

    Store(folder).commit([{"layer": layer, "filter": filt, "variant": "v", "fingerprint": "f", "image": None}],
                         update=hold, export=True)
""")


def _wait_for(path, timeout=30):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_concurrent_writers_never_lose_a_record(tmp_path):
    """Writer A pauses inside its transaction; writer B commits meanwhile (it waits, and loses nothing)."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    folder = tmp_path / "out"
    Store(str(folder)).commit([_rec("conv1", 0)])
    pause = tmp_path / "pause"
    pause.touch()
    a = subprocess.Popen([PY, str(script), str(folder), "conv1", "1", str(pause)])
    _wait_for(str(pause) + ".reached")
    b = subprocess.Popen([PY, str(script), str(folder), "conv2", "7", "-"])
    time.sleep(1.0)  # B gets as far as it can while A holds its stale copy
    pause.unlink()
    assert a.wait(60) == 0 and b.wait(60) == 0
    keys = {(r["layer"], r["filter"]) for r in json.loads((folder / MANIFEST).read_text())["records"]}
    assert keys == {("conv1", 0), ("conv1", 1), ("conv2", 7)}
    assert {(k[0], k[1]) for k in Store(str(folder)).records()} == keys


_PIPELINE = textwrap.dedent("""
    import os, sys, time
    import cnnvis
    from cnnvis import store as store_module
    role, folder, pause = sys.argv[1], sys.argv[2], sys.argv[3]
    original = store_module.Store.commit

    def commit(self, records=(), *, update=None, after=None, export=False):
        if role == "maximize" and records:  # about to take the lock with new records
            open(folder + ".maximize-committing", "w").close()

        def held(manifest):
            if update is not None:
                update(manifest)
            if pause != "-" and manifest.get("gallery"):  # the gallery's last commit, before it renders
                open(pause + ".reached", "w").close()
                deadline = time.time() + 60
                while os.path.exists(pause) and time.time() < deadline:
                    time.sleep(0.02)
        return original(self, records, update=held, after=after, export=export)

    store_module.Store.commit = commit
    if role == "gallery":
        cnnvis.build_gallery("lenet-digits", folder, layers=["conv1"], filters="0-1", steps=2, preset="plain")
    else:
        cnnvis.run_maximize("lenet-digits", ["conv1"], "4-5", out_dir=folder, steps=2)
""")


@pytest.mark.slow
def test_a_maximize_beside_a_gallery_ends_on_the_index_page(tmp_path):
    script = tmp_path / "pipeline.py"
    script.write_text(_PIPELINE)
    folder = tmp_path / "g"
    pause = tmp_path / "pause"
    pause.touch()
    gallery = subprocess.Popen([PY, str(script), "gallery", str(folder), str(pause)])
    _wait_for(str(pause) + ".reached", timeout=120)
    maximize = subprocess.Popen([PY, str(script), "maximize", str(folder), "-"])
    _wait_for(str(folder) + ".maximize-committing", timeout=120)
    time.sleep(1.0)  # the maximize now waits for the lock the gallery holds (or, without one, writes)
    pause.unlink()
    assert gallery.wait(120) == 0 and maximize.wait(120) == 0
    records = json.loads((folder / MANIFEST).read_text())["records"]
    assert {r["filter"] for r in records if r["layer"] == "conv1"} == {0, 1, 4, 5}
    layer_page = (folder / "layers" / "conv1.html").read_text()
    for f in (0, 1, 4, 5):
        assert f'href="../units/conv1/{f}.html"' in layer_page
        assert (folder / "units" / "conv1" / f"{f}.html").is_file()


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


def test_fingerprints_follow_weight_content_not_file_names(tmp_path, monkeypatch):
    (tmp_path / "smallnet.py").write_text(textwrap.dedent("""
        import torch
        class Small(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4, 3)
            def forward(self, x):
                return self.conv(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(Small().state_dict(), weights)
    out = str(tmp_path / "out")

    def run(path):
        lm = cnnvis.load_model("smallnet:Small", str(path), size=12)
        return run_maximize(lm, ["conv"], "0-1", out_dir=out, steps=2)

    assert run(weights).written == 2
    assert run(weights).skipped == 2
    copy = tmp_path / "elsewhere.pt"
    shutil.copy(weights, copy)
    assert run(copy).skipped == 2  # same content at a new path: reused
    torch.manual_seed(1)
    torch.save(Small().state_dict(), weights)  # replaced in place: recomputed
    again = run(weights)
    assert again.written == 2 and again.skipped == 0


def test_model_fingerprint_sees_buffers_and_architecture():
    a, b = Small(), Small()
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.conv.weight[0, 0, 0, 0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)
    c = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2))
    c[0].load_state_dict(a.conv.state_dict())
    assert model_fingerprint(torch.nn.Sequential(a.conv)) != model_fingerprint(c)


def test_files_fingerprint_follows_content(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(b"one")
    first = files_fingerprint([str(p)])
    p.write_bytes(b"two")
    assert files_fingerprint([str(p)]) != first
    p.write_bytes(b"one")
    assert files_fingerprint([str(p)]) == first


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run_maximize("lenet-digits", ["conv1"], "0", out_dir=str(tmp_path / "o"), steps=1)
        with atomic_write(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    for root, dirs, files in os.walk(tmp_path / "o"):
        for d in dirs:
            assert oct(os.stat(os.path.join(root, d)).st_mode & 0o777) == "0o755", d
        for f in files:
            assert oct(os.stat(os.path.join(root, f)).st_mode & 0o777) == "0o644", f
    assert oct(os.stat(tmp_path / "plain.txt").st_mode & 0o777) == "0o644"


def test_leftover_temp_files_of_dead_processes_are_removed(tmp_path):
    dead_pid = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    leftover = tmp_path / "conv1" / f".0001.png.{_HOST}.{dead_pid}.abcd{TEMP_SUFFIX}"
    live = tmp_path / f".manifest.json.{_HOST}.{os.getpid()}.abcd{TEMP_SUFFIX}"
    foreign_old = tmp_path / f".x.png.otherhost.1.abcd{TEMP_SUFFIX}"
    for p in (leftover, live, foreign_old):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    os.utime(foreign_old, (time.time() - 7200, time.time() - 7200))
    unrelated = tmp_path / "keep.tmp"
    unrelated.write_bytes(b"mine")
    run_maximize("lenet-digits", ["conv1"], "0", out_dir=str(tmp_path), steps=1)
    assert not leftover.exists() and not foreign_old.exists()
    assert live.exists() and unrelated.exists()  # a live writer's file and the user's own file stay
    assert remove_stale_temps(tmp_path) == 0


def test_damaged_manifest_is_named_and_force_rebuilds_it(tmp_path):
    """A folder of the version before the database (manifest.json only) whose manifest is damaged."""
    run_maximize("lenet-digits", ["conv1"], "0", out_dir=str(tmp_path), steps=1)
    os.remove(tmp_path / DATABASE)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="manifest.json is damaged.*--force"):
        run_maximize("lenet-digits", ["conv1"], "0", out_dir=str(tmp_path), steps=1)
    s = run_maximize("lenet-digits", ["conv1"], "0", out_dir=str(tmp_path), steps=1, force=True)
    assert s.written == 1 and (tmp_path / "manifest.json.damaged").read_text() == "{not json"
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["records"][0].pop("layer")
    os.remove(tmp_path / DATABASE)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="damaged record"):
        run_maximize("lenet-digits", ["conv1"], "0", out_dir=str(tmp_path), steps=1)


def test_the_renderer_imports_without_torch_and_cnnvis_without_the_renderer():
    code = ("import sys, cnnvis.gallery.render; assert 'torch' not in sys.modules, 'torch imported'; "
            "import cnnvis; assert 'torch' not in sys.modules")
    subprocess.run([PY, "-c", code], check=True)
    code = "import sys, cnnvis; cnnvis.load_model; assert 'cnnvis.gallery.render' not in sys.modules"
    subprocess.run([PY, "-c", code], check=True)
