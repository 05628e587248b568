import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnvis
from cnnvis.core.errors import InputError
from cnnvis.model.hooks import count_hooks
from cnnvis.synthesis.objectives import Objective, channel_l2, neuron
from cnnvis.synthesis.ascent import synthesize
from cnnvis.synthesis.settings import make_settings, unit_seed
from cnnvis.synthesis.units import maximize, run_units, select_units


@pytest.fixture(scope="module")
def lenet():
    return cnnvis.load_model("lenet-digits")


def _png_bytes(image):
    from cnnvis.core.io import to_uint8

    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def _rises(out, factor=2.0):
    for r in out.records:
        if r["dead"]:  # zero activation and gradient at the start: nothing to climb, and said so
            assert r["objective_initial"] == 0 and r["objective_final"] == 0
        elif r["natural_start"]:  # revived from the natural crop it answers to most: it starts high
            assert r["objective_final"] >= r["objective_initial"] > 0, r
        else:
            assert r["objective_final"] >= factor * r["objective_initial"] > 0, r


@pytest.mark.parametrize("preset,steps,lr", [("plain", 48, 0.2), ("robust", 48, 0.1)])
def test_objective_rises_on_lenet(lenet, preset, steps, lr):
    # after the ReLU: with pixels boxed in [0, 1], a pre-ReLU map of a mostly positive kernel
    # cannot reach twice its response to U[0,1] noise (the noise already gives about half the maximum)
    out = maximize(lenet, "relu2", "all", preset=preset, steps=steps, lr=lr, size=32, retries=2)
    _rises(out)
    assert sum(not r["dead"] for r in out.records) >= 5


USER_NET = """
import torch
from torch import nn

def make_net():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.bias)
    return net
"""


@pytest.fixture
def mynets(tmp_path, monkeypatch):
    """A user's module ``mynets`` with a random-weight 3-channel CNN (zero biases)."""
    (tmp_path / "mynets.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    import sys

    sys.modules.pop("mynets", None)
    yield cnnvis.load_model("mynets:make_net")
    sys.modules.pop("mynets", None)


@pytest.mark.parametrize("preset,steps,lr", [("plain", 40, 0.1), ("robust", 128, 0.2)])
def test_objective_rises_on_user_callable(mynets, preset, steps, lr):
    out = maximize(mynets, "3", "all", preset=preset, steps=steps, lr=lr, size=24, retries=2)
    assert len(out.records) == 8 and out.images.shape == (8, 3, 24, 24)
    _rises(out)
    assert sum(not r["dead"] for r in out.records) >= 6


@pytest.mark.parametrize("preset", ["plain", "robust"])
def test_objective_rises_on_torchvision(preset):
    lm = cnnvis.load_model("resnet18", "none")
    out = maximize(lm, "layer1.0.conv1", "0-3", preset=preset, steps=24, lr=0.1, size=32)
    assert out.images.shape == (4, 3, 32, 32)
    _rises(out)


@pytest.mark.parametrize("preset", ["plain", "robust"])
def test_selectivity_from_saved_pngs(mynets, tmp_path, preset):
    out = maximize(mynets, "2", "all", preset=preset, steps=48, lr=0.1, size=24)
    images = []
    for k, image in enumerate(out.images):
        path = tmp_path / f"{k}.png"
        path.write_bytes(_png_bytes(image))
        images.append(torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0).permute(2, 0, 1))
    with torch.no_grad():  # an independent plain forward pass (no hooks, no cnnvis)
        h = mynets.model[:3](torch.stack(images))
    response = h.flatten(2).norm(dim=2)  # response[image, filter]
    own = sum(int(response[j, j] > torch.cat([response[:j, j], response[j + 1:, j]]).max()) for j in range(8))
    assert own >= 7, response


def test_byte_identical_with_same_seed_and_seed_matters(lenet):
    a = maximize(lenet, "conv2", "0-3", preset="robust", steps=12, seed=5, size=32)
    b = maximize(lenet, "conv2", "0-3", preset="robust", steps=12, seed=5, size=32)
    c = maximize(lenet, "conv2", "0-3", preset="robust", steps=12, seed=6, size=32)
    assert [_png_bytes(i) for i in a.images] == [_png_bytes(i) for i in b.images]
    assert _png_bytes(a.images[0]) != _png_bytes(c.images[0])
    assert [r["loss_curve"] for r in a.records] == [r["loss_curve"] for r in b.records]


