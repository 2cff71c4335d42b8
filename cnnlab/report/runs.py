"""The runs of a sweep, read from their run dirs: config, overrides, metrics, history and how each ended."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.config.overrides import values
from cnnlab.records.rundir import HISTORY, METRICS, read_rows
from cnnlab.records.status import sweep_statuses
from cnnlab.sweeps.resume import MULTIRUN_FILE, not_started


@dataclass
class Run:
    dir: Path
    overrides: list[str]
    config: DictConfig
    metrics: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None  # why a failed run failed
    note: str | None = None  # where an unfinished run stopped and how to resume it
    started: bool = True  # False: a job of the sweep's grid (multirun.yaml) the sweep stopped before

    @property
    def reason(self) -> str | None:
        return self.error or self.note

    @property
    def status(self) -> str:
        if not self.started:
            return "not started"
        return "completed" if self.metrics is not None else "failed" if self.error else "unfinished"

    @property
    def overridden(self) -> dict[str, str]:
        """What the run's overrides set, key -> value as typed ("+key=" and "~key=" as key)."""
        return values(self.overrides)

    def get(self, key: str) -> Any:
        """A config value by dotted key, e.g. model.depth; None when the config has no such key."""
        return OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)


def load_runs(root: Path) -> list[Run]:
    """The training runs under root (task=classify; other tasks' runs are left out), and the jobs of each sweep's
    grid (its multirun.yaml) that never started."""
    runs = _run_dirs(root)
    for multirun in sorted(root.rglob(MULTIRUN_FILE)):
        sweep_dir = multirun.parent
        for num, job in not_started(sweep_dir):  # its job dir-to-be: Hydra numbers the jobs in grid order
            note = f"not started; resume the sweep with `cnnlab resume {sweep_dir}`"
            runs.append(Run(sweep_dir / str(num), job, OmegaConf.create(), note=note, started=False))
    return runs


def _run_dirs(root: Path) -> list[Run]:
    runs = []
    for job, status in sweep_statuses(root).items():
        if status is not None and status.get("status") == "rejected":  # stopped before any work: not a run
            continue
        overrides = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        config_path = job / ".hydra" / "config.yaml"
        config = OmegaConf.load(config_path) if config_path.exists() else OmegaConf.create()
        run = Run(job, [str(o) for o in overrides], config)  # type: ignore[union-attr, arg-type]
        if run.get("task.name") not in (None, "classify"):
            continue
        metrics = json.loads((job / METRICS).read_text()) if (job / METRICS).exists() else {}
        if "test_acc" in metrics:
            run.metrics = metrics
            run.history = read_rows(job / HISTORY)
        elif status is not None and status.get("status") in ("failed", "diverged", "interrupted"):
            note_status(run, status)
        elif "status" in metrics:  # e.g. diverged, without a status.json
            run.error = f"{metrics['status']}: {metrics.get('error', '')}"
        runs.append(run)
    return runs


def note_status(run: Run, status: dict[str, Any]) -> None:
    """A failed run's error, or where an interrupted run stopped and the command that resumes it."""
    at = f" at step {status['step']}" if status.get("step") is not None else ""
    if status["status"] == "failed":
        run.error = status.get("error") or "failed"
    elif status["status"] == "diverged":
        error = str(status.get("error") or "the training loss became NaN or inf").removeprefix("DivergenceError: ")
        run.error = f"diverged{at}: {error}"
    else:
        resume = status.get("resume_command")
        run.note = f"interrupted{at}" + (f", resume with `{resume}`" if resume else "")
