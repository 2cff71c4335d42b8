"""The generated data: random CIFAR-size tensors, CIFAR-10-format files, and the dataset config that reads them.

Random pixels cost the same to read, augment and train on as real ones, and need no network.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.data.formats import write_cifar10

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def cifar_like(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random uint8 images of 3x32x32 and their labels (0-9)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


@contextmanager
def cifar_files(train: int, test: int) -> Iterator[Path]:
    """A temporary dataset root with CIFAR-10's six pickle batches: `train` images in five, `test` in one."""
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        yield write_cifar10(Path(tmp), per_batch=max(train // 5, 1), n_test=test)


def cifar_dataset(root: Path, val_size: int) -> DictConfig:
    """conf/dataset/cifar10.yaml, reading `root` with no download."""
    return OmegaConf.create(
        {
            "name": "cifar10",
            "root": str(root),
            "download": False,
            "shape": [3, 32, 32],
            "num_classes": 10,
            "mean": CIFAR_MEAN,
            "std": CIFAR_STD,
            "val_size": val_size,
            "augment": {"pad": 4, "flip": True},
        }
    )
