"""Resume a whole sweep: `cnnlab resume <sweep dir>`, or `python -m cnnlab -m <the same sweep> runtime.resume=auto`.

The grid is the one the sweep's `multirun.yaml` records (hydra.sweeper.params and the command line's sweeps,
expanded as Hydra's BasicSweeper expands them), so a resumed sweep launches the same jobs in the same order
into the same sweep dir, and Hydra gives each job its job dir of the first launch. Each job then does what its
job dir says (`action`):

- completed: skipped; its files stay as they are and the job returns the recorded monitored value;
- killed or interrupted (status running or interrupted) with `checkpoints/last.pt`: resumed in place, as
  `runtime.resume=<job dir>` would (bit-exact, same W&B run);
- anything else (failed, diverged, rejected, no checkpoint, never started): started again in that dir.

A submitit job requeued after a pre-emption or time-out runs the same Hydra job again: its job dir's status
holds the same submitit job id, so it resumes the same way without runtime.resume.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, read_write

from cnnlab.app.resume import (
    MISMATCH,
    MULTIRUN_FILE,
    RESUME,
    RESUME_SUBDIR,
    SKIP,
    START,
    action,
    comparable,
    grid,
    without_resume,
)
from cnnlab.errors import UserError
from cnnlab.records.status import read_status, sweep_statuses


def job_dirs(sweep_dir: Path) -> dict[tuple[str, ...], Path]:
    """The job dirs a sweep has (each holds .hydra/overrides.yaml), by their comparable overrides."""
    return {comparable(OmegaConf.load(job / ".hydra" / "overrides.yaml")): job for job in sweep_statuses(sweep_dir)}


def not_started(sweep_dir: Path) -> list[tuple[int, list[str]]]:
    """The jobs (number, overrides) of the sweep's grid (its multirun.yaml) that have no job dir: the sweep
    stopped before them."""
    path = sweep_dir / MULTIRUN_FILE
    jobs = grid(OmegaConf.load(path)) if path.is_file() else None
    have = job_dirs(sweep_dir) if jobs else {}
    return [(num, job) for num, job in enumerate(jobs or []) if comparable(job) not in have]


def is_grid(sweep_dir: Path) -> bool:
    """Whether the sweep in `sweep_dir` is a grid that `cnnlab resume` continues (not a search)."""
    path = sweep_dir / MULTIRUN_FILE
    return path.is_file() and grid(OmegaConf.load(path)) is not None


def plan(sweep_dir: Path, jobs: Sequence[Sequence[str]]) -> dict[str, int]:
    """How many jobs a resumed sweep skips, resumes and starts (and how many of those never started)."""
    have = job_dirs(sweep_dir) if sweep_dir.is_dir() else {}
    counts = {SKIP: 0, RESUME: 0, START: 0, "new": 0, MISMATCH: 0}
    for job in jobs:
        job_dir = have.get(comparable(job))
        what = action(job_dir, job, read_status(job_dir)) if job_dir else START
        counts[what] += 1
        counts["new"] += job_dir is None
    return counts


def plan_text(counts: dict[str, int]) -> str:
    total = sum(counts[k] for k in (SKIP, RESUME, START, MISMATCH))
    return (
        f"{total} jobs: {counts[SKIP]} completed (skipped), {counts[RESUME]} resumed from their checkpoint, "
        f"{counts[START]} started ({counts['new']} never started before)"
    )


def find_sweep(config: DictConfig) -> Path:
    """The sweep `-m ... runtime.resume=auto` continues: hydra.sweep.dir when the command line sets it, else the
    newest sweep under paths.output_dir with the same grid."""
    wanted = [comparable(job) for job in grid(config) or []]
    if any(str(o).startswith("hydra.sweep.dir=") for o in config.hydra.overrides.hydra):
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _check_same_grid(sweep_dir, wanted)
        return sweep_dir
    found = []
    for file in Path(str(config.paths.output_dir)).rglob(MULTIRUN_FILE):
        jobs = grid(OmegaConf.load(file))
        if jobs is not None and [comparable(job) for job in jobs] == wanted:
            found.append(file.parent)
    if not found:
        raise UserError(
            f"runtime.resume=auto: no sweep under {config.paths.output_dir} ran this grid. Resume a sweep by its "
            "dir: cnnlab resume <sweep dir> (or -m ... hydra.sweep.dir=<sweep dir> runtime.resume=auto)"
        )
    return max(found, key=lambda p: (p / MULTIRUN_FILE).stat().st_mtime)


def _check_same_grid(sweep_dir: Path, wanted: list[tuple[str, ...]]) -> None:
    path = sweep_dir / MULTIRUN_FILE
    if not path.is_file():
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} is not allowed: it holds no {MULTIRUN_FILE}, so no sweep to resume"
        )
    jobs = grid(OmegaConf.load(path))
    if jobs is None or [comparable(job) for job in jobs] != wanted:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} is not allowed: it ran another grid than these overrides. Resume it with "
            f"its own overrides: cnnlab resume {sweep_dir}"
        )


def redirect(config: DictConfig) -> Path:
    """Point a multirun with runtime.resume=auto at the sweep it continues (its dir; each job's config goes to
    .hydra/resume/); returns that dir. Called before Hydra writes anything."""
    if str(config.runtime.resume) != "auto":
        raise UserError(
            f"runtime.resume={config.runtime.resume} is not allowed in a multirun: auto (continue the sweep with "
            "these overrides). Fix it with runtime.resume=auto, or: cnnlab resume <sweep dir>"
        )
    if grid(config) is None:
        raise UserError(
            "runtime.resume=auto is not allowed in this multirun: it resumes a grid (Hydra's basic sweeper), and "
            "this sweep is a search. Run the search again, or resume one run with runtime.resume=<run dir>"
        )
    sweep_dir = find_sweep(config).absolute()
    kept = [
        o for o in config.hydra.overrides.hydra if not str(o).startswith(("hydra.sweep.dir=", "hydra.output_subdir="))
    ]
    with read_write(config.hydra):
        config.hydra.sweep.dir = str(sweep_dir)
        # the jobs compose their config again from these: the same sweep dir, and .hydra/ kept as it started
        config.hydra.overrides.hydra = [
            *kept,
            f"hydra.sweep.dir={quoted(sweep_dir)}",
            f"hydra.output_subdir={RESUME_SUBDIR}",
        ]
    return sweep_dir


def quoted(path: Path) -> str:
    """A path as a Hydra override value: quoted, so commas, spaces and '=' stay part of it."""
    return "'" + str(path).replace("'", "\\'") + "'"


def command(sweep_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """The arguments of `python -m cnnlab` that resume the sweep in `sweep_dir` (from its multirun.yaml)."""
    path = sweep_dir / MULTIRUN_FILE
    if not path.is_file():
        raise UserError(
            f"{sweep_dir} is not a sweep dir: it holds no {MULTIRUN_FILE} (pass outputs/multirun/<date>/<time>)"
        )
    recorded = OmegaConf.load(path).hydra.overrides
    dropped = ("hydra.mode=", "hydra.sweep.dir=", "hydra.output_subdir=")
    hydra = [str(o) for o in recorded.hydra if not str(o).startswith(dropped)]
    sweep = f"hydra.sweep.dir={quoted(sweep_dir.absolute())}"
    return ["-m", *hydra, *without_resume(map(str, recorded.task)), *extra, sweep, "runtime.resume=auto"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cnnlab resume",
        description="Resume a sweep: skip its completed jobs, resume the interrupted ones from their checkpoints, "
        "start the rest (failed, or never started). The same as python -m cnnlab -m <its overrides> "
        "hydra.sweep.dir=<sweep dir> runtime.resume=auto.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep's dir, outputs/multirun/<date>/<time>")
    parser.add_argument("overrides", nargs="*", help="overrides of how it runs, e.g. hydra.launcher.n_jobs=4")
    args = parser.parse_args(argv)
    try:
        arguments = command(args.sweep_dir, args.overrides)
    except UserError as e:
        print(f"cnnlab resume: error: {e}", file=sys.stderr)
        sys.exit(2)
    from cnnlab.app.launch import launch

    launch(arguments)
