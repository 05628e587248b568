import pytest
import torch

from cnnvis.core.errors import InputError
from cnnvis.synthesis.objectives import (
    OUTPUT, ChannelL2, Neuron, channel_l2, channel_mean, class_logit, make_objective, neuron,
)


def _acts():
    g = torch.Generator().manual_seed(0)
    return {"conv": torch.randn(3, 4, 5, 6, generator=g), "fc": torch.randn(3, 7, generator=g)}


def test_channel_l2_is_the_norm_of_the_map_per_element():
    a = _acts()
    got = channel_l2("conv", [0, 2, 3])(a)
    expected = torch.stack([a["conv"][i, c].reshape(-1).pow(2).sum().sqrt() for i, c in enumerate([0, 2, 3])])
    assert torch.allclose(got, expected)
    same = channel_l2("conv", 1)(a)
    assert torch.allclose(same, a["conv"][:, 1].flatten(1).norm(dim=1))


def test_channel_mean_neuron_and_class_values():
    a = _acts()
    assert torch.allclose(channel_mean("conv", [1, 1, 0])(a),
                          torch.stack([a["conv"][0, 1].mean(), a["conv"][1, 1].mean(), a["conv"][2, 0].mean()]))
    # centre of a 5 x 6 map is (2, 3)
    assert torch.equal(neuron("conv", 2)(a), a["conv"][:, 2, 2, 3])
    assert torch.equal(neuron("conv", [0, 1, 2], y=0, x=5)(a), a["conv"][[0, 1, 2], [0, 1, 2], 0, 5])
    logits = {OUTPUT: a["fc"]}
    assert torch.equal(class_logit([6, 0, 3])(logits), a["fc"][[0, 1, 2], [6, 0, 3]])
    assert torch.equal(neuron("fc", 4)(a), a["fc"][:, 4])


def test_composition_matches_hand_arithmetic():
    a = _acts()
    obj = channel_l2("conv", 0) - 0.5 * channel_mean("conv", 1) + 2 * neuron("fc", 3)
    expected = (a["conv"][:, 0].flatten(1).norm(dim=1) - 0.5 * a["conv"][:, 1].flatten(1).mean(1) + 2 * a["fc"][:, 3])
    assert torch.allclose(obj(a), expected)
    assert obj.layers == ("conv", "fc")
    assert repr(obj) == "channel_l2('conv', 0) - 0.5 * channel_mean('conv', 1) + 2 * neuron('fc', 3)"
    assert torch.allclose((-channel_l2("conv", 0))(a), -a["conv"][:, 0].flatten(1).norm(dim=1))
    assert torch.allclose((channel_l2("conv", 0) / 4)(a), a["conv"][:, 0].flatten(1).norm(dim=1) / 4)
    with pytest.raises(TypeError):
        channel_l2("conv", 0) + 1.0


def test_out_of_range_names_the_channel_count():
    with pytest.raises(InputError, match=r"filter 9 is out of range: layer conv has 4 channels \(0..3\)"):
        channel_l2("conv", [0, 9, 1])(_acts())


def test_channel_l2_without_spatial_output_explains():
    with pytest.raises(InputError, match="channel-l2 needs a layer with spatial output.*use --objective neuron"):
        ChannelL2("fc", 0)(_acts())


def test_make_objective_names():
    assert isinstance(make_objective("neuron", "conv", 1), Neuron)
    assert make_objective("class", None, 3).layers == (OUTPUT,)
    with pytest.raises(InputError, match="unknown objective 'channel'; use one of channel-l2"):
        make_objective("channel", "conv", 0)
    with pytest.raises(InputError, match="needs a layer"):
        make_objective("channel-l2", None, 0)
