"""Hydra callbacks: every job records its outcome in <job dir>/status.json, and a multirun ends with a summary.

Hydra's launchers run every job of a sweep even when some fail, then re-raise the first failure and exit 1
before `on_multirun_end`. So the summary of all jobs is printed at interpreter exit instead, after
Hydra's own error, and reads the status files, which also works for jobs that ran in other processes.
"""

from __future__ import annotations

import atexit
import json
import pickle
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnlab.errors import UserError
from cnnlab.provenance import provenance
from cnnlab.results import write_json

STATUS_FILE = "status.json"


class JobFailed(CompactHydraException):
    """Stands in for a job's exception: Hydra prints it as one line (the details are in status.json)."""


# running | completed | failed | interrupted (with step and resume command) | diverged (with step) |
# rejected (an error before any work: the report skips the dir)


def write_status(
    job_dir: Path, status: str, overrides: Sequence[str], error: BaseException | None = None, **fields: Any
) -> None:
    record: dict[str, Any] = {"status": status, "overrides": list(overrides), **fields}
    record.setdefault("provenance", provenance())  # a record restored after a refused resume keeps its own
    job_id = (read_status(job_dir) or {}).get("job_id")
    if job_id is not None:  # a submitit job requeued after a pre-emption finds its own id (cnnlab.sweep_resume)
        record.setdefault("job_id", job_id)
    if error is not None:
        record["error"] = f"{type(error).__name__}: {error}"
        if status == "failed":  # an unexpected failure: keep where it happened
            record["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_dir / STATUS_FILE, record)


def read_status(job_dir: Path) -> dict[str, Any] | None:
    path = job_dir / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class JobStatusCallback(Callback):
    """Writes status.json (running, completed or failed with the error) for every job, in its own process."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cnnlab import sweep_resume

        job_dir = _job_dir(config)
        previous = read_status(job_dir)  # a resumed run: kept, in case the resume is refused
        # a job of a resumed sweep, or a submitit job requeued: skip, resume or start again (the job reads it here)
        action = sweep_resume.job_action(config, job_dir, previous)
        if action == sweep_resume.SKIP:
            return  # completed before: its record stays as it is
        sweep_resume.prepare(job_dir, action)
        kept = {"previous": previous} if previous and previous.get("status") != "running" else {}
        fields = {"action": action, "job_id": sweep_resume.submitit_job_id(config)}
        write_status(job_dir, "running", _overrides(config), **{k: v for k, v in fields.items() if v}, **kept)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED:
            if (read_status(_job_dir(config)) or {}).get("status") != "completed":  # a skipped job's stays as it is
                write_status(_job_dir(config), "completed", _overrides(config))
            return
        error = job_return._return_value  # the job's exception; `.return_value` would raise it
        recorded = read_status(_job_dir(config)) or {}
        if recorded.get("status") not in ("diverged", "interrupted"):  # the job said it more precisely
            write_status(_job_dir(config), "failed", _overrides(config), error)
        if isinstance(error, UserError) or not _picklable(error):
            # a UserError needs no traceback; a worker pickles the exception, and one that can't be would abort
            # the whole sweep
            job_return.return_value = JobFailed(f"{type(error).__name__}: {error}")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cnnlab import sweep_resume  # now: at exit, an import that registers an atexit hook would fail

        sweep_dir, plan = Path(str(config.hydra.sweep.dir)), None
        if config.get("runtime") and config.runtime.get("resume"):  # the Preflight callback chose the sweep dir
            plan = sweep_resume.plan(sweep_dir, sweep_resume.grid(config) or [])
            print(f"cnnlab: resuming sweep {sweep_dir}: {sweep_resume.describe(plan)}", file=sys.stderr)
        atexit.register(print_summary, sweep_dir, plan)


def _picklable(error: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True


def _job_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.runtime.output_dir))


def _overrides(config: DictConfig) -> list[str]:
    return list(config.hydra.overrides.task)


def sweep_statuses(sweep_dir: Path) -> dict[Path, dict[str, Any] | None]:
    """Each job dir of a sweep (a dir holding .hydra/) with its status record, or None if it has none."""
    jobs = sorted({p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")}, key=_natural)
    return {job: read_status(job) for job in jobs}


def _natural(path: Path) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def print_summary(sweep_dir: Path, plan: dict[str, int] | None = None) -> None:
    """One line per job that did not complete, with its error, and a count of the rest (the whole grid of
    multirun.yaml: jobs the sweep never started too); a resumed sweep says what it skipped, resumed, started."""
    from rich.console import Console

    from cnnlab.sweep_resume import describe, is_grid, not_started

    console = Console(stderr=True, soft_wrap=True)
    statuses = sweep_statuses(sweep_dir)
    failed = {job: s for job, s in statuses.items() if s is not None and s["status"] in ("failed", "diverged")}
    done = sum(1 for s in statuses.values() if s is not None and s["status"] == "completed")
    unfinished, missing = len(statuses) - done - len(failed), len(not_started(sweep_dir))
    style = "bold red" if failed or unfinished or missing else "bold green"
    console.print(
        f"[{style}]sweep {sweep_dir}: {done} of {len(statuses) + missing} jobs completed, {len(failed)} failed"
        + (f", {unfinished} unfinished" if unfinished else "")
        + (f", {missing} not started" if missing else "")
        + "[/]",
        highlight=False,
    )
    if plan is not None:
        console.print(f"resumed: {describe(plan)}", highlight=False)
    for job, status in failed.items():
        console.print(
            f"  [red]{status['status']}[/] {job.relative_to(sweep_dir)}: {' '.join(status['overrides'])}",
            highlight=False,
        )
        console.print(f"         {status['error']}", markup=False, highlight=False)
    if (failed or unfinished or missing) and is_grid(sweep_dir):  # a search continues by running it again
        console.print(f"resume: cnnlab resume {sweep_dir}", highlight=False)
    console.print(f"report: cnnlab report {sweep_dir}", highlight=False)