def test_a_filter_does_not_depend_on_its_batch(lenet):
    together = maximize(lenet, "conv2", "0-3", steps=16, batch_size=4)
    alone = maximize(lenet, "conv2", "2", steps=16, batch_size=1)
    assert torch.allclose(together.images[2], alone.images[0], atol=2e-3)
    assert together.records[2]["unit_seed"] == alone.records[0]["unit_seed"] == unit_seed(0, "conv2", "channel-l2", 2)


def _assert_sign_patterns(lm, layer, size, y0, k):
    out = maximize(lm, layer, "all", objective="neuron", preset="plain", steps=80, lr=1.0, size=size)
    weights = lm.model.get_submodule(layer).weight  # filters x C x k x k
    for image, w in zip(out.images, weights):
        patch = image[:, y0:y0 + k, y0:y0 + k]
        assert torch.equal(patch, (w > 0).float())  # exactly the box corner, not just the right side


def test_linear_layer_optimum_is_the_kernel_sign_pattern(lenet):
    # lenet conv1: 5x5 kernel, no padding; the centre unit of the 28x28 map is (14, 14) -> input rows 14..18
    _assert_sign_patterns(lenet, "conv1", 32, 14, 5)


def test_sign_pattern_three_channels(user_module):
    # TinyNet conv1: 3x3, padding 1; centre of the 16x16 map is (8, 8) -> input rows 7..9, all 3 channels
    _assert_sign_patterns(cnnvis.load_model("usernets:make_net"), "conv1", 16, 7, 3)


class _Exploding(Objective):
    """channel-l2 that raises (or turns element 0 into NaN) on its ``at``-th call."""

    def __init__(self, layer, index, at, nan=False):
        self.inner = channel_l2(layer, index)
        self.layers = self.inner.layers
        self.at, self.nan, self.calls = at, nan, 0

    def __call__(self, outputs):
        self.calls += 1
        v = self.inner(outputs)
        if self.calls >= self.at:
            if not self.nan:
                raise RuntimeError("boom")
            v = v.clone()
            v[0] = float("nan")
        return v


