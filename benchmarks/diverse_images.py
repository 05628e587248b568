"""A diverse set of 224 natural photographs, from packages that install offline, for benchmarks/bench_score.py.

The gallery's own image set is 320 crops of the 11 photographs scikit-image and scikit-learn ship; crops of one
photograph look alike, which flatters any unit (docs/interpretability.md). This script gathers 224 distinct
photographs instead:

* 20 ImageNet validation photographs bundled in the foolbox wheel (``foolbox/data/imagenet_*.jpg``);
* 204 photographs (animals, fish, monuments, landscapes, instruments, tools, a few paintings) from the Debian
  package ``gcompris-qt-data`` (GCompris's activity images, CC-BY-SA/CC-BY/CC0/public domain per file, see the
  package's copyright file), named in ``benchmarks/diverse-images.txt``. They sit in Qt resource files, read
  with PyQt5.

    mkdir -p /tmp/dl && cd /tmp/dl
    pip download --no-deps foolbox==3.3.4 && apt-get download gcompris-qt-data && pip install PyQt5
    python benchmarks/diverse_images.py /tmp/dl/foolbox-3.3.4-py3-none-any.whl /tmp/dl/gcompris-qt-data_*.deb -o /tmp/diverse
    python benchmarks/bench_score.py --images /tmp/diverse --lucent-filters 0
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diverse-images.txt")


def foolbox_photos(wheel: str, out: str) -> int:
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if os.path.basename(n).startswith("imagenet_") and n.endswith(".jpg"))
        for name in names:
            with open(os.path.join(out, os.path.basename(name)), "wb") as f:
                f.write(z.read(name))
    return len(names)


def gcompris_photos(deb: str, out: str) -> int:
    from PyQt5.QtCore import QCoreApplication, QFile, QIODevice, QResource

    wanted = [line.strip() for line in open(LIST, encoding="utf-8") if line.strip()]
    app = QCoreApplication.instance() or QCoreApplication([])  # noqa: F841 - Qt needs one to read resources
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
        for rcc in glob.glob(os.path.join(tmp, "usr", "share", "gcompris-qt", "rcc", "**", "*.rcc"), recursive=True):
            QResource.registerResource(rcc)
        for i, path in enumerate(wanted, 1):
            f = QFile(":/" + path)
            if not f.open(QIODevice.ReadOnly):
                raise SystemExit(f"{path} is not in {deb}: use gcompris-qt-data 3.1 (Debian bookworm)")
            with open(os.path.join(out, f"gc_{i:03d}{os.path.splitext(path)[1]}"), "wb") as dst:
                dst.write(bytes(f.readAll()))
    return len(wanted)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("foolbox_wheel")
    ap.add_argument("gcompris_deb")
    ap.add_argument("-o", "--out", default="diverse-images")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    n = foolbox_photos(args.foolbox_wheel, args.out) + gcompris_photos(args.gcompris_deb, args.out)
    print(f"{n} photographs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
