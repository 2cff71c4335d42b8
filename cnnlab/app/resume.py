"""The resume decision, in one place: what a run or a sweep job does with what its run dir holds.

- A single run with `runtime.resume=<run dir | checkpoint | auto>` continues a stopped run in that run's dir
  (history, checkpoints, W&B run), so it ends exactly as if it had never stopped. `auto` picks the newest run
  under paths.output_dir that was started as the same run and has a checkpoint. The Preflight callback finds
  the checkpoint and checks it is the same run before Hydra writes anything (from the checkpoint's header).
- A job of a resumed sweep (`cnnlab resume <sweep dir>`, or `-m ... runtime.resume=auto`), or a submitit job
  requeued after a pre-emption (its status.json holds its own job id), is skipped when it completed, resumed
  from `checkpoints/last.pt` when it was killed or interrupted, and started again otherwise.
- A job of `launcher=packed` whose training a pack of seeds did (cnnlab.app.packing; status `packed`) resumes
  from its `last.pt` at the last step: it tests, records and publishes as any run.

"The same run" has one meaning everywhere: the same overrides of what defines the result (not runtime,
logger, paths, the data location, the launcher: `cnnlab.config.schema.defines_result`), parsed by Hydra.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.config.overrides import keys
from cnnlab.config.schema import defines_result
from cnnlab.errors import CheckpointError, ConfigError, UserError
from cnnlab.records import checkpoint
from cnnlab.records.results import flat
from cnnlab.records.rundir import CHECKPOINTS, HISTORY, METRICS, TRAIN_LOG
from cnnlab.records.status import read_status
from cnnlab.training.hardware import resolve_device, resolve_precision

SKIP, RESUME, START, MISMATCH = "skip", "resume", "start", "mismatch"
PACKED = "packed"  # a job's status once a pack of seeds trained it: its own job then tests and records it
ALLOWED = "a run dir, <run dir>/checkpoints/last.pt, or auto"
log = logging.getLogger("cnnlab")
RESUME_SUBDIR = ".hydra/resume"  # a resumed run's config; .hydra/ keeps how it started
MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of a sweep, in its sweep dir


def comparable(overrides: Iterable[Any]) -> tuple[str, ...]:
    """The overrides that define a run's result, sorted: two runs with equal ones are the same run."""
    return tuple(sorted(line for key, line in keys(overrides) if defines_result(key)))


def without_resume(overrides: Iterable[Any]) -> list[str]:
    return [line for key, line in keys(overrides) if key != "runtime.resume"]


def run_dir_of(path: Path) -> Path:
    return path.parent.parent


# ---------------------------------------------------------------- a single run: runtime.resume=...


def find_checkpoint(spec: str, output_dir: Path, overrides: Sequence[str]) -> Path:
    """The checkpoint `runtime.resume=spec` points at; it lies in <run dir>/checkpoints/."""
    if spec == "auto":
        return newest_matching(output_dir, overrides)
    path = Path(spec)
    if path.is_dir():
        path = path / CHECKPOINTS / "last.pt"
        if not path.is_file():
            raise CheckpointError(
                f"runtime.resume={spec}: {path} does not exist; the run stopped before its first checkpoint "
                "(or ran with runtime.checkpoint=false). Start it again without runtime.resume."
            )
        return path
    if path.is_file() and path.parent.name == CHECKPOINTS:
        return path
    raise ConfigError("runtime.resume", spec, ALLOWED, "runtime.resume=auto")


