"""Shared test helpers: tiny datasets in the real on-disk formats, and running the app in-process or as a CLI."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cnnlab import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write `array` (uint8) in the IDX format MNIST uses."""
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
    """The four IDX files of an MNIST-format dataset, flat in `folder`."""
    tx, ty = synthetic_digits(n_train, 0)
    vx, vy = synthetic_digits(n_test, 1)
    write_idx(folder / "train-images-idx3-ubyte", tx, gz)
    write_idx(folder / "train-labels-idx1-ubyte", ty, gz)
    write_idx(folder / "t10k-images-idx3-ubyte", vx, gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", vy, gz)
    return folder


def write_cifar10(root: Path, per_batch: int = 40, n_test: int = 50) -> Path:
    """The six pickle batches of CIFAR-10 in torchvision's layout: root/cifar-10-batches-py/."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        labels = rng.integers(0, 10, n).tolist()
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {"batch_label": name, "labels": labels, "data": data, "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


def make_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """Compose the app's config as `python -m cnnlab <overrides>` would, with the run dir set."""
    from cnnlab.config import register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.name = "cnnlab"
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def run_app(run_dir: Path, *overrides: str) -> float:
    """Run the app in-process (fast: no interpreter start-up)."""
    from cnnlab.run import run

    defaults = [
        d
        for d in ("logger=none", "runtime.threads=1")
        if not any(o.startswith(d.split("=")[0] + "=") for o in overrides)
    ]
    return run(make_config(run_dir, [*defaults, *overrides]))


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 300):
    """Run `python -m cnnlab <args>` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "mnist")
