"""Hydra callbacks: checks before anything is written (Preflight), and a multirun's summary of its jobs.

Hydra's launchers run every job of a sweep even when some fail, then re-raise the first failure and exit 1
before `on_multirun_end`. So the summary of all jobs is printed at interpreter exit instead, after
Hydra's own error, and reads the status files, which also works for jobs that ran in other processes.
"""

from __future__ import annotations

import atexit
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cnnlab.app.preflight import check_run, ensure_writable
from cnnlab.errors import Refused, UserError
from cnnlab.records.status import sweep_statuses


class Preflight(Callback):
    """Before Hydra writes anything: a run's checks (cnnlab.app.preflight); a sweep's, every value it will try,
    and with runtime.resume=auto the earlier sweep it continues, in that sweep's dir (cnnlab.sweeps.resume)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_run(config)
        except UserError as e:
            raise Refused(e) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cnnlab.sweeps.preflight import check_sweep
        from cnnlab.sweeps.resume import redirect

        try:
            if "runtime" in config and config.runtime.get("resume"):  # continue a sweep: its dir, its job dirs
                redirect(config)
            check_sweep(config)
            ensure_writable(Path(str(config.hydra.sweep.dir)))
        except UserError as e:
            raise Refused(e) from None


class JobFailed(CompactHydraException):
    """Stands in for a job's exception: Hydra prints it as one line (the details are in status.json)."""


class JobStatusCallback(Callback):
    """A failed job's exception goes back to the sweep as one line (the job wrote its status.json); a multirun
    ends with the summary of every job of its grid."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED or config.hydra.mode != RunMode.MULTIRUN:
            return  # a single run's exception reaches the CLI as it is
        error = job_return._return_value  # the job's exception; `.return_value` would raise it
        if isinstance(error, UserError) or not _picklable(error):
            # a UserError needs no traceback; a worker pickles the exception, and one that can't be would abort
            # the whole sweep
            job_return.return_value = JobFailed(f"{type(error).__name__}: {error}")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cnnlab.sweeps import resume  # now: at exit, an import that registers an atexit hook would fail

        sweep_dir, plan = Path(str(config.hydra.sweep.dir)), None
        if config.get("runtime") and config.runtime.get("resume"):  # the Preflight callback chose the sweep dir
            plan = resume.plan(sweep_dir, resume.grid(config) or [])
            print(f"cnnlab: resuming sweep {sweep_dir}: {resume.plan_text(plan)}", file=sys.stderr)
        atexit.register(print_summary, sweep_dir, plan)


class SlurmInterrupt(Callback):
    """launcher=slurm: Ctrl-C stops the sweep's SLURM jobs too, not only the launcher that waits on them (its
    jobs would run on, and the summary's `cnnlab resume` would start a second copy of each). The first Ctrl-C
    cancels this launch's jobs that have not started and sends SIGINT to the running ones, which finish their
    step, write last.pt and record `interrupted`; one line says so, and the launcher exits 130."""

    installed: Any = None  # the handler this process has on SIGINT for a SLURM sweep, and the one it replaced
    replaced: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not str(OmegaConf.select(config, "hydra.launcher._target_", default="")).endswith(".SlurmLauncher"):
            return
        SlurmInterrupt.restore()  # an earlier sweep's handler, in a process that runs several (cnnlab.multirun)
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # ignored (a script's `&`), or taken
            return
        folders = Path(str(config.hydra.launcher.submitit_folder)).parent  # <sweep dir>/.submitit
        before = set(_slurm_job_ids(folders))  # a resumed sweep's earlier jobs are not this launch's
        sweep_dir = config.hydra.sweep.dir

        def interrupted(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: Python's own
            stop_slurm_jobs(sorted(set(_slurm_job_ids(folders)) - before, key=int), sweep_dir)
            raise SystemExit(128 + signal.SIGINT)

        SlurmInterrupt.replaced = signal.signal(signal.SIGINT, interrupted)
        SlurmInterrupt.installed = interrupted

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        SlurmInterrupt.restore()

    @staticmethod
    def restore() -> None:
        """Give SIGINT back the handler it had before a SLURM sweep took it (if that sweep's is still there)."""
        if SlurmInterrupt.installed is not None and signal.getsignal(signal.SIGINT) is SlurmInterrupt.installed:
            signal.signal(signal.SIGINT, SlurmInterrupt.replaced)
        SlurmInterrupt.installed = SlurmInterrupt.replaced = None


SLURM_JOB_FOLDER = re.compile(r"^(\d+)(_\d+)?$")  # submitit's folder per job: <job id>, or <array id>_<task>


def _slurm_job_ids(folders: Path) -> list[str]:
    if not folders.is_dir():
        return []
    return [m.group(1) for m in (SLURM_JOB_FOLDER.match(p.name) for p in folders.iterdir()) if m]


def stop_slurm_jobs(job_ids: list[str], sweep_dir: str) -> None:
    """Cancel the jobs (array tasks) that have not started, SIGINT the running ones; say it in one line."""
    if not job_ids:
        print("cnnlab: Ctrl-C: the sweep had submitted no SLURM job yet", file=sys.stderr)
        return
    ids = ",".join(job_ids)
    try:
        done = [
            subprocess.run(["scancel", *flags, *job_ids], capture_output=True, text=True, timeout=30)
            for flags in (["--state=PENDING"], ["--signal=INT"])
        ]
        error = " ".join(" ".join(d.stderr for d in done if d.returncode != 0).split())
    except (OSError, subprocess.SubprocessError) as e:
        error = str(e)
    if error:
        print(f"cnnlab: Ctrl-C: could not cancel the sweep's SLURM jobs {ids} ({error}); they may run on, cancel "
              f"them with: scancel {' '.join(job_ids)}", file=sys.stderr)  # fmt: skip
    else:
        print(f"cnnlab: Ctrl-C: cancelled the sweep's SLURM jobs {ids} (the running ones write last.pt at their "
              f"step and stop); continue with: cnnlab resume {sweep_dir}", file=sys.stderr)  # fmt: skip


def _picklable(error: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True


def print_summary(sweep_dir: Path, plan: dict[str, int] | None = None) -> None:
    """One line per job that did not complete, with its error, and a count of the rest (the whole grid of
    multirun.yaml: jobs the sweep never started too); a resumed sweep says what it skipped, resumed, started."""
    from rich.console import Console

    from cnnlab.sweeps.resume import is_grid, not_started, plan_text

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
        console.print(f"resumed: {plan_text(plan)}", highlight=False)
    for job, status in failed.items():
        console.print(
            f"  [red]{status['status']}[/] {job.relative_to(sweep_dir)}: {' '.join(status['overrides'])}",
            highlight=False,
        )
        console.print(f"         {status['error']}", markup=False, highlight=False)
    if (failed or unfinished or missing) and is_grid(sweep_dir):  # a search continues by running it again
        console.print(f"resume: cnnlab resume {sweep_dir}", highlight=False)
    console.print(f"report: cnnlab report {sweep_dir}", highlight=False)
