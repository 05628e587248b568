"""The Machine Interpretability Score (cnnvis.atlas.scores): its arithmetic, its tasks, and units whose
answer is known (a colour detector, a unit that responds to nothing)."""

import math

import pytest
import torch
from torch import nn

import cnnvis
from cnnvis.atlas import scores as S
from cnnvis.atlas.examples import collect_examples
from cnnvis.atlas.similarity import default_similarity, Similarity
from cnnvis.core.errors import InputError


def mean_colour() -> nn.Module:
    """A similarity model whose features are an image's mean colour (the input of its last linear layer)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))


def colour_model() -> nn.Module:
    """Unit 0 detects red (r - (g + b) / 2); unit 1 responds to nothing (weights 0, bias -1, then a ReLU)."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, 0] = torch.tensor([1.0, -0.5, -0.5])
        conv.bias.copy_(torch.tensor([0.0, -1.0]))
    return nn.Sequential(conv, nn.ReLU())


def colour_images(n: int = 60, seed: int = 0) -> torch.Tensor:
    """``n`` 16 x 16 images, each one random colour with a little noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(n, 3, 1, 1, generator=g)
    return (colours + 0.03 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1)


def reference_mis(activation, features, tasks, k, alpha):
    """The score written out task by task as the paper states it (no tensors shared with the library)."""
    def s(q, refs):
        return sum(sum(a * b for a, b in zip(features[q], features[r])) for r in refs) / len(refs)

    total = 0.0
    for top, bottom in zip(tasks.top.tolist(), tasks.bottom.tolist()):
        q_plus, e_plus, q_minus, e_minus = top[k], top[:k], bottom[k], bottom[:k]
        d = (s(q_plus, e_plus) - s(q_plus, e_minus)) - (s(q_minus, e_plus) - s(q_minus, e_minus))
        total += 1 / (1 + math.exp(-d / alpha))
    return total / len(tasks.top)


def test_natural_score_is_the_papers_formula_task_by_task():
    g = torch.Generator().manual_seed(3)
    activation = torch.randn(50, generator=g)
    features = torch.nn.functional.normalize(torch.randn(50, 6, generator=g), dim=1)
    settings = S.ScoreSettings(k=4, tasks=7, quantile=0.3, alpha=0.2)
    tasks = S.make_tasks(activation, settings, torch.Generator().manual_seed(0))
    got = S.natural_score(tasks, features, settings)
    assert got.mis == pytest.approx(reference_mis(activation, features.tolist(), tasks, 4, 0.2), abs=1e-6)
    assert got.tasks == 7


def test_tasks_draw_references_and_queries_from_the_right_pools():
    activation = torch.randn(100, generator=torch.Generator().manual_seed(1))
    settings = S.ScoreSettings()
    tasks = S.make_tasks(activation, settings, torch.Generator().manual_seed(0))
    k = settings.k
    ranked = torch.argsort(activation, descending=True).tolist()
    strong, weak = set(ranked[:20]), set(ranked[-20:])  # quantile 0.2 of 100 images
    assert tasks.top.shape == tasks.bottom.shape == (20, k + 1)
    for top, bottom in zip(tasks.top.tolist(), tasks.bottom.tolist()):
        assert set(top) <= strong and set(bottom) <= weak
        assert len(set(top)) == len(set(bottom)) == k + 1  # the query is none of its side's references
        values_top, values_bottom = activation[top].tolist(), activation[bottom].tolist()
        assert values_top == sorted(values_top, reverse=True)  # the query (last) is the least extreme
        assert values_bottom == sorted(values_bottom)


def test_too_few_images_names_how_many_are_needed():
    with pytest.raises(InputError, match=r"19 usable images; the score needs at least 20 \(2K\+2 with K=9\)"):
        S.make_tasks(torch.arange(19.0), S.ScoreSettings(), torch.Generator())
    nan = torch.cat([torch.arange(20.0), torch.tensor([float("nan")])])
    with pytest.raises(InputError, match="20 usable images; the score needs at least 22"):
        S.make_tasks(nan, S.ScoreSettings(k=10), torch.Generator())
    S.make_tasks(torch.arange(20.0), S.ScoreSettings(), torch.Generator())  # exactly 2K+2 is enough


def _colour_scores(seed=0, pictures=None, settings=None):
    lm = cnnvis.load_model(colour_model())
    ex = collect_examples(lm, ["0"], colour_images(), k=1)["0"]
    return S.score_layer(ex, [0, 1], Similarity(mean_colour()), settings or S.ScoreSettings(seed=seed),
                         pictures=pictures), ex


def test_a_colour_detector_is_interpretable_with_natural_and_synthetic_references():
    red, cyan = torch.zeros(3, 16, 16), torch.zeros(3, 16, 16)
    red[0], cyan[1], cyan[2] = 1.0, 1.0, 1.0
    scored, _ = _colour_scores(pictures={0: {"positive": [red], "negative": [cyan]}})
    unit = scored[0]
    assert unit.natural.mis > 0.95 and unit.natural.accuracy == 1.0
    assert unit.synthetic.mis > 0.95 and unit.synthetic.references == {"positive": 1, "negative": 1}
    # pictures the wrong way round explain it the wrong way round
    flipped, _ = _colour_scores(pictures={0: {"positive": [cyan], "negative": [red]}})
    assert flipped[0].synthetic.mis < 0.05


def test_a_unit_that_responds_to_nothing_is_undefined_with_the_reason():
    scored, _ = _colour_scores(pictures={})
    dead = scored[1]
    assert dead.natural.mis is None and dead.synthetic.mis is None
    assert "responds to nothing in the image set" in dead.natural.reason
    assert "the unit's response is 0 on every one of the 60 images" in dead.natural.reason
    assert scored[0].synthetic.mis is None and "no positive picture" in scored[0].synthetic.reason
    no_negative, _ = _colour_scores(pictures={0: {"positive": [torch.rand(3, 16, 16)]}})
    assert "no negative picture" in no_negative[0].synthetic.reason


def test_shuffling_the_references_labels_brings_the_score_to_chance():
    _, ex = _colour_scores()
    sim = Similarity(mean_colour())
    features = sim.embed(ex.images, side=32)
    settings = S.ScoreSettings()
    right = S.natural_score(S.make_tasks(ex.strongest[0], settings, torch.Generator().manual_seed(0)), features, settings)
    shuffled = []
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        activation = ex.strongest[0][torch.randperm(len(ex.images), generator=g)]  # labels no longer fit the images
        shuffled.append(S.natural_score(S.make_tasks(activation, settings, g), features, settings).mis)
    assert right.mis > 0.95
    assert abs(sum(shuffled) / len(shuffled) - 0.5) < 0.05


def test_the_same_seed_gives_the_same_score():
    a, _ = _colour_scores(seed=4)
    b, _ = _colour_scores(seed=4)
    assert a[0].to_dict() == b[0].to_dict()
    settings = S.ScoreSettings(seed=5)
    lm = cnnvis.load_model(colour_model())
    ex = collect_examples(lm, ["0"], colour_images(), k=1)["0"]
    g4 = torch.Generator().manual_seed(S.unit_seed(4, "0", "mis", 0))
    g5 = torch.Generator().manual_seed(S.unit_seed(settings.seed, "0", "mis", 0))
    assert not torch.equal(S.make_tasks(ex.strongest[0], settings, g4).top, S.make_tasks(ex.strongest[0], settings, g5).top)


def test_interpretability_api_reports_both_scores_and_layer_medians(tmp_path):
    lm = cnnvis.load_model("lenet-digits")
    result = cnnvis.interpretability(lm, ["conv1"], "0-2", similarity=mean_colour(), pictures=str(tmp_path),
                                     settings=cnnvis.ScoreSettings(tasks=5))
    data = result.to_dict()
    assert data["method"] == {"name": "MIS", "paper": S.PAPER, "k": 9, "tasks": 5, "quantile": 0.2, "alpha": 0.16,
                              "seed": 0}
    assert data["images"] == 320 and data["pictures"]["made"] == 6  # a positive and a negative picture per unit
    assert [u["filter"] for u in data["units"]] == [0, 1, 2]
    for u in data["units"]:
        for kind in ("natural", "synthetic"):
            assert (u[kind]["mis"] is None) == (u[kind]["reason"] is not None)
    naturals = [u["natural"]["mis"] for u in data["units"] if u["natural"]["mis"] is not None]
    assert data["layers"]["conv1"]["natural_median"] == pytest.approx(sorted(naturals)[len(naturals) // 2])
    again = cnnvis.interpretability(lm, ["conv1"], "0-2", similarity=mean_colour(), pictures=str(tmp_path),
                                    settings=cnnvis.ScoreSettings(tasks=5))
    assert again.pictures["made"] == 0 and again.to_dict()["units"] == data["units"]  # reused, same scores


def test_the_similarity_model_is_another_network_and_leaves_a_handed_model_as_it_was():
    assert default_similarity(cnnvis.load_model("lenet-digits")) == "efficientnet-lite1"
    from cnnvis.model.zoo.efficientnet_lite import EfficientNetLite1

    assert default_similarity(cnnvis.load_model(EfficientNetLite1())) == "efficientnet-lite0"
    net = mean_colour().train()
    sim = Similarity(net)
    x = torch.rand(3, 3, 10, 10)
    f = sim.embed(x, side=32)
    assert net.training and not net[2]._forward_pre_hooks and all(p.requires_grad for p in net.parameters())
    resized = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(f, torch.nn.functional.normalize(resized.mean((2, 3)), dim=1), atol=1e-5)
    assert (sim.side(3), sim.side(35), sim.side(500)) == (32, 40, 128)
    # a list of images is stacked a batch at a time (no copy of them all at once): the same features
    assert torch.equal(sim.embed(list(x), side=32), f)
    grey = Similarity(mean_colour()).embed([im.mean(0, keepdim=True) for im in x], side=32)
    assert torch.allclose(grey, Similarity(mean_colour()).embed(x.mean(1, keepdim=True).expand(-1, 3, -1, -1), side=32))


def test_a_saturated_unit_is_undefined_and_not_said_to_respond_to_nothing():
    from types import SimpleNamespace

    from cnnvis.atlas.scores import _responds

    ex = SimpleNamespace(peaks=torch.tensor([[0.0, 0.0, 0.0], [6.0, 6.0, 6.0], [0.0, 1.0, 6.0]]))
    assert "responds to nothing" in _responds(ex, 0)
    saturated = _responds(ex, 1)
    assert saturated.startswith("the unit's response is 6 on every one of the 3 images: it answers every image alike")
    assert "responds to nothing" not in saturated and _responds(ex, 2) is None
