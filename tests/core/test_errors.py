from cnnvis.core.errors import close_matches, did_you_mean, typo_distance


def test_typo_distance():
    assert typo_distance("vgg61", "vgg16") == 0.5  # one swap
    assert typo_distance("vgg61", "vgg11") == 1.0  # one substitution
    assert typo_distance("abc", "abc") == 0
    assert typo_distance("", "abc") == 3
    assert typo_distance("resnet", "resnet18") == 2
    assert typo_distance("VGG16", "vgg16") == 0


def test_close_matches_orders_by_distance_then_model_order():
    names = ["vgg11", "vgg13", "vgg16", "vgg19", "resnet18"]
    assert close_matches("vgg61", names) == ["vgg16", "vgg11"]
    assert close_matches("resnt18", names) == ["resnet18"]
    assert close_matches("zzzzzz", names) == []
    assert did_you_mean("zzzzzz", names) == ""
    assert did_you_mean("vgg61", names) == "; did you mean vgg16, vgg11?"
