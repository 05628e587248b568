"""Train the bundled ``lenet-digits`` weights, deterministically.

Run ``python -m cnnvis.model.zoo.train_lenet`` to reproduce ``cnnvis/zoo/lenet_digits.pt``
(needs scikit-learn). It uses one CPU thread and fixed seeds, so a re-run on the
same torch version gives the same weights. Weight decay keeps the first-layer
kernels smooth enough to read as edge and blob detectors; small random shifts
of the training digits make the network tolerant to where the digit sits.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys

import torch
import torch.nn.functional as F

from cnnvis.model.zoo.lenet import LeNet5, digits_split

DEFAULT_OUTPUT = os.path.join(os.path.dirname(__file__), "lenet_digits.pt")


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift every image by a random whole number of pixels (zero fill)."""
    out = torch.zeros_like(x)
    n, _, h, w = x.shape
    dy = torch.randint(-max_shift, max_shift + 1, (n,), generator=g)
    dx = torch.randint(-max_shift, max_shift + 1, (n,), generator=g)
    for i in range(n):
        sy, sx = int(dy[i]), int(dx[i])
        ys, yd = (slice(0, h - sy), slice(sy, h)) if sy >= 0 else (slice(-sy, h), slice(0, h + sy))
        xs, xd = (slice(0, w - sx), slice(sx, w)) if sx >= 0 else (slice(-sx, w), slice(0, w + sx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


def train(epochs: int = 40, seed: int = 0, weight_decay: float = 2e-2, lr: float = 0.05, verbose: bool = True):
    """Train LeNet-5 on the training split; return ``(model, held-out accuracy)``."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_train, y_train, x_test, y_test = digits_split()
    model = LeNet5()
    with torch.no_grad():  # start every unit alive: a small positive bias keeps no ReLU dead at init
        for conv in (model.conv1, model.conv2):
            conv.bias.fill_(0.1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    batch = 64
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        xs = _shift(x_train, g)
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(model(xs[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if verbose and (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: held-out accuracy {accuracy(model, x_test, y_test):.4f}", file=sys.stderr)
    model.eval()
    return model, accuracy(model, x_test, y_test)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT, help="where to write the state dict")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, acc = train(epochs=args.epochs, seed=args.seed)
    buf = io.BytesIO()
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, buf)
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, args.output)
    print(f"held-out accuracy {acc:.4f}; wrote {args.output} (sha256 {hashlib.sha256(buf.getvalue()).hexdigest()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
