import pytest
import torch
from PIL import Image

import cnnvis
from cnnvis.model.zoo import efficientnet_lite as E
from cnnvis.model.zoo.lenet import digits_split


def test_lenet_digits_held_out_accuracy():
    lm = cnnvis.load_model("lenet-digits")
    _, _, x_test, y_test = digits_split()
    assert len(y_test) >= 400  # a real held-out set, every class present
    assert set(y_test.tolist()) == set(range(10))
    with torch.no_grad():
        acc = (lm(x_test).argmax(1) == y_test).float().mean().item()
    assert acc >= 0.97


def test_lenet_weights_are_small_and_first_layer_is_smooth():
    import os

    path = os.path.join(os.path.dirname(cnnvis.__file__), "model", "zoo", "lenet_digits.pt")
    assert os.path.getsize(path) < 1_000_000
    w = cnnvis.load_model("lenet-digits").model.conv1.weight.detach()[:, 0]
    # readable filters: neighbouring weights agree far more than in a random kernel
    def roughness(k):
        return ((k[:, 1:] - k[:, :-1]).abs().mean() + (k[1:] - k[:-1]).abs().mean()) / k.abs().mean()

    trained = torch.stack([roughness(k) for k in w]).mean()
    random = torch.stack([roughness(k) for k in torch.randn(200, 5, 5)]).mean()
    assert trained < 0.75 * random


def test_training_is_deterministic():
    from cnnvis.model.zoo.train_lenet import train

    a, acc_a = train(epochs=1, verbose=False)
    b, acc_b = train(epochs=1, verbose=False)
    assert acc_a == acc_b
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def _predict(lm, image):
    x = lm.preprocessing.prepare(Image.fromarray(image))[None]
    with torch.no_grad():
        return lm(x).argmax(1).item()


def test_efficientnet_lite0_imagenet_predictions():
    import skimage.data

    lm = cnnvis.load_model("efficientnet-lite0")
    assert E.file_sha256(E.weights_path()) == E.WEIGHTS_SHA256
    assert _predict(lm, skimage.data.coffee()) == 967
    assert lm.class_name(967) == "espresso"
    assert _predict(lm, skimage.data.chelsea()) in (281, 282, 285)


def test_efficientnet_rejects_a_file_with_the_wrong_hash(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"0" * 10)
    with pytest.raises(ValueError, match="sha256"):
        E.load_state_dict(str(bad))


def test_same_padding_matches_tensorflow_rule():
    conv = E.Conv2dSame(1, 1, 3, stride=2)
    for size in (224, 225, 7, 8):
        out = conv(torch.zeros(1, 1, size, size))
        assert out.shape[-1] == -(-size // 2)  # ceil(size / stride), as TF "same"
    # asymmetric: for an even input the extra pad goes right/bottom, so the first output
    # pixel sees input rows 0..2 exactly (no padding on the top-left)
    conv = E.Conv2dSame(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert conv(x)[0, 0, 0, 0].item() == x[0, 0, :3, :3].sum().item()


def test_checkpoint_key_renaming():
    assert E.rename_checkpoint_key("_blocks.3._depthwise_conv.weight") == "blocks.3.depthwise_conv.weight"
    assert E.rename_checkpoint_key("_fc.bias") == "fc.bias"


@pytest.mark.slow
def test_efficientnet_lite1_imagenet_predictions_and_depth():
    import skimage.data

    lm = cnnvis.load_model("efficientnet-lite1")
    assert E.file_sha256(E.weights_path("efficientnet-lite1")) == E.VARIANTS["efficientnet-lite1"][2]
    assert lm.preprocessing.input_size() == (240, 240)
    assert len(lm.model.blocks) == sum(E.LITE1_REPEATS) == 21  # Lite0 has 16
    assert _predict(lm, skimage.data.coffee()) == 967
    assert _predict(lm, skimage.data.chelsea()) in (281, 282, 285)


def test_efficientnet_lite1_checks_its_own_hash(tmp_path):
    lite0 = E.weights_path("efficientnet-lite0")  # a real checkpoint, but not Lite1's
    with pytest.raises(ValueError, match=E.VARIANTS["efficientnet-lite1"][2]):
        E.load_state_dict(lite0, "efficientnet-lite1")


def test_the_bundled_imagenet_class_names_are_torchvisions():
    """The zoo's copy of the 1000 class names (read without importing torchvision) is torchvision's list."""
    from torchvision.models import ResNet50_Weights

    from cnnvis.model.loading import imagenet_class_names

    assert list(imagenet_class_names()) == list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert imagenet_class_names()[207] == "golden retriever"