def test_model_restored_after_an_exception(user_module):
    lm = cnnvis.load_model("usernets:make_net")
    m = lm.model
    m.train()
    m.head.weight.requires_grad_(False)
    flags = [p.requires_grad for p in m.parameters()]
    layouts = [p.stride() for p in m.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        synthesize(lm, _Exploding("conv2", [0, 1], at=3), [0, 1], make_settings("plain", steps=5, size=16))
    assert count_hooks(m) == 0
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(mod.training for mod in m.modules())
    assert [p.stride() for p in m.parameters()] == layouts
    assert all(p.grad is None for p in m.parameters())


def test_success_leaves_model_as_given(lenet):
    m = lenet.model
    flags = [p.requires_grad for p in m.parameters()]
    maximize(lenet, "conv2", "0", steps=2)
    assert count_hooks(m) == 0 and [p.requires_grad for p in m.parameters()] == flags and not m.training
    assert all(p.grad is None for p in m.parameters())


def test_nonfinite_filter_stops_and_the_rest_continue(lenet):
    results = synthesize(lenet, _Exploding("conv2", [0, 1, 2], at=6, nan=True), [1, 2, 3],
                         make_settings("plain", steps=20, lr=0.1, size=32))
    first, *rest = results
    assert first.status == "nonfinite" and first.stopped_at == 4  # calls: 1 start, 2..5 steps 0..3, 6 = step 4
    assert len(first.curve) == 4 and torch.isfinite(first.image).all()
    for r in rest:
        assert r.status == "ok" and len(r.curve) == 20 and r.objective_final > r.objective_initial


class _DeadNet(nn.Module):
    """One 1x1 'neuron' per channel: relu(x - t). Channel 0 is dead for any input in [0, 1];
    channel 1 (t = 0.6, a 1x1 image) is alive for 40% of the starting noise."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.copy_(torch.tensor([-5.0, -0.6]))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


def test_dead_filter_is_marked_and_retries_restart_it():
    lm = cnnvis.load_model(_DeadNet(), size=1, channels=1)
    seeds = [s for s in range(20) if torch.rand(1, 1, 1, generator=torch.Generator().manual_seed(
        unit_seed(s, "init", 0))).item() <= 0.6]
    seed = seeds[0]  # channel 1 starts dead for this seed
    settings = make_settings("plain", steps=5, size=1, retries=0)
    (dead0, dead1) = synthesize(lm, neuron("relu", [0, 1]), [seed, seed], settings)
    assert dead0.dead and dead1.dead and dead0.objective_final == 0 and dead0.attempts == 1
    first_noise = torch.rand(1, 1, 1, generator=torch.Generator().manual_seed(unit_seed(seed, "init", 0)))
    assert torch.equal(dead1.image, first_noise)  # the image is the starting noise, never dropped
    retried = synthesize(lm, neuron("relu", [0, 1]), [seed, seed], make_settings("plain", steps=5, size=1, retries=8))
    assert retried[0].dead and retried[0].attempts == 9
    assert not retried[1].dead and 1 < retried[1].attempts <= 9 and retried[1].objective_final > 0


def _out_of_memory_above(limit: int, monkeypatch) -> list:
    """Make every synthesis batch of more than ``limit`` pictures fail as CUDA does when memory runs
    out; returns the list of batch sizes tried, in order."""
    import cnnvis.synthesis.units as S

    real = S.synthesize
    sizes = []

    def fake(lm, objective, seeds, settings, progress=None):
        sizes.append(len(seeds))
        if len(seeds) > limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(lm, objective, seeds, settings, progress=progress)

    monkeypatch.setattr(S, "synthesize", fake)
    return sizes


def test_oom_retries_in_halves(lenet, monkeypatch):
    sizes = _out_of_memory_above(2, monkeypatch)
    target = select_units(lenet, "conv2", "0-4")
    batches = list(run_units(lenet, target, make_settings("plain", steps=3), batch_size=5))
    assert sizes == [5, 3, 2, 1, 2] and [b[0] for b in batches] == [[0, 1], [2], [3, 4]]
    direct = maximize(lenet, "conv2", "0-4", steps=3, batch_size=2)  # batches of 2 never run out
    got = torch.cat([torch.stack([r.image for r in b[1]]) for b in batches])
    assert torch.allclose(got, direct.images, atol=1e-3)


def test_bad_requests(lenet):
    with pytest.raises(InputError, match=r"filter 6 is out of range: layer conv1 has 6 channels \(0..5\)"):
        maximize(lenet, "conv1", "0-6", steps=1)
    with pytest.raises(InputError, match="fc1 has no spatial output.*use --objective neuron"):
        maximize(lenet, "fc1", "0", steps=1)
    out = maximize(lenet, "fc1", "0-1", objective="neuron", steps=4)
    assert out.records[0]["objective_final"] > out.records[0]["objective_initial"]


def test_class_objective_by_name():
    lm = cnnvis.load_model("lenet-digits")
    out = maximize(lm, None, ["7", 3], objective="class", steps=10, lr=0.1)
    assert [r["filter"] for r in out.records] == [7, 3] and out.records[0]["class_name"] == "7"
    with torch.no_grad():
        logits = lm(out.images)
    assert logits.argmax(1).tolist() == [7, 3]  # the image is classified as the class it maximises


@pytest.mark.parametrize("preset,layer", [("maco", 0), ("maco", 2), ("robust", 0), ("robust", 2)])
def test_selectivity_of_maco_and_the_positive_objective_from_saved_pngs(mynets, tmp_path, preset, layer):
    out = maximize(mynets, str(layer), "all", preset=preset, objective="channel-relu", steps=64, size=24)
    images = []
    for k, image in enumerate(out.images):
        path = tmp_path / f"{k}.png"
        path.write_bytes(_png_bytes(image))
        images.append(torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0).permute(2, 0, 1))
    with torch.no_grad():  # an independent plain forward pass: the positive response after the ReLU
        h = mynets.model[: layer + 2](torch.stack(images))
    response = h.flatten(2).mean(dim=2)  # response[image, filter]
    own = sum(int(response[j, j] > torch.cat([response[:j, j], response[j + 1:, j]]).max()) for j in range(8))
    assert own >= 7, response
    assert all(r["objective_layer"] == str(layer + 1) for r in out.records)  # the ReLU after the conv: the unit's response


class _Saturating(nn.Module):
    """Channel 0 saturates (tanh), channel 1 rises without end (identity)."""

    def __init__(self):
        super().__init__()
        self.out = nn.Identity()

    def forward(self, x):
        return self.out(torch.cat([torch.tanh(5 * x), x], dim=1))


def test_early_stop_stops_a_plateau_and_not_a_rise():
    lm = cnnvis.load_model(_Saturating(), size=4, channels=1)
    assert make_settings("plain").early_stop is False and make_settings("robust").early_stop is True
    settings = make_settings("plain", steps=200, lr=0.05, clamp=False, early_stop=True)
    flat, rising = synthesize(lm, cnnvis.channel_mean("out", [0, 1]), [0, 0], settings)
    assert flat.stop_reason == "plateau" and flat.stopped_at < 100 and len(flat.curve) == flat.stopped_at
    assert rising.stop_reason is None and rising.stopped_at is None and len(rising.curve) == 200
    off = synthesize(lm, cnnvis.channel_mean("out", [0]), [0], make_settings("plain", steps=200, clamp=False,
                                                                            early_stop=False))[0]
    assert off.stop_reason is None and len(off.curve) == 200
    assert flat.curve == off.curve[: len(flat.curve)]  # stopping early changes nothing before it


class _ZeroFilter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        with torch.no_grad():
            self.conv.weight[1].zero_()
            self.conv.bias[1] = 0.3

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("preset", ["plain", "robust", "maco"])
def test_a_zero_weight_filter_is_never_ok(preset):
    out = maximize(_ZeroFilter(), "conv", "all", preset=preset, steps=8, size=12)
    statuses = [r["status"] for r in out.records]
    assert statuses[1] == "flat" and "kernel" in out.records[1]["reason"] and statuses[0] == statuses[2] == "ok"


class _ReadsADeadChannel(nn.Module):
    """conv2's filter 1 reads only channel 1 of relu(conv1), which is never active (zero kernel, negative
    bias): its response is its bias, 0.7, whatever the input. Filter 0 reads a live channel."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 2, 3)
        with torch.no_grad():
            self.conv1.weight[1].zero_()
            self.conv1.bias[1] = -1.0
            self.conv2.weight.zero_()
            self.conv2.weight[0, 0] = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
            self.conv2.weight[1, 1] = 1.0
            self.conv2.bias.copy_(torch.tensor([0.0, 0.7]))

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x)))


