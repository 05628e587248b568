import pytest
import torch

import cnnvis
from cnnvis.core.errors import InputError, UnknownLayerError
from cnnvis.model.hooks import count_hooks
from cnnvis.model.layers import parse_filter_spec, resolve_layers
from cnnvis.model.probing import list_layers


def _rows(name):
    lm = cnnvis.load_model(name, "none")
    return lm, {r.name: r for r in list_layers(lm)}


def _names(model):
    return [n for n, _ in model.named_modules() if n]


@torch.no_grad()
def test_vgg16_layers_match_hand_run_forward():
    lm, rows = _rows("vgg16")
    model = lm.model
    assert list(rows) == _names(model)
    x = torch.rand(1, 3, 224, 224)
    h = x
    for i, layer in enumerate(model.features):
        h = layer(h.clone())
        assert rows[f"features.{i}"].output_shape == tuple(h.shape[1:]), i
    assert rows["features.28"].output_shape == (512, 14, 14)
    assert rows["features.28"].channels == 512
    assert rows["features.28"].params == 512 * 512 * 9 + 512
    assert rows["features.28"].type == "Conv2d"
    assert rows["classifier.6"].output_shape == (1000,)
    assert rows["features"].params == sum(p.numel() for p in model.features.parameters())


@torch.no_grad()
def test_resnet18_layers_match_hand_run_forward():
    lm, rows = _rows("resnet18")
    m = lm.model
    assert list(rows) == _names(m)
    x = torch.rand(1, 3, 224, 224)
    h = m.conv1(x)
    assert rows["conv1"].output_shape == tuple(h.shape[1:]) == (64, 112, 112)
    h = m.maxpool(m.relu(m.bn1(h)))
    assert rows["maxpool"].output_shape == tuple(h.shape[1:])
    for name in ("layer1", "layer2", "layer3", "layer4"):
        block0 = getattr(m, name)[0]
        inner = block0.conv1(h)
        assert rows[f"{name}.0.conv1"].output_shape == tuple(inner.shape[1:])
        h = getattr(m, name)(h)
        assert rows[name].output_shape == tuple(h.shape[1:])
    assert rows["layer4"].output_shape == (512, 7, 7)
    assert rows["fc"].output_shape == (1000,)
    # relu runs several times per pass: the first call is what the table shows
    assert rows["layer1.0.relu"].calls == 2


@torch.no_grad()
def test_googlenet_layers_match_hand_run_forward():
    lm, rows = _rows("googlenet")
    m = lm.model
    assert list(rows) == _names(m)
    h = torch.rand(1, 3, 224, 224)
    for name in ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                 "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                 "inception5a", "inception5b"]:
        h = getattr(m, name)(h)
        assert rows[name].output_shape == tuple(h.shape[1:]), name
    assert rows["inception5b"].output_shape == (1024, 7, 7)
    # auxiliary heads do not run in eval mode: no shape, not a crash
    assert rows["aux1"].output_shape is None and rows["aux1"].calls == 0


def test_list_layers_leaves_model_unchanged():
    lm = cnnvis.load_model("lenet-digits")
    lm.model.train()
    lm.model.conv2.weight.requires_grad_(False)
    list_layers(lm)
    assert lm.model.training and all(m.training for m in lm.model.modules())
    assert lm.model.conv2.weight.requires_grad is False and lm.model.conv1.weight.requires_grad is True
    assert count_hooks(lm.model) == 0


def test_list_layers_bad_size_says_use_size(user_module):
    class NeedsTen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3)
            self.fc = torch.nn.Linear(2 * 8 * 8, 3)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    lm = cnnvis.load_model(NeedsTen())
    with pytest.raises(cnnvis.ModelError, match=r"forward pass of NeedsTen failed on a 1x3x224x224 input "
                       r"\(RuntimeError: mat1 and mat2 .*pass the size it expects with --size"):
        list_layers(lm)
    rows = list_layers(lm, size=10)
    assert rows[-1].output_shape == (3,)
    assert count_hooks(lm.model) == 0


def test_resolve_specs():
    lm = cnnvis.load_model("vgg16", "none")
    convs = resolve_layers(lm, "type:Conv2d")
    assert convs == [n for n, m in lm.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    assert resolve_layers(lm, ["features.2?"]) == [f"features.{i}" for i in range(20, 30)]
    # order follows the model, duplicates collapse
    assert resolve_layers(lm, ["features.10", "features.0", "features.0"]) == ["features.0", "features.10"]
    # subclasses count for type: (the EfficientNet convs subclass Conv2d)
    eff = cnnvis.load_model("efficientnet-lite0", "none")
    assert "conv_stem" in resolve_layers(eff, "type:Conv2d")


def test_unknown_layer_lists_close_matches():
    lm = cnnvis.load_model("vgg16", "none")
    with pytest.raises(UnknownLayerError) as info:
        resolve_layers(lm, "features_10")
    msg = str(info.value)
    assert "features.10" in msg and "cnnvis layers vgg16" in msg and "\n" not in msg
    with pytest.raises(UnknownLayerError, match="type:Conv2d"):
        resolve_layers(lm, "type:Conv2")
    with pytest.raises(UnknownLayerError, match="matches no layer"):
        resolve_layers(lm, "layer4.*")


def test_parse_filter_spec():
    assert parse_filter_spec("all", 4) == [0, 1, 2, 3]
    assert parse_filter_spec("0-2,7,1", 8) == [0, 1, 2, 7]
    assert parse_filter_spec("3,7,9", 10) == [3, 7, 9]
    assert parse_filter_spec(3, 10) == [0, 1, 2]
    with pytest.raises(InputError, match=r"has 64 channels \(0..63\)"):
        parse_filter_spec("60-64", 64)
    with pytest.raises(InputError, match="not an index"):
        parse_filter_spec("a-b", 64)
    with pytest.raises(InputError, match="backwards"):
        parse_filter_spec("9-3", 64)


def test_stage_layers_rule():
    from cnnvis.model.probing import stage_layers

    assert stage_layers(cnnvis.load_model("vgg16", "none")) == ["features.0", "features.5", "features.10", "features.17", "features.24"]
    assert stage_layers(cnnvis.load_model("resnet18", "none")) == [
        "conv1", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    # squeeze-excitation 1x1 convolutions are not stages
    mb = stage_layers(cnnvis.load_model("mobilenet_v3_small", "none"))
    assert len(mb) == 5 and not any("fc" in n for n in mb)
