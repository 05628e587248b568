"""Reading inputs safely: special files, decompression bombs, damaged files, damaged JSON."""

import os
import socket
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnvis.core.errors import BadImageError, InputError
from cnnvis.core.io import check_regular_file, find_images, load_image, read_json


def _bomb(path, side):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


@pytest.fixture
def files(tmp_path):
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    return tmp_path


def _in_thread(fn, *args):
    """Run ``fn`` with a deadline, so a regression that opens a FIFO fails instead of hanging the suite."""
    out = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001  handed to the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "blocked on a special file"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_special_files_are_refused_before_opening(files):
    with pytest.raises(BadImageError, match=r"pipe.png is a FIFO \(named pipe\), not a regular file; remove it"):
        _in_thread(load_image, files / "pipe.png")
    with pytest.raises(BadImageError, match="is a device file"):
        load_image(os.devnull)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(files / "s.png"))
        with pytest.raises(BadImageError, match="is a socket"):
            load_image(files / "s.png")
    finally:
        sock.close()
    with pytest.raises(BadImageError, match="link to a file that does not exist"):
        load_image(files / "dangling.png")
    with pytest.raises(InputError, match="is a folder"):
        load_image(files)
    with pytest.raises(InputError, match="does not exist") as info:
        load_image(files / "missing.png")
    assert not isinstance(info.value, BadImageError)
    assert check_regular_file(files / "ok.png").st_size > 0


def test_find_images_refuses_or_skips_special_files(files):
    with pytest.raises(BadImageError, match="dangling.png is a link"):  # the first in sorted order
        _in_thread(find_images, [files])
    os.remove(files / "dangling.png")
    with pytest.raises(BadImageError, match="pipe.png is a FIFO"):
        _in_thread(find_images, [files])
    os.symlink(files / "gone.png", files / "dangling.png")
    skipped = []
    found = _in_thread(lambda: find_images([files], skip_bad=True, skipped=skipped))
    names = sorted(os.path.basename(p) for p in found)
    assert names == ["junk.png", "ok.png"]  # junk is a regular file: load_image decides about it
    assert sorted(os.path.basename(p) for p, _ in skipped) == ["dangling.png", "pipe.png"]
    assert all(why.startswith(path) for path, why in skipped)
    with pytest.raises(BadImageError, match="FIFO"):
        find_images([files / "pipe.png"])


def test_decompression_bombs_are_refused(tmp_path, recwarn):
    _bomb(tmp_path / "warn.png", 10_000)  # over Image.MAX_IMAGE_PIXELS: PIL only warns
    _bomb(tmp_path / "error.png", 20_000)  # over twice the limit: PIL refuses
    for name, pixels in (("warn.png", "100,000,000"), ("error.png", "400,000,000")):
        with pytest.raises(BadImageError, match=f"{name} is too large to open safely \\({pixels} pixels") as info:
            load_image(tmp_path / name)
        assert "decompression bomb" in str(info.value)
    assert not [w for w in recwarn if "DecompressionBomb" in w.category.__name__]


def test_damaged_images_name_the_file(files):
    with pytest.raises(BadImageError, match=r"junk.png is not a readable image \(UnidentifiedImageError\)") as info:
        load_image(files / "junk.png")
    assert info.value.note == f"{files / 'junk.png'} is not a readable image (UnidentifiedImageError)"
    assert str(info.value.with_advice("use --skip-bad")).endswith("; use --skip-bad")
    truncated = files / "truncated.png"
    truncated.write_bytes((files / "ok.png").read_bytes()[:40])
    with pytest.raises(BadImageError, match="truncated.png is not a readable image"):
        load_image(truncated)


def test_sixteen_bit_images_load_as_they_are(tmp_path):
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert im.mode.startswith("I") and np.asarray(im).max() == 65535


def test_read_json_names_a_damaged_file(tmp_path):
    path = tmp_path / "meta.json"
    assert read_json(path, default={}) == {}
    path.write_text("{")
    with pytest.raises(InputError, match="meta.json is not valid JSON") as info:
        read_json(path)
    assert "--force" not in str(info.value)  # the advice must work wherever read_json is used
    assert read_json(path, default={"x": 1}, damaged="default") == {"x": 1}