@pytest.mark.parametrize("preset", ["plain", "robust"])
def test_a_unit_whose_response_does_not_depend_on_the_input_is_flat(preset):
    lm = cnnvis.load_model(_ReadsADeadChannel(), size=16)
    with torch.no_grad():  # independently: the same response, 0.7, for noise and for a black image
        for x in (torch.rand(2, 3, 16, 16), torch.zeros(1, 3, 16, 16)):
            assert torch.allclose(lm.forward(x)[:, 1], torch.tensor(0.7))
    out = maximize(lm, "conv2", "all", preset=preset, objective="channel-mean", steps=24)
    live, constant = out.records
    assert constant["status"] == "flat" and "does not depend on the input" in constant["reason"]
    assert live["status"] == "ok"


class _GreyDead(nn.Module):
    """A ReLU unit that is zero for grey (and for a flat image) but answers to contrast."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, :, 1, 1] = 8.0
            self.conv.weight[0, :, 0, 1] = -8.0
            self.conv.bias.fill_(-0.5)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


@pytest.mark.parametrize("preset", ["robust", "maco"])
def test_a_unit_dead_for_grey_but_alive_for_noise_gets_an_image(preset):
    lm = cnnvis.load_model(_GreyDead(), size=16)
    with torch.no_grad():
        assert float(lm.forward(torch.full((1, 3, 16, 16), 0.5)).max()) == 0  # dead for grey
        assert float(lm.forward(torch.rand(1, 3, 16, 16)).max()) > 0  # alive for noise
    (rec,) = maximize(lm, "relu", "0", preset=preset, objective="channel-mean", steps=16).records
    assert rec["status"] == "ok" and rec["objective_final"] > 0


def _gram_similarity(lm, layer, images):
    """Mean pairwise cosine of the pictures' normalised Gram matrices at ``layer`` (computed independently)."""
    with torch.no_grad(), cnnvis.record(lm, [layer], stop=True) as rec:
        rec.run(images)
    a = torch.relu(rec[layer]).flatten(2)
    grams = torch.bmm(a, a.transpose(1, 2)).flatten(1)
    grams = grams / grams.norm(dim=1, keepdim=True)
    cos = grams @ grams.t()
    n = len(images)
    return float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


