"""Shared test helpers: running the app in-process or as a CLI, and the MNIST-format fixture.

The writers of tiny datasets in the real on-disk formats live in the package (cnnlab.data.formats, also used
by scripts/bench.py); they are imported here so `from tests.conftest import write_cifar10` keeps working.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cnnlab import CONF_DIR
from cnnlab.data.formats import synthetic_digits, write_cifar10, write_idx, write_mnist

__all__ = ["ROOT", "cli", "make_config", "run_app", "synthetic_digits", "write_cifar10", "write_idx", "write_mnist"]

ROOT = Path(__file__).resolve().parents[1]


def make_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """Compose the app's config as `python -m cnnlab <overrides>` would, with the run dir set."""
    from cnnlab.config.schema import register

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
    from cnnlab.app.run import run

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
