import textwrap

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's own CNN as an importable module ``usernets`` with a few factories."""
    src = textwrap.dedent(
        '''
        import torch
        from torch import nn

        class TinyNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
                self.act = nn.ReLU(inplace=True)
                self.conv2 = nn.Conv2d(4, 8, 3, stride=2)
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.head = nn.Linear(8, 5)

            def forward(self, x):
                x = self.act(self.conv1(x))
                x = self.act(self.conv2(x))
                return self.head(self.pool(x).flatten(1))

        def make_net():
            torch.manual_seed(1)
            return TinyNet()

        instance = make_net()

        def not_a_module():
            return 42

        class Broken(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 2, 3)

            def forward(self, x):
                raise RuntimeError("forward exploded\\nsecond line")
        '''
    )
    (tmp_path / "usernets.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("usernets", None)
    mod = importlib.import_module("usernets")
    yield mod
    sys.modules.pop("usernets", None)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty, private $TORCH_HOME (so no real cache is touched)."""
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home
