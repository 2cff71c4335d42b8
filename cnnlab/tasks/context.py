"""What a task gets (Context: config, RunInfo, device, logger) and what it gives back (TaskResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.config.overrides import keys, values
from cnnlab.records.tracking import NullLogger


@dataclass(frozen=True)
class RunInfo:
    """What Hydra knows about this run, read once by the app (cnnlab.app.run.run_info) and passed down."""

    run_dir: Path
    overrides: tuple[str, ...] = ()
    multirun: bool = False
    sweep_dir: Path | None = None
    parallel_jobs: int = 1  # joblib's n_jobs (-1 resolved to the cores)
    cpus_per_task: int | None = None  # submitit: the cores each job was given
    resumed: bool = False

    def on_command_line(self, key: str) -> bool:
        """Whether the command line sets `key` (key=, +key=, ++key=)."""
        return key in values(self.overrides)

    def sweep_group(self) -> str | None:
        """Jobs of one multirun share a W&B group named after the sweep dir."""
        return f"{self.sweep_dir.parent.name}/{self.sweep_dir.name}" if self.sweep_dir else None

    def tags(self) -> list[str]:
        """W&B tags from the command line's overrides (e.g. model.depth=56), to filter the runs of a sweep."""
        return [line for k, line in keys(self.overrides) if len(line) <= 64 and not k.startswith(("hydra", "paths."))]


@dataclass
class Context:
    """What every task gets: the composed config and the run's resources."""

    cfg: DictConfig
    info: RunInfo
    device: torch.device
    logger: NullLogger = field(default_factory=NullLogger)
    resume: dict[str, Any] | None = None  # the checkpoint state runtime.resume continues from

    @property
    def run_dir(self) -> Path:
        return self.info.run_dir

    def resolved(self) -> dict[str, Any]:
        """The whole config as plain values (what checkpoints store and W&B shows)."""
        return OmegaConf.to_container(self.cfg, resolve=True)  # type: ignore[return-value]


@dataclass
class TaskResult:
    """What a task computed; `publish` writes it (metrics.json, W&B, the table) and returns the monitored value."""

    metrics: dict[str, Any]
    title: str  # the summary table's title
    table: list[str]  # metrics shown in the table, in order
    monitor: str  # the metric returned to Hydra's sweepers
    figures: dict[str, Path] = field(default_factory=dict)  # W&B key -> PNG
    artifacts: list[tuple[Path, list[str]]] = field(default_factory=list)  # checkpoints and their W&B aliases
    tables: list[Any] = field(default_factory=list)  # more rich tables, printed before the summary
    error: Exception | None = None  # a result that is also a failure (diverged): published, then raised