def test_diverse_pictures_keep_the_unit_and_differ_more_than_independent_seeds(mynets):
    # each of K diverse pictures reaches at least half of the unit's plain picture's objective, and the K
    # pictures are less alike at the layer the unit reads (the first ReLU) than K independent seeds
    kw = dict(preset="robust", objective="channel-relu", steps=96, size=24)
    for unit in range(8):
        plain = maximize(mynets, "2", [unit], **kw)
        diverse = maximize(mynets, "2", [unit], diversity=4, **kw)
        independent = torch.stack([maximize(mynets, "2", [unit], seed=s, **kw).images[0] for s in range(4)])
        best = plain.records[0]["objective_final"]
        assert min(r["objective_final"] for r in diverse.records) >= 0.5 * best > 0, unit
        assert _gram_similarity(mynets, "1", diverse.images) < _gram_similarity(mynets, "1", independent), unit
    assert [r["diversity_index"] for r in diverse.records] == [0, 1, 2, 3]
    assert len({r["unit_seed"] for r in diverse.records}) == 4 and diverse.records[0]["diversity"] == 4
    one = maximize(mynets, "2", [7], diversity=1, **kw)  # --diversity 1 is no diversity at all
    assert torch.equal(one.images[0], independent[0]) and "diversity" not in one.records[0]


def test_direction_on_a_linear_layer_reproduces_the_sign_pattern(lenet):
    # conv1 is linear: dot(h(x), v) over positions is maximised, in the box [0, 1], by the sign pattern
    # of the kernel combination sum_c v_c w_c at the centre position's receptive field
    v = torch.tensor([1.0, -1.0, 0.5, 0.0, 0.0, 2.0])
    objective = cnnvis.neuron("conv1", 0, 14, 14) * 0.0 + DirectionAt("conv1", v, 14, 14)
    (r,) = synthesize(lenet, objective, [0], make_settings("plain", steps=80, lr=1.0, size=32))
    w = (lenet.model.conv1.weight[:, 0] * v.view(-1, 1, 1)).sum(0)
    assert torch.equal(r.image[0, 14:19, 14:19], (w > 0).float())


class DirectionAt(Objective):
    """``direction`` read at one position (the centre unit of a direction)."""

    def __init__(self, layer, vector, y, x):
        self.inner = cnnvis.direction(layer, vector)
        self.layers = (layer,)
        self.layer, self.y, self.x = layer, y, x

    def __call__(self, outputs):
        h = outputs[self.layer][:, :, self.y : self.y + 1, self.x : self.x + 1]
        return self.inner({self.layer: h})


def test_notebook_reprs(lenet):
    out = maximize(lenet, "conv1", "0-1", steps=2)
    png = out._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    grid = np.asarray(Image.open(io.BytesIO(png)))
    assert grid.shape[0] == 2 + 128 + 2 and grid.shape[1] == 2 + 2 * (128 + 2)  # two 32 px pictures zoomed 4x
    html = out._repr_html_()
    assert html.count("<img") == 2 and "conv1 · 1" in html
    weird = maximize(cnnvis.load_model(_EvilName(), size=8), "<b>x</b>", "0", steps=1)
    assert "&lt;b&gt;x&lt;/b&gt;" in weird._repr_html_() and "<b>x</b>" not in weird._repr_html_()


