"""Plain helpers shared by several test modules (fixtures live in conftest.py; no test module imports another).

Running the app in-process or as a CLI, composing its config, fabricated run dirs, small models and recipes.
The writers of tiny datasets in the real on-disk formats live in the package (cnnlab.data.formats, also used
by scripts/bench.py); they are imported here so `from tests.helpers import write_cifar10` works.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cnnlab.config import CONF_DIR
from cnnlab.data.formats import synthetic_digits, write_cifar10, write_idx, write_mnist
from cnnlab.models.resnet import ResNet
from cnnlab.records import checkpoint
from cnnlab.records.status import write_status

__all__ = [
    "CANVAS_CLASSIFIER",
    "QUALITY",
    "RESUME_RUN",
    "ROOT",
    "TINY_RECIPE",
    "Payload",
    "accuracy",
    "assert_localizes",
    "assert_same_run",
    "cli",
    "compose_config",
    "compose_hydra",
    "composed",
    "make_config",
    "make_run",
    "run_app",
    "small_resnet",
    "synthetic_digits",
    "trained_checkpoint",
    "write_cifar10",
    "write_idx",
    "write_mnist",
]

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- running the app


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


# ---------------------------------------------------------------- composing the config (test_config, test_background)


@functools.cache
def compose_config(overrides: tuple[str, ...], hydra: bool) -> DictConfig:
    """Hydra's composition of the app config, cached (`compose_config.__wrapped__` composes afresh)."""
    from cnnlab.config.schema import register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def composed(*overrides: str) -> DictConfig:
    """The app config as `python -m cnnlab <overrides>` composes it (Hydra takes ~0.3 s a composition: cached).

    Tasks on a trained model get a checkpoint path (they require one; the file is not read here)."""
    if any(o in ("task=evaluate", "task=localize", "task=cam") for o in overrides):
        overrides = (
            (*overrides, "checkpoint=trained/best.pt") if not any("checkpoint=" in o for o in overrides) else overrides
        )
    return copy.deepcopy(compose_config(overrides, False))


def compose_hydra(*overrides: str) -> DictConfig:
    """The same with its hydra node (launcher, sweeper)."""
    return copy.deepcopy(compose_config(overrides, True))


# ---------------------------------------------------------------- fabricated run dirs (test_report, test_cli, ...)


