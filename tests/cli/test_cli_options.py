import io

import click
import pytest

from cnnvis.cli.options import FiniteFloat, finite_float, progress_bar


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_finite_float_refuses_non_finite(text):
    with pytest.raises(click.BadParameter, match="not a finite number"):
        finite_float().convert(text, None, None)


def test_finite_float_checks_the_range_after():
    lr = finite_float(min=0, min_open=True)
    assert isinstance(lr, FiniteFloat) and lr.convert("0.05", None, None) == 0.05
    with pytest.raises(click.BadParameter, match="not in the range x>0"):
        lr.convert("0", None, None)
    assert finite_float(0, 1).convert("1", None, None) == 1.0


def test_progress_bar_only_on_a_terminal(monkeypatch):
    assert progress_bar(10, quiet=True, label="x") is None
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: no bar, no label line
    assert progress_bar(10, quiet=False, label="x") is None

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    assert progress_bar(10, quiet=False, label="x") is not None
