"""`cnnlab report <dir>`: a sweep's run dirs -> results.md, figures/*.png and the same table in the terminal.

A run dir is any folder under <dir> holding .hydra/overrides.yaml: the jobs of a Hydra multirun, or the runs
W&B sweep agents wrote under one output dir. Each is read with its status.json (see cnnlab.sweeps.callbacks):
- completed: metrics.json has test_acc; these make the table;
- failed: status failed, with its error, or diverged (the loss became NaN), with the step and the error;
- unfinished: still running, killed (no status.json, or one still saying running), or interrupted by SIGTERM
  or Ctrl-C, listed with the step it stopped at and the command that resumes it;
- rejected (a config or data error stopped it before any work): not a run, left out entirely.
- not started: a job of a sweep's grid (its multirun.yaml) with no run dir: the sweep stopped before it.
One table per dataset (and task); its rows group the completed runs that differ only in their seed: test
accuracy is the mean +- std over distinct seeds. CIFAR-10 tables add He et al.'s errors (report.paper); a
table with two or more depths of plain and residual nets ends with the degradation verdict.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cnnlab.errors import UserError
from cnnlab.report.canvas import report_canvas
from cnnlab.report.plots import draw_figures
from cnnlab.report.runs import Run, load_runs
from cnnlab.report.search import write_search
from cnnlab.report.table import markdown, print_table, tables

__all__ = ["Run", "load_runs", "main", "report"]


def report(root: Path, figures: bool = True) -> list[Run]:
    """Write results.md and figures/ into `root`, print the table; returns the runs it found."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: pass the sweep dir, e.g. outputs/multirun/<date>/<time>")
    runs = load_runs(root)
    if not runs and report_canvas(root, figures):  # only localize and cam runs: their table (report.canvas)
        return runs
    if not runs:
        raise UserError(f"no runs under {root}: a run dir holds .hydra/overrides.yaml (pass the sweep dir)")
    groups = tables(runs)  # one per dataset (and task)
    if figures:
        for table in groups:
            table.figures = draw_figures(table, root / "figures", suffix=f"-{table.slug}" if len(groups) > 1 else "")
    written = [path for table in groups for path in table.figures]
    (root / "results.md").write_text(markdown(root, runs, groups))  # a table of runs of mixed code says so
    print_table(root, groups)
    written += write_search(root, runs, figures)  # an Optuna search: its trials, best command, figure
    for run in runs:
        if run.status != "completed":
            print(f"{run.status}: {run.dir.relative_to(root)} ({' '.join(run.overrides)}) {run.reason or ''}")
    print(f"wrote {root / 'results.md'}" + "".join(f", {p}" for p in written))
    report_canvas(root, figures, append=True)  # localize and cam runs, after the classify tables
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cnnlab report", description="Summarise a sweep: results.md, figures/ and a table of its runs."
    )
    parser.add_argument("dir", type=Path, help="a multirun dir, or an output dir W&B agents wrote runs under")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNGs")
    args = parser.parse_args(argv)
    try:
        report(args.dir, figures=not args.no_figures)
    except UserError as e:
        print(f"cnnlab report: error: {e}", file=sys.stderr)
        sys.exit(2)
