"""Turning images into what a model sees: every PIL mode, bit depths, and the normalisation values."""

import doctest

import numpy as np
import pytest
import torch
from PIL import Image

import cnnvis.model.preprocess
from cnnvis.core.errors import InputError
from cnnvis.model.preprocess import Preprocessing, parse_floats, scale_bit_depth

GREY = Preprocessing(size=(8, 8), channels=1, mean=(0.0,), std=(1.0,))
RGB = Preprocessing(size=(8, 8), channels=3)
OWN_SIZE = Preprocessing(size=None, channels=3)


def test_docstring_examples():
    result = doctest.testmod(cnnvis.model.preprocess)
    assert result.attempted > 0 and result.failed == 0


def _ramp16(top=0.5):
    return (np.linspace(0, top, 64).reshape(8, 8) * 65535).round().astype(np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_images_are_scaled_by_bit_depth(tmp_path, fmt):
    a = _ramp16(0.5)
    path = tmp_path / f"deep.{fmt.lower()}"
    Image.fromarray(a).save(path, format=fmt)
    with Image.open(path) as im:
        im.load()
        assert im.mode.startswith("I;16")
        expected = a.astype(np.float64) / 65535
        for pre in (GREY, RGB):
            x = pre.prepare(im)
            assert x.shape == (pre.channels, 8, 8)
            assert np.allclose(x.numpy(), expected[None], atol=1e-6)  # same size: no interpolation


def test_big_endian_and_32_bit_integer_and_float_modes():
    a = _ramp16(1.0)
    big = Image.frombytes("I;16B", (8, 8), a.astype(">u2").tobytes())
    assert np.allclose(GREY.prepare(big)[0].numpy(), a / 65535, atol=1e-6)
    as_i = Image.fromarray(a.astype(np.int32))  # mode I, 16-bit values (how older Pillow opens 16-bit PNGs)
    assert as_i.mode == "I" and np.allclose(GREY.prepare(as_i)[0].numpy(), a / 65535, atol=1e-6)
    wide = Image.fromarray(np.array([[0, 2**31 - 1]], dtype=np.int32))
    assert np.asarray(scale_bit_depth(wide)).tolist() == [[0.0, 1.0]]
    negative = Image.fromarray(np.array([[-5, 100]], dtype=np.int32))
    assert np.asarray(scale_bit_depth(negative))[0, 0] == 0.0
    floats = Image.fromarray(np.array([[-1.0, 0.25, 2.0, np.nan]], dtype=np.float32))
    assert np.asarray(scale_bit_depth(floats)).tolist() == [[0.0, 0.25, 1.0, 0.0]]


def test_sixteen_bit_resized_stays_in_range():
    im = Image.fromarray(_ramp16(1.0))
    x = Preprocessing(size=(5, 3), channels=3, resize=6).prepare(im)
    assert x.shape == (3, 5, 3) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(x.mean()) == pytest.approx(0.5, abs=0.1)
    assert OWN_SIZE.prepare(im).shape == (3, 8, 8)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1", "L", "HSV"])
def test_eight_bit_modes_still_work(mode):
    rng = np.random.default_rng(0)
    im = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).convert(mode)
    for pre in (GREY, RGB):
        x = pre.prepare(im)
        assert x.shape == (pre.channels, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_transparent_pixels_become_white_without_warnings(recwarn):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0] * 256)
    im.info["transparency"] = bytes([0] + [255] * 255)  # transparency expressed in bytes: PIL warns on convert
    x = RGB.prepare(im)
    assert float(x.min()) == 1.0
    assert not recwarn.list


def test_unconvertible_mode_is_an_input_error():
    with pytest.raises(InputError, match="cannot convert a LAB image to L"):
        GREY.prepare(Image.new("LAB", (4, 4)))


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0.5,nan,0.5", "1e999"])
def test_non_finite_numbers_are_refused(text):
    with pytest.raises(InputError, match="--std must be finite numbers"):
        parse_floats(text, "--std")


def test_non_finite_normalisation_is_refused():
    with pytest.raises(InputError, match="--mean values must be finite"):
        Preprocessing(channels=1, mean=(float("inf"),), std=(1.0,))
    with pytest.raises(InputError, match="--std values must be finite"):
        Preprocessing(channels=1, mean=(0.0,), std=(float("nan"),))
    assert parse_floats("0.5, 0.25", "--mean") == (0.5, 0.25)


def test_images_are_prepared_exactly_as_torchvisions_functions_would_without_importing_it():
    """resize (both sizes, every filter), centre crop (smaller and larger than the image) and to_tensor
    give torchvision's pixels; preparing an image leaves torchvision unimported (its compiled
    operators cost a process about 170 MB)."""
    import itertools
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    from cnnvis.model.preprocess import _center_crop, _resize, _to_tensor, PIL_FILTERS

    rng = np.random.default_rng(0)
    for mode, (h, w), interp in itertools.product(["RGB", "L", "F"], [(37, 53), (300, 451), (13, 9)], sorted(PIL_FILTERS)):
        a = rng.random((h, w, 3) if mode == "RGB" else (h, w))
        im = Image.fromarray(a.astype(np.float32), "F") if mode == "F" else Image.fromarray((a * 255).astype(np.uint8), mode)
        for size in ([224], [32], [20, 30]):
            ref, got = TF.resize(im, size, interpolation=InterpolationMode(interp)), _resize(im, size, interp)
            assert ref.size == got.size and np.array_equal(np.asarray(ref), np.asarray(got)), (mode, h, w, interp, size)
            for crop in ([16, 40], [500, 20]):
                r, g = TF.center_crop(ref, crop), _center_crop(got, crop)
                assert r.size == g.size and np.array_equal(np.asarray(r), np.asarray(g)), (mode, crop)
                t, u = TF.to_tensor(r), _to_tensor(g)
                assert t.dtype == u.dtype and torch.equal(t, u)
    code = ("import sys; from PIL import Image; from cnnvis.model.preprocess import Preprocessing; "
            "Preprocessing(size=(24, 24), resize=32, interpolation='bicubic').prepare(Image.new('RGB', (50, 40))); "
            "from cnnvis.model.loading import load_model; load_model('lenet-digits'); "
            "from cnnvis.synthesis.units import library_versions; library_versions(); "
            "print('torchvision' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
