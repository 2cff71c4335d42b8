"""One run: validate the config, seed, pick the device and threads, start the logger, dispatch the task.

The logger is always finished here, also when the task raises, so jobs of a multirun never share a run.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab import resume, tasks
from cnnlab.errors import ConfigError, UserError
from cnnlab.tracking import NullLogger
from cnnlab.training import checkpoint
from cnnlab.training.stop import Interrupted, stop
from cnnlab.training.trainer import TrainerConfig

log = logging.getLogger("cnnlab")


@dataclass
class Context:
    """What every task gets: the composed config and the run's resources."""

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    logger: NullLogger
    resume: dict[str, Any] | None = None  # the checkpoint state trainer.resume continues from


def run(cfg: DictConfig) -> float:
    validate(cfg)
    device = resolve_device(str(cfg.trainer.device))
    torch.set_num_threads(thread_count(cfg.trainer.threads))
    log.info("device %s, %d torch threads", device, torch.get_num_threads())
    seed_everything(int(cfg.seed))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    state = None
    if cfg.trainer.get("resume"):
        run_dir, state = load_resume(cfg)
    print_config(cfg)
    logger: NullLogger = build(cfg.logger)
    task = tasks.get(cfg.task.name)
    resume_id = state.get("wandb_id") if state else None
    logger.start(
        config_dict(cfg), run_dir, run_name(cfg), group=sweep_group(), resume_id=resume_id, tags=override_tags()
    )
    exit_code = 1
    try:
        with stop.handling():
            result = task(Context(cfg, run_dir, device, logger, resume=state))
        exit_code = 0
        return result
    except Interrupted as e:
        exit_code = e.exit_code
        logger.summary({"status": "interrupted", "interrupted_by": e.signal_name, "interrupted_at_step": e.step})
        e.resume_command = resume.resume_command(HydraConfig.get().overrides.task, run_dir)
        raise
    finally:
        logger.finish(exit_code)


def load_resume(cfg: DictConfig) -> tuple[Path, dict[str, Any]]:
    """The run dir and checkpoint state trainer.resume continues (the Preflight callback already chose it)."""
    path = resume.find_checkpoint(str(cfg.trainer.resume), Path(cfg.paths.output_dir), HydraConfig.get().overrides.task)
    state = checkpoint.load(path)
    resume.check_same_run(state["config"], config_dict(cfg), path)
    for stale in path.parent.glob(".*.tmp"):  # left by a kill during a checkpoint write
        stale.unlink()
    log.info("resuming %s from step %d", resume.run_dir_of(path), state["progress"]["step"])
    return resume.run_dir_of(path), state


def build(node: DictConfig) -> Any:
    """hydra.utils.instantiate, with our own config errors raised as they are (Hydra wraps them in its own)."""
    try:
        return instantiate(node)
    except Exception as e:
        cause = e.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def validate(cfg: DictConfig) -> None:
    """Checks that need no data, so a typo fails in a second, before anything is written."""
    if not isinstance(cfg.seed, int):
        raise ConfigError("seed", cfg.seed, "an integer", "seed=0")
    lr = cfg.optimizer.get("lr")
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ConfigError("optimizer.lr", lr, "a positive number", "optimizer.lr=0.1")
    TrainerConfig.from_config(cfg.trainer)
    if "_target_" in cfg.model:
        build(cfg.model)  # depth, width, shortcut...: fail before data is read or a W&B run starts
    instantiate(cfg.scheduler)(steps_per_epoch=1, total_steps=1)
    if cfg.dataset.name == "mnist_sample" or cfg.dataset.root is None:
        return
    root = Path(cfg.dataset.root)
    if root.exists() and not root.is_dir():
        raise ConfigError("dataset.root", str(root), "a directory", "dataset.root=DIR")


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError("trainer.device", spec, "auto, cpu, cuda or cuda:N", "trainer.device=auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "trainer.device", spec, "auto or cpu: this machine has no CUDA GPU", "trainer.device=auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("trainer.device", spec, f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise ConfigError("trainer.device", spec, "auto, cpu, cuda or cuda:N", "trainer.device=auto")
    return device


def thread_count(threads: int | None) -> int:
    """trainer.threads, or the cores divided by the jobs running in parallel (joblib launcher)."""
    if threads is not None:
        if threads <= 0:
            raise ConfigError("trainer.threads", threads, "a positive integer or null", "trainer.threads=null")
        return int(threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = 1
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        cpus_per_task = hc.launcher.get("cpus_per_task")  # submitit: the cores each job was given
        if cpus_per_task:
            return int(cpus_per_task)
        n_jobs = hc.launcher.get("n_jobs")
        jobs = cores if n_jobs is not None and n_jobs < 0 else int(n_jobs or 1)
    return max(1, cores // max(1, jobs))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_name(cfg: DictConfig) -> str:
    """A readable name from the config, e.g. resnet56-plain-s1 or mlp-s0."""
    m = cfg.model
    if "depth" in m:
        kind = "res" if m.residual else "plain"
        return f"resnet{m.depth}-{kind}-s{cfg.seed}"
    return f"{str(m._target_).rsplit('.', 1)[-1].lower()}-s{cfg.seed}"


def on_command_line(key: str) -> bool:
    """Whether this run's command line sets `key` (key=, +key=, ++key=)."""
    return any(o.lstrip("+~").startswith(f"{key}=") for o in HydraConfig.get().overrides.task)


def override_tags() -> list[str]:
    """W&B tags from the command line's overrides (e.g. model.depth=56), to filter the runs of a sweep."""
    overrides = HydraConfig.get().overrides.task
    return [o for o in overrides if len(o) <= 64 and not o.lstrip("+~").startswith(("hydra", "paths."))]


def sweep_group() -> str | None:
    """Jobs of one multirun share a W&B group named after the sweep dir."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep = Path(hc.sweep.dir)
    return f"{sweep.parent.name}/{sweep.name}"


def print_config(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    Console(stderr=True).print(tree)


def config_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
