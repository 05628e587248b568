"""The house: wings without circles, settings values in place of long parameter lists, former paths kept."""

import importlib
import os
import sys

import pytest
import torch

import cnnvis
from cnnvis.core.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import house  # noqa: E402  (the benchmark that measures the house, from the source)

FORMER = {"errors": "core.errors", "io": "core.io", "models": "model.loading", "hooks": "model.hooks",
          "layers": "model.layers", "probing": "model.probing", "filters": "inspection.filters",
          "stats": "inspection.stats", "gradients": "attribution.gradients", "receptive": "attribution.receptive",
          "objectives": "synthesis.objectives", "techniques": "synthesis.techniques", "quality": "synthesis.quality",
          "store": "atlas.store", "runs": "atlas.runs", "galleries": "atlas.galleries", "zoo.lenet": "model.zoo.lenet"}


@pytest.mark.parametrize("former", sorted(FORMER))
def test_a_former_module_path_is_the_module_that_holds_it_now(former):
    assert importlib.import_module(f"cnnvis.{former}") is importlib.import_module(f"cnnvis.{FORMER[former]}")


def test_former_synthesis_names_still_read():
    from cnnvis.synthesis import DIVERSITY_KEEP, field_settings, make_settings, maximize, synthesize
    from cnnvis.synthesis.settings import make_settings as home

    assert make_settings is home and callable(field_settings) and callable(synthesize) and callable(maximize)
    assert 0 < DIVERSITY_KEEP < 1
    with pytest.raises(AttributeError):
        cnnvis.synthesis.no_such_name


def test_every_public_name_resolves():
    for name in cnnvis.__all__:
        assert getattr(cnnvis, name) is not None, name


def test_the_house_has_no_circles_no_arrow_up_and_narrow_library_signatures():
    figures = house.measure(ROOT)
    assert figures["cycles"] == [] and figures["imports_back_up"] == []
    assert figures["library_functions_over_10_parameters"] == []
    assert figures["in_function_imports"] <= 20
    assert figures["modules_over_800_lines"] == []
    assert {w for w in figures["wings"] if w.startswith("cnnvis/")} == {
        "cnnvis/core", "cnnvis/model", "cnnvis/inspection", "cnnvis/attribution", "cnnvis/synthesis", "cnnvis/atlas"}


def test_maximize_takes_a_variant_or_its_fields():
    from cnnvis.synthesis.units import Variant

    lm = cnnvis.load_model("lenet-digits")
    a = cnnvis.maximize(lm, "conv1", "0", steps=2, diversity=2, negative=True)
    b = cnnvis.maximize(lm, "conv1", "0", steps=2, variant=Variant(negative=True, diversity=2))
    assert torch.equal(a.images, b.images) and [r["variant"] for r in a.records] == [r["variant"] for r in b.records]
    assert a.records[0]["negative"] is True and len(a.records) == 2
    with pytest.raises(InputError, match="variant"):
        cnnvis.maximize(lm, "conv1", "0", steps=2, variant=Variant(), diversity=2)


def test_saliency_takes_method_options_or_their_fields():
    from cnnvis.attribution.gradients import MethodOptions

    lm, x = cnnvis.load_model("lenet-digits"), torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0))
    a = cnnvis.saliency(lm, x, method="smoothgrad", samples=3, noise=0.2, seed=1)
    b = cnnvis.saliency(lm, x, method="smoothgrad", options=MethodOptions(samples=3, noise=0.2, seed=1))
    c = cnnvis.saliency(lm, x, method="smoothgrad", samples=3, noise=0.2, seed=2)
    assert torch.equal(a.attribution, b.attribution) and not torch.equal(a.attribution, c.attribution)
    with pytest.raises(TypeError, match="sampels"):
        cnnvis.saliency(lm, x, sampels=3)


def test_technique_options_are_checked_and_recorded_as_before():
    lm = cnnvis.load_model("lenet-digits")
    photo = torch.zeros(1, 32, 32)
    photo[:, 8:24, 14:18] = 1.0
    r = cnnvis.accentuate(lm, photo, "conv2", 3, steps=2, jitter=2)
    assert list(r.record["settings"]) == ["objective", "layer_reg", "reg_weight", "param", "steps", "lr", "jitter",
                                          "scale", "rotate"]
    assert r.record["settings"]["steps"] == 2 and r.record["settings"]["jitter"] == 2
    assert cnnvis.caricature(lm, photo, "conv2", steps=2).record["settings"]["lr"] == 0.05
    with pytest.raises(TypeError, match="stesp"):
        cnnvis.accentuate(lm, photo, "conv2", 3, stesp=2)
    with pytest.raises(TypeError, match="reg_weight"):
        cnnvis.caricature(lm, photo, "conv2", reg_weight=2)


def test_run_maximize_takes_a_request_or_its_fields(tmp_path):
    from cnnvis.atlas.runs import ImageRequest, run_maximize

    lm = cnnvis.load_model("lenet-digits")
    a = run_maximize(lm, ["conv1"], "0-1", out_dir=str(tmp_path / "a"), steps=2, seed=3, preset="plain")
    request = ImageRequest(("conv1",), "0-1", seed=3, overrides={"steps": 2})
    b = run_maximize(lm, ["conv1"], "0-1", out_dir=str(tmp_path / "b"), request=request)
    assert [r["fingerprint"] for r in a.records] == [r["fingerprint"] for r in b.records] and a.written == 2
    with pytest.raises(InputError, match="steps"):
        run_maximize(lm, ["conv1"], "0", out_dir=str(tmp_path / "c"), request=request, steps=3)


def test_one_optimisation_loop():
    """Every picture climbs in cnnvis/synthesis/ascent.py: no other library module makes an optimiser or
    takes a gradient step of its own (the zoo's training script aside)."""
    found = []
    for module, path in house.modules(ROOT).items():
        text = open(path, encoding="utf-8").read()
        if "torch.optim." in text and module not in ("cnnvis.synthesis.ascent", "cnnvis.model.zoo.train_lenet"):
            found.append(module)
    assert found == []