class _EvilName(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("<b>x</b>", nn.Conv2d(3, 2, 3))

    def forward(self, x):
        return getattr(self, "<b>x</b>")(x)


def test_affine_batch_norm_gives_the_same_numbers_and_puts_forward_back():
    from cnnvis.synthesis.ascent import affine_batchnorm

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(-2, 2)
        net[1].bias.uniform_(-1, 1)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    expected = net(x)
    (g_expected,) = torch.autograd.grad(expected.sum(), x)
    with affine_batchnorm(net) as patched:
        assert patched
        got = net(x)
        (g,) = torch.autograd.grad(got.sum(), x)
    assert torch.allclose(got, expected, atol=1e-6) and torch.allclose(g, g_expected, atol=1e-6)
    assert "forward" not in vars(net[1])
    net[1].train()  # a batch norm in training mode is left alone
    with affine_batchnorm(net) as patched:
        assert not patched


class _DarkPatch(nn.Module):
    """Fires only where a 5x5 patch is nearly black: never for U[0, 1] noise, often for photographs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 5)
        with torch.no_grad():
            self.conv.weight.fill_(-10.0 / 75)
            self.conv.bias.fill_(1.0)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


def test_a_unit_dead_for_noise_but_alive_for_photographs_is_revived_from_one():
    lm = cnnvis.load_model(_DarkPatch(), size=24)
    (rec,) = maximize(lm, "relu", "0", preset="plain", objective="channel-mean", steps=8, retries=2).records
    assert rec["status"] == "ok" and rec["natural_start"] and rec["attempts"] > 3
    assert rec["objective_final"] >= rec["objective_initial"] > 0
    (none,) = maximize(lm, "relu", "0", preset="plain", objective="channel-mean", steps=8, retries=0).records
    assert none["status"] == "dead" and not none["natural_start"]  # no retries: nothing more is tried


def test_diverse_pictures_of_a_unit_stay_in_one_batch_when_memory_runs_out(lenet, monkeypatch):
    import cnnvis.synthesis.units as S

    sizes = _out_of_memory_above(3, monkeypatch)
    target = select_units(lenet, "conv2", "0-1")
    batches = list(run_units(lenet, target, make_settings("plain", steps=2), batch_size=2, variant=S.Variant(diversity=3)))
    assert sizes == [6, 3, 3] and [b[0] for b in batches] == [[0], [1]]  # halves by units: 3 pictures each
    with pytest.raises(cnnvis.CnnvisError, match="4 diverse pictures in one batch.*smaller --diversity"):
        list(run_units(lenet, target, make_settings("plain", steps=2), batch_size=2, variant=S.Variant(diversity=4)))


def test_the_natural_start_looks_at_a_few_crops_at_a_time_and_keeps_the_strongest():
    from cnnvis.core.memory import images_per_batch
    from cnnvis.synthesis.ascent import NATURAL_STARTS, natural_start
    from cnnvis.synthesis.quality import natural_crops

    model = _DarkPatch()
    seen = []

    class _Mean:  # the unit's mean response; the same objective for any rows
        def select(self, rows):
            return self

    def evaluate(x, objective):
        seen.append(len(x))
        with torch.no_grad():
            return model(x).mean((1, 2, 3))

    for side in (120, 200):  # 48 crops in passes of 20 (120 px) and of 7 (200 px)
        seen.clear()
        found = natural_start(evaluate, _Mean(), [0], (side, side), 3, torch.device("cpu"))
        assert max(seen) <= images_per_batch((side, side)) and sum(seen) == NATURAL_STARTS
        crops = natural_crops((side, side), 3, NATURAL_STARTS, seed=0)
        with torch.no_grad():
            values = model(crops).mean((1, 2, 3))  # every crop in one pass, apart from natural_start
        best = [int(k) for k in values.argsort(descending=True)[:3] if float(values[k]) > 0]
        assert len(found[0]) == len(best) > 0
        for crop, k in zip(found[0], best):
            assert torch.equal(crop, crops[k])
