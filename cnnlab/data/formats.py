"""Write small datasets in the real on-disk formats that `cnnlab.data.sources` reads.

IDX files (MNIST, Fashion-MNIST; optionally gzipped) and CIFAR-10's pickle batches in torchvision's layout.
Tests and `scripts/bench.py` use them to make data with no network: the files go through the same readers,
the same checks and the same loaders as the real datasets.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from cnnlab.data.sources import CIFAR_DIR, CIFAR_FILES, IDX_FILES


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write `array` (uint8) in the IDX format MNIST uses; with gz, to `path` + ".gz". Returns the file's path."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def synthetic_digits(n: int, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class c is a 10x10 square of brightness 60 + 20c at a random place, on noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 20, (n, size, size)).astype(np.uint8)
    for i, c in enumerate(y):
        top, left = rng.integers(0, size - 10, 2)
        x[i, top : top + 10, left : left + 10] = 60 + 20 * int(c)
    return x, y


def write_mnist(folder: Path, n_train: int = 600, n_test: int = 200, gz: bool = True) -> Path:
    """The four IDX files of an MNIST-format dataset of synthetic digits, flat in `folder`. Returns `folder`."""
    arrays = {"train": synthetic_digits(n_train, 0), "test": synthetic_digits(n_test, 1)}
    for key, stem in IDX_FILES.items():
        split, part = key.split("_")
        write_idx(folder / stem, arrays[split][0 if part == "x" else 1], gz)
    return folder


def write_cifar10(root: Path, per_batch: int = 40, n_test: int = 50, seed: int = 0) -> Path:
    """CIFAR-10's six pickle batches (random pixels and labels) in torchvision's layout: root/cifar-10-batches-py/.

    per_batch images in each of data_batch_1..5 (the real files hold 10,000 each) and n_test in test_batch.
    Returns `root`, the folder that `dataset.root` names.
    """
    folder = root / CIFAR_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in CIFAR_FILES:
        n = n_test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, n).tolist()
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {"batch_label": name, "labels": labels, "data": data, "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root
