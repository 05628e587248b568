import numpy as np
import torch
from PIL import Image

import cnnvis
from cnnvis.inspection.activations import activation_grid, compute_activations, save_activations
from cnnvis.model.hooks import count_hooks


def test_activations_equal_hand_run_prefix():
    lm = cnnvis.load_model("lenet-digits")
    m = lm.model
    x = torch.rand(1, 32, 32)
    seen, acts = compute_activations(lm, x, ["conv2", "relu1", "fc2"])
    with torch.no_grad():
        h1 = m.relu1(m.conv1(x[None]))
        h2 = m.conv2(m.pool1(h1))
        f2 = m.fc2(m.relu3(m.fc1(m.flatten(m.pool2(m.relu2(h2))))))
    assert torch.equal(seen, x)
    assert torch.allclose(acts["relu1"], h1[0], atol=1e-6)
    assert torch.allclose(acts["conv2"], h2[0], atol=1e-6)
    assert torch.allclose(acts["fc2"], f2[0], atol=1e-6)
    assert count_hooks(m) == 0


def test_torchvision_model_uses_its_preprocessing(tmp_path):
    lm = cnnvis.load_model("resnet18", "none")
    img = Image.fromarray((np.random.default_rng(0).random((300, 400)) * 255).astype(np.uint8), "L")  # grey photo
    path = tmp_path / "grey.png"
    img.save(path)
    seen, acts = compute_activations(lm, str(path), ["layer1"])
    assert seen.shape == (3, 224, 224)  # grey -> RGB, resize 256 + centre crop 224
    x = lm.preprocessing.normalize(seen[None])
    m = lm.model
    with torch.no_grad():
        expected = m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))
    assert torch.allclose(acts["layer1"], expected[0], atol=1e-5)


def test_rgb_image_into_grey_model_and_user_model_own_size(tmp_path, user_module):
    rgb = Image.fromarray((np.random.default_rng(1).random((40, 40, 3)) * 255).astype(np.uint8), "RGB")
    path = tmp_path / "rgb.png"
    rgb.save(path)
    seen, _ = compute_activations(cnnvis.load_model("lenet-digits"), str(path), ["conv1"])
    assert seen.shape == (1, 32, 32)
    assert torch.allclose(seen[0], torch.from_numpy(np.asarray(rgb.convert("L").resize((32, 32), Image.BILINEAR)) / 255.0).float(), atol=1 / 255 + 1e-6)
    seen, acts = compute_activations(cnnvis.load_model("usernets:make_net"), str(path), ["conv2"])
    assert seen.shape == (3, 40, 40) and acts["conv2"].shape == (8, 19, 19)  # own size, no resize


def test_grid_scales():
    act = torch.stack([torch.zeros(4, 4), torch.ones(4, 4) * 2, torch.arange(16.0).reshape(4, 4)])
    per_channel = activation_grid(act, "channel", ncol=3)
    shared = activation_grid(act, "layer", ncol=3)
    tile = lambda g, k: g[:, 1:5, 1 + 5 * k : 5 + 5 * k]
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    # channel scale: the ramp spans the whole colormap on its own
    assert np.allclose(tile(per_channel, 2)[:, 3, 3].numpy(), cmap(1.0)[:3], atol=1e-6)
    # layer scale: channel 1 (all 2s) maps to 2/15 of the way along the shared range 0..15
    assert np.allclose(tile(shared, 1)[:, 0, 0].numpy(), cmap(2 / 15)[:3], atol=1e-6)


def test_saved_files(tmp_path):
    lm = cnnvis.load_model("lenet-digits")
    x, acts = compute_activations(lm, torch.rand(1, 32, 32), ["conv1", "fc3"])
    paths = save_activations(x, acts, str(tmp_path))
    assert np.array_equal(np.load(tmp_path / "conv1.npy"), acts["conv1"].numpy())
    assert np.load(tmp_path / "fc3.npy").shape == (10,)
    assert Image.open(paths["layers"]["fc3"]["png"]).size[0] > 100  # a bar chart, not a 1-px strip
    assert np.array_equal(np.asarray(Image.open(tmp_path / "input.png")), np.round(x[0].numpy() * 255).astype(np.uint8))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_layers_whose_names_sanitise_alike_get_distinct_files(tmp_path):
    from torch import nn

    from cnnvis.inspection.stats import compute_stats, save_stats

    net = nn.Sequential()
    net.add_module("a b", nn.Conv2d(3, 2, 3))
    net.add_module("a_b", nn.Conv2d(2, 2, 3))
    x, acts = compute_activations(net, torch.rand(3, 10, 10), ["a b", "a_b"])
    paths = save_activations(x, acts, str(tmp_path / "acts"))
    files = [paths["layers"][n]["npy"] for n in ("a b", "a_b")]
    assert len(set(files)) == 2
    assert torch.equal(torch.from_numpy(__import__("numpy").load(files[0])), acts["a b"])
    from PIL import Image

    Image.new("RGB", (10, 10), (200, 10, 10)).save(tmp_path / "red.png")
    stats = compute_stats(net, [str(tmp_path / "red.png")], ["a b", "a_b"])
    written = save_stats(stats, str(tmp_path / "stats"))
    assert len({written["layers"][n]["histogram"] for n in ("a b", "a_b")}) == 2
