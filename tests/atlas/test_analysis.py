"""A gallery unit's analysis (cnnvis.atlas.analysis): what it tells the progress as it goes."""

import pytest

import cnnvis
from cnnvis.atlas.analysis import examine_units, PASS_SHARE, SCORES_SHARE
from cnnvis.atlas.examples import ImageSet
from cnnvis.atlas.store import Store


class _Reporter:
    examples_cost = 0.5

    def __init__(self):
        self.calls, self.lines = [], []

    def say(self, line):
        self.lines.append(line)

    def finish(self, amount, message, cost=None):
        self.calls.append((amount, message, cost))


def test_the_analysis_counts_its_whole_cost_and_the_pass_before_any_example(tmp_path):
    lm = cnnvis.load_model("lenet-digits")
    units = [("conv1", 0), ("conv1", 1), ("conv2", 3)]
    reporter = _Reporter()
    out, natural, done = examine_units(lm, Store(str(tmp_path)), ImageSet(lm), units, "fp", 2, reporter)
    assert sorted(out) == ["conv1/0", "conv1/1", "conv2/3"] and natural is None and done == units
    # the pass and the scores' shares first (no unit done yet), then one call per layer with its units
    assert reporter.calls[0] == (0, "", pytest.approx(PASS_SHARE * 0.5 * 3))
    assert reporter.calls[1] == (0, "", pytest.approx(SCORES_SHARE * 0.5 * 3))
    assert [c[:2] for c in reporter.calls[2:]] == [(2, "examples of 2 units of conv1 finished"),
                                                    (1, "examples of 1 unit of conv2 finished")]
    # all of it: the time left reaches zero exactly when the last layer's examples are done
    assert sum(c[0] for c in reporter.calls) == 3
    assert sum(c[2] for c in reporter.calls) == pytest.approx(0.5 * 3)
    assert reporter.lines[0].startswith("dataset pass over 320 images for 2 layers")