def newest_matching(output_dir: Path, overrides: Sequence[str]) -> Path:
    wanted = comparable(overrides)
    found = []
    for file in Path(output_dir).rglob("overrides.yaml"):
        last = run_dir_of(file) / CHECKPOINTS / "last.pt"
        if file.parent.name == ".hydra" and last.is_file() and comparable(OmegaConf.load(file)) == wanted:
            found.append(last)
    if not found:
        shown = " ".join(wanted) or "(none)"
        raise CheckpointError(
            f"runtime.resume=auto: no run under {output_dir} was started with the overrides {shown} and has a "
            "checkpoint to resume. Pass the run dir instead: runtime.resume=<run dir>."
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint with a config that would compute something else (another model, lr...),
    saying each key that differs with both values."""
    before, now = flat(saved), flat(current)
    if "trainer.precision" in now:  # auto as it resolves on this machine; an explicit change is allowed
        now["trainer.precision"] = resumed_precision(
            before.get("trainer.precision"), now["trainer.precision"], str(now.get("runtime.device", "auto"))
        )
    differ = [
        f"{key}: {before.get(key, '<unset>')!r} in the checkpoint, {now.get(key, '<unset>')!r} now"
        for key in sorted(before.keys() | now.keys())
        if defines_result(key) and before.get(key, "<unset>") != now.get(key, "<unset>")
    ]
    if differ:
        raise CheckpointError(
            f"{path} was written by a run with a different config, so this run cannot continue it: "
            + "; ".join(differ[:10])
            + ". Resume with the overrides the run was started with (its .hydra/overrides.yaml)."
        )


def resumed_precision(saved: str | None, spec: str | None, device_spec: str) -> str | None:
    """The precision a resume compares with the checkpoint's (bit-exact resume needs the same one).

    `auto` must resolve here to what the checkpoint trained in; an explicit other value is the user's choice:
    the run continues in it, with a warning, as a different computation from that step on.
    """
    if saved is None or spec is None or spec == saved:
        return spec
    if spec == "auto":
        resolved, _ = resolve_precision("auto", resolve_device(device_spec))
        if resolved != saved:
            raise ConfigError(
                "trainer.precision",
                "auto",
                f"{saved}, the precision the checkpoint trained in (auto gives {resolved} on this machine)",
                f"trainer.precision={saved}",
            )
        return saved
    log.warning("resuming a run trained in precision %s in precision %s, as set: it will not be bit-exact", saved, spec)
    return saved


def resume_command(overrides: Sequence[str], run_dir: Path) -> str:
    """The command line that continues this run."""
    args = [*without_resume(overrides), f"runtime.resume={run_dir}"]
    return "python -m cnnlab " + " ".join(shlex.quote(a) for a in args)


def load(path: Path, cfg: DictConfig) -> dict[str, Any]:
    """The checkpoint state a run continues from (the one full load), checked to be the same run."""
    state = checkpoint.load(path)
    check_same_run(state["config"], OmegaConf.to_container(cfg, resolve=True), path)  # type: ignore[arg-type]
    for stale in path.parent.glob(".*.tmp"):  # left by a kill during a checkpoint write
        stale.unlink()
    return state


# ---------------------------------------------------------------- a job of a sweep


def grid(config: DictConfig) -> list[list[str]] | None:
    """The jobs of a multirun config (as composed, or a sweep's multirun.yaml), in launch order; None when the
    sweeper is not Hydra's grid (an Optuna search proposes its jobs as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # only sweeps need it: not at start-up
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith("BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in config.hydra.overrides.task]
    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(without_resume(lines)), None)
    except HydraException:
        return None
    return [job for batch in batches for job in batch]


@dataclass(frozen=True)
class JobPlan:
    """What a sweep job does: SKIP (completed), RESUME from `checkpoint`, START again, or None (a fresh job)."""

    action: str | None
    checkpoint: Path | None = None
    job_id: str | None = None  # the submitit job id, the same after a requeue


def action(job_dir: Path, overrides: Sequence[str], record: dict[str, Any] | None) -> str:
    """What a job of a resumed sweep does with what its job dir holds."""
    started = job_dir / ".hydra" / "overrides.yaml"
    if not started.is_file():
        return START
    if comparable(OmegaConf.load(started)) != comparable(overrides):  # e.g. hydra.sweep.subdir was changed
        return MISMATCH
    status = (record or {}).get("status")
    if status == "completed" and (job_dir / METRICS).is_file():
        return SKIP
    if status in (None, "running", "interrupted", PACKED) and (job_dir / CHECKPOINTS / "last.pt").is_file():
        return RESUME
    return START


def plan_job(hydra: DictConfig, resume: Any, job_dir: Path) -> JobPlan:
    """The plan of a multirun job: it continues a sweep when runtime.resume is set (the sweep was resumed) or
    when submitit requeued it (its status.json holds its own job id); any other job starts fresh."""
    job_id = str(hydra.job.id) if os.environ.get("SUBMITIT_EXECUTOR") else None
    record = read_status(job_dir)
    requeued = job_id is not None and (record or {}).get("job_id") == job_id
    packed = (record or {}).get("status") == PACKED  # a pack trained it (launcher=packed): it finishes from last.pt
    if not (resume or requeued or packed):
        return JobPlan(None, job_id=job_id)
    what = action(job_dir, list(hydra.overrides.task), record)
    if what == MISMATCH:
        raise UserError(
            f"{job_dir} was started with other overrides (its .hydra/overrides.yaml) than this job of the grid: "
            "the sweep's job dirs do not follow its grid (was hydra.sweep.subdir changed?). Resume the sweep with "
            "its own command: cnnlab resume <sweep dir>"
        )
    if what == START:
        clear(job_dir)
    return JobPlan(what, job_dir / CHECKPOINTS / "last.pt" if what == RESUME else None, job_id)


def clear(job_dir: Path) -> None:
    """Before a job starts again: drop what an earlier attempt left; a first start keeps its config in .hydra/."""
    for name in (METRICS, HISTORY, TRAIN_LOG):
        (job_dir / name).unlink(missing_ok=True)
    shutil.rmtree(job_dir / CHECKPOINTS, ignore_errors=True)
    first, again = job_dir / ".hydra", job_dir / RESUME_SUBDIR
    if not (first / "overrides.yaml").is_file() and again.is_dir():
        for file in again.iterdir():
            file.replace(first / file.name)
        again.rmdir()
        OmegaConf.save(without_resume(OmegaConf.load(first / "overrides.yaml")), first / "overrides.yaml")


def recorded(job_dir: Path, monitor: str | None) -> float:
    """The monitored value a completed job recorded (what a skipped job returns to the sweeper)."""
    value = json.loads((job_dir / METRICS).read_text()).get(monitor) if monitor else None
    return float(value) if isinstance(value, (int, float)) else float("nan")