def make_run(
    job: Path,
    overrides: list[str],
    test_acc: float | None = None,
    model: dict | None = None,
    steps: int = 40,
    status: str | None = None,
    error: BaseException | None = None,
    dataset: str = "mnist_sample",
    extra: dict | None = None,
    **fields: object,
) -> Path:
    """A run dir as cnnlab leaves it: .hydra/, and metrics.json + history.jsonl when the run completed."""
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    values = dict(o.split("=", 1) for o in overrides)
    model = model or {
        "_target_": "cnnlab.models.resnet.ResNet",
        "depth": int(values.get("model.depth", 20)),
        "residual": values.get("model.residual", "true") == "true",
        "shortcut": "A",
        "in_channels": "${dataset.shape.0}",  # left unresolved, as Hydra saves it
    }
    config = {"seed": int(values.get("seed", 0)), "model": model, "dataset": {"name": dataset, "shape": [1, 28, 28]}}
    config.update(extra or {})  # e.g. the recipe keys the CIFAR-10 check compares
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if test_acc is not None:
        metrics = {"test_acc": test_acc, "best_val_acc": test_acc + 0.01, "params": 269_434, "epochs": 2.0}
        (job / "metrics.json").write_text(json.dumps({**metrics, "seconds": 75.0, "steps": steps}))
        history = [
            {"step": s, "epoch": s / 20, "train_loss": 1.0, "train_acc": 0.5 + s / 200, "val_acc": test_acc * s / steps}
            for s in range(10, steps + 1, 10)
        ]
        (job / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    if status is not None:
        write_status(job, status, overrides, error, **fields)
    return job


def accuracy(depth: int, residual: bool, seed: int) -> float:
    """Fabricated test accuracy: the degradation pattern, plus a seed-dependent wobble."""
    base = 0.90 + (0.002 if residual else -0.003) * (depth - 20) / 12
    return round(base + 0.004 * seed, 4)


# ---------------------------------------------------------------- exact resume (test_resume, test_sweep_resume)

# 7000 train images / 256 = 28 steps per epoch, 56 in all; dropout draws from the torch RNG every step.
RESUME_RUN = [
    "logger=none",
    "runtime.threads=1",
    "runtime.figures=false",
    "model.hidden=[16]",
    "model.dropout=0.1",
    "trainer.batch_size=256",
    "trainer.epochs=2",
    "runtime.checkpoint_every=10",
    "runtime.log_every=5",
]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    for name in ("last.pt", "best.pt"):
        ours, theirs = (checkpoint.load(d / "checkpoints" / name) for d in (run_dir, reference))
        assert ours["model"].keys() == theirs["model"].keys()
        for key, tensor in ours["model"].items():
            assert torch.equal(tensor, theirs["model"][key]), f"{name}: {key} differs"
        assert ours["train_state"]["step"] == theirs["train_state"]["step"]
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    for key in ("test_acc", "test_loss", "val_acc", "val_loss", "best_val_acc", "steps", "epochs", "best_step"):
        assert ours[key] == theirs[key], key
    assert (run_dir / "history.jsonl").read_text() == (reference / "history.jsonl").read_text()


# ---------------------------------------------------------------- malicious checkpoints (test_checkpoint, test_errors)


class Payload:
    """Unpickling this calls open(marker, 'w'): a stand-in for any code an attacker wants to run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ---------------------------------------------------------------- models (test_vision, test_faithfulness)


def small_resnet(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    model = ResNet(depth=8, width=8, in_channels=1).eval()
    for m in model.modules():  # non-trivial BN statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.nn.init.normal_(model.fc.bias)
    return model


# ---------------------------------------------------------------- trained checkpoints (the *_checkpoint fixtures)

TINY_RECIPE = ["model=resnet", "model.depth=8", "model.width=4", "trainer.max_steps=2", "runtime.figures=false"]


# A small ResNet that localizes after a brief training (see README, Localization): pad-and-crop shows it digits
# anywhere with black around, the cosine schedule ends training. Measured on the QUALITY canvases (seed 0):
# cls_acc 0.94, loc_acc 0.86 (cam 0.80), center_err_px 2.1; 200 steps: loc_acc 0.64; with dataset.background=0.25
# (width 16) loc_acc drops from 0.90 to 0.64, so this recipe has no background class.
CANVAS_CLASSIFIER = [
    "model=resnet",
    "model.depth=8",
    "model.width=8",
    "dataset.augment.pad=8",
    "scheduler=cosine",
    "trainer.epochs=null",
    "trainer.max_steps=300",
    "trainer.batch_size=64",
    "runtime.figures=false",
]
# its benchmark: 50 single-digit canvases of 64 px, quality metrics only
QUALITY = ["task.canvas.count=50", "task.canvas.size=64", "task.figure_count=2"]
QUALITY += ["task.faithfulness=false", "task.sanity=false"]


def trained_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, name: str, *overrides: str, recipe: list[str] = TINY_RECIPE
) -> Path:
    """A ResNet trained by `recipe` (default: a tiny one, a few steps), once per test session (the fixtures in
    conftest.py call this; a later call finds the checkpoint on disk)."""
    run_dir = tmp_path_factory.getbasetemp() / f"tiny-{name}"
    path = run_dir / "checkpoints" / "best.pt"
    if not path.is_file():
        run_app(run_dir, *recipe, *overrides)
    return path


def assert_localizes(metrics: dict) -> None:
    """The issue's bar for a classifier that localizes, on the QUALITY canvases."""
    found = {k: metrics[k] for k in ("cls_acc", "loc_acc", "center_err_px", "mean_iou", "pointing_acc")}
    assert metrics["canvases"] == 50, found
    assert found["cls_acc"] >= 0.5 and found["loc_acc"] >= 0.5 and found["center_err_px"] < 4, found


# ---------------------------------------------------------------- sweeps stopped by a signal (test_sweep_resume)

# Loaded by every Python process of a test's sweep (PYTHONPATH): in Hydra job number `job`, just before training
# batch `at` is used, send `sig` (to the job itself; SIGKILL to the whole sweep's process group), once.
HOOK = """
import importlib.abc, importlib.util, os, signal, sys

SPEC = os.environ.get("CNNLAB_TEST_SIGNAL")  # <signal>:<job number>:<batch>:<marker file>


def patch(loader):
    sig, job, at, marker = SPEC.split(":", 3)
    original, count = loader.DeviceLoader.batches, [0]

    def batches(self, epoch=0, start=0):
        from hydra.core.hydra_config import HydraConfig

        for batch in original(self, epoch, start):
            if self.shuffle and HydraConfig.get().job.num == int(job):
                count[0] += 1
                if count[0] == int(at) and not os.path.exists(marker):
                    open(marker, "w").close()
                    number = getattr(signal, sig)
                    os.killpg(0, number) if number == signal.SIGKILL else os.kill(os.getpid(), number)
            yield batch

    loader.DeviceLoader.batches = batches


class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "cnnlab.data.loader":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


if SPEC:
    sys.meta_path.insert(0, Hook())
"""


def sweep(tmp_path: Path, *args: str, signal_at: str | None = None) -> subprocess.CompletedProcess:
    """`python -m cnnlab <args>` in its own process group, with the signal hook when `signal_at` is given."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir), str(ROOT), env.get("PYTHONPATH")]))
    if signal_at:
        env["CNNLAB_TEST_SIGNAL"] = f"{signal_at}:{tmp_path / 'signalled'}"
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,  # SIGKILL to the sweep's process group spares pytest
    )
