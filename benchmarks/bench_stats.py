"""Benchmark `cnnvis stats`: time overhead over a plain forward pass, and memory vs population size.

Prints ratios measured in one run on this machine (not a test; targets in the issue):

* overhead = time(stats over the batches) / time(plain forward of the same prefix on the same
  batches), both from tensors already in memory, medians of repeats: target <= 1.10;
* peak memory (max RSS of a fresh process) of `compute_stats` over 2,000 images / over 200:
  target <= 1.10.

Usage: python benchmarks/bench_stats.py [--model efficientnet-lite0] [--layers conv_stem,blocks.5,blocks.15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import torch


def make_images(folder: str, n: int, size: int = 96) -> None:
    """Real photo crops (scikit-image's sample images), deterministic."""
    import numpy as np
    import skimage.data
    from PIL import Image

    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        y = int(rng.integers(0, src.shape[0] - size))
        x = int(rng.integers(0, src.shape[1] - size))
        Image.fromarray(src[y : y + size, x : x + size]).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def time_overhead(model_name: str, layers, n_images: int, batch_size: int, repeats: int):
    import cnnvis
    from cnnvis.inspection.stats import stats_from_batches

    lm = cnnvis.load_model(model_name)
    names = cnnvis.resolve_layers(lm, layers)
    h, w = lm.preprocessing.input_size()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(batch_size, lm.preprocessing.channels, h, w, generator=g),
                [f"img{i * batch_size + j}" for j in range(batch_size)]) for i in range(n_images // batch_size)]

    def plain():
        with torch.no_grad(), cnnvis.frozen(lm.model), cnnvis.record(lm, names, stop=True, detach=True) as rec:
            for x, _ in batches:
                rec.run(x)

    def stats():
        stats_from_batches(lm, batches, names, total=n_images)

    plain()  # warm-up
    stats()
    t_plain, t_stats = [], []
    for _ in range(repeats):  # interleaved so machine noise hits both alike
        t0 = time.perf_counter()
        plain()
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stats()
        t_stats.append(time.perf_counter() - t0)
    return statistics.median(t_plain), statistics.median(t_stats)


def peak_rss_mb(model_name: str, layers, folder: str, limit: int, batch_size: int) -> float:
    code = textwrap.dedent(f"""
        import resource, cnnvis
        from cnnvis.inspection.stats import compute_stats
        lm = cnnvis.load_model({model_name!r})
        compute_stats(lm, [{folder!r}], {list(layers)!r}, batch_size={batch_size}, limit={limit})
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--layers", default="conv_stem,blocks.5,blocks.15")
    p.add_argument("--images", type=int, default=128, help="images for the time measurement")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--small", type=int, default=200)
    p.add_argument("--large", type=int, default=2000)
    args = p.parse_args(argv)
    layers = args.layers.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {args.model}; layers {layers}")

    t_plain, t_stats = time_overhead(args.model, layers, args.images, args.batch_size, args.repeats)
    print(f"plain forward: {t_plain:.3f} s   stats: {t_stats:.3f} s   for {args.images} images (median of {args.repeats})")
    print(f"overhead ratio stats / plain forward: {t_stats / t_plain:.3f}  (target <= 1.10)")

    with tempfile.TemporaryDirectory() as tmp:
        make_images(tmp, args.large)
        small = peak_rss_mb(args.model, layers, tmp, args.small, args.batch_size)
        large = peak_rss_mb(args.model, layers, tmp, args.large, args.batch_size)
    print(f"peak RSS: {args.small} images {small:.0f} MiB, {args.large} images {large:.0f} MiB")
    print(f"memory ratio {args.large}/{args.small}: {large / small:.3f}  (target <= 1.10)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
