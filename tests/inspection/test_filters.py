import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnvis
from cnnvis.core.errors import InputError
from cnnvis.inspection.filters import render_filters, save_filters


def _rgb_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Conv2d(2, 2, 3, groups=2))


def test_rgb_filters_follow_documented_normalisation():
    net = _rgb_net()
    w = net[0].weight.detach()
    r = render_filters(net, "0")
    assert r.mode == "rgb" and r.indices == (0, 1, 2, 3)
    for i, im in enumerate(r.images):
        m = w[i].abs().max()
        assert torch.allclose(im, 0.5 + w[i] / (2 * m), atol=1e-7)
        assert im.min() >= 0 and im.max() <= 1
        assert torch.isclose(im.sub(0.5).abs().max(), torch.tensor(0.5))  # largest magnitude reaches 0 or 1
    shared = render_filters(net, "0", scale="layer")
    m = w.abs().max()
    for i, im in enumerate(shared.images):
        assert torch.allclose(im, 0.5 + w[i] / (2 * m), atol=1e-7)


def test_channel_filters_are_diverging_slices_centred_on_zero():
    lm = cnnvis.load_model("lenet-digits")
    w = lm.model.conv2.weight.detach()
    r = render_filters(lm, "conv2", "3,7")
    assert r.mode == "channels" and r.indices == (3, 7)
    cmap = matplotlib.colormaps["RdBu_r"]
    for k, i in enumerate(r.indices):
        m = float(w[i].abs().max())
        grid = r.images[k]
        assert grid.shape == (3, 1 + 2 * 6, 1 + 3 * 6)  # 6 slices of 5x5, 2 rows x 3 columns, 1-px gaps
        for j in range(6):
            row, col = divmod(j, 3)
            tile = grid[:, 1 + row * 6 : 1 + row * 6 + 5, 1 + col * 6 : 1 + col * 6 + 5]
            expected = cmap(np.clip((w[i, j].numpy() + m) / (2 * m), 0, 1))[..., :3].transpose(2, 0, 1)
            assert np.allclose(tile.numpy(), expected, atol=1e-6)


def test_saved_files_are_exact(tmp_path):
    net = _rgb_net()
    r = render_filters(net, "2", "0-1")
    paths = save_filters(r, str(tmp_path), zoom_factor=4)
    saved = np.load(tmp_path / "2" / "weight.npy")
    assert np.array_equal(saved, net[2].weight.detach().numpy())  # the whole layer, bit for bit
    png = np.asarray(Image.open(paths["filters"][1]))
    expected = np.round(np.clip(r.images[1].numpy(), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    assert np.array_equal(png[::4, ::4], expected)
    assert (tmp_path / "2" / "filters.png").exists()
    assert sorted(p.name for p in (tmp_path / "2").iterdir()) == ["filter-0000.png", "filter-0001.png", "filters.png", "weight.npy"]


def test_depthwise_and_torchvision_first_layer():
    net = _rgb_net()
    r = render_filters(net, "3")
    assert r.mode == "channels" and r.images[0].shape == (3, 3, 3)
    lm = cnnvis.load_model("resnet18", "none")
    r = render_filters(lm, "conv1", "0-2")
    assert r.mode == "rgb" and r.images[0].shape == (3, 7, 7)


def test_layers_without_kernels_and_bad_filters():
    lm = cnnvis.load_model("lenet-digits")
    with pytest.raises(InputError, match=r"'pool1' \(MaxPool2d\) has no convolution kernels.*conv1, conv2"):
        render_filters(lm, "pool1")
    with pytest.raises(InputError, match=r"has 6 channels \(0..5\)"):
        render_filters(lm, "conv1", "2-6")
    with pytest.raises(cnnvis.UnknownLayerError):
        render_filters(lm, "conv9")
