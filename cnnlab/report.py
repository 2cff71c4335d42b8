"""`cnnlab report <dir>`: a sweep's run dirs -> results.md, figures/*.png and the same table in the terminal.

A run dir is any folder under <dir> holding .hydra/overrides.yaml: the jobs of a Hydra multirun, or the runs
W&B sweep agents wrote under one output dir. Each is read with its status.json (see cnnlab.callbacks):
- completed: metrics.json has test_acc; these make the table;
- failed: status failed, with its error, or diverged (the loss became NaN), with the step and the error;
- unfinished: still running, killed (no status.json, or one still saying running), or interrupted by SIGTERM
  or Ctrl-C, listed with the step it stopped at and the command that resumes it;
- rejected (a config or data error stopped it before any work): not a run, left out entirely.
Rows group the completed runs that differ only in their seed: test accuracy is the mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.callbacks import sweep_statuses
from cnnlab.config import defines_result
from cnnlab.errors import UserError
from cnnlab.figures import pyplot, save_figure

# model keys shown as their own columns; other overrides that vary across the sweep go into "setting"
MODEL_COLUMNS = ("model.depth", "model.residual", "model.shortcut")
HEADERS = ("depth", "residual", "shortcut", "params", "best val acc", "test acc", "seeds", "epochs", "wall time")


@dataclass
class Run:
    dir: Path
    overrides: list[str]
    config: DictConfig
    metrics: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None  # why a failed run failed
    note: str | None = None  # where an unfinished run stopped and how to resume it

    @property
    def reason(self) -> str | None:
        return self.error or self.note

    @property
    def status(self) -> str:
        return "completed" if self.metrics is not None else "failed" if self.error else "unfinished"

    def get(self, key: str) -> Any:
        """A config value by dotted key, e.g. model.depth; None when the config has no such key."""
        return OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)


@dataclass
class Row:
    """The completed runs of one setting, over seeds."""

    key: tuple[Any, ...]
    runs: list[Run]

    def mean(self, metric: str) -> float:
        return statistics.fmean(float(r.metrics[metric]) for r in self.runs)  # type: ignore[index]

    def std(self, metric: str) -> float:
        values = [float(r.metrics[metric]) for r in self.runs]  # type: ignore[index]
        return statistics.stdev(values) if len(values) > 1 else 0.0


def load_runs(root: Path) -> list[Run]:
    """The training runs under root (task=classify; other tasks' runs are left out)."""
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
        metrics = json.loads((job / "metrics.json").read_text()) if (job / "metrics.json").exists() else {}
        if "test_acc" in metrics:
            run.metrics = metrics
            history = job / "history.jsonl"
            if history.exists():
                run.history = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        elif status is not None and status.get("status") in ("failed", "diverged", "interrupted"):
            describe(run, status)
        elif "status" in metrics:  # e.g. diverged, without a status.json
            run.error = f"{metrics['status']}: {metrics.get('error', '')}"
        runs.append(run)
    return runs


def describe(run: Run, status: dict[str, Any]) -> None:
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


def varying_overrides(runs: Sequence[Run]) -> list[str]:
    """Override keys (other than seed and the model columns) whose value differs between runs."""
    values: dict[str, set[str]] = {}
    for run in runs:
        for key, value in _split(run.overrides).items():
            values.setdefault(key, set()).add(value)
    launch = ("hydra", "launcher", "trainer.resume")  # where and how jobs were launched (0.1 named resume so)
    keys = [k for k in values if k not in ("seed", *MODEL_COLUMNS) and defines_result(k) and not k.startswith(launch)]
    return [k for k in keys if len(values[k]) > 1 or any(k not in _split(r.overrides) for r in runs)]


def _split(overrides: Sequence[str]) -> dict[str, str]:
    return dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)


def group_rows(runs: Sequence[Run]) -> tuple[list[Row], list[str]]:
    """Completed runs grouped by setting (everything but the seed), plain before residual, then by depth."""
    done = [r for r in runs if r.status == "completed"]
    setting_keys = varying_overrides(done)
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in done:
        setting = tuple(_split(run.overrides).get(k, "") for k in setting_keys)
        key = (*(run.get(k) for k in MODEL_COLUMNS), *setting)
        groups.setdefault(key, []).append(run)
    rows = [Row(key, sorted(rs, key=lambda r: r.get("seed") or 0)) for key, rs in groups.items()]
    rows.sort(key=lambda row: (bool(row.key[1]), str(row.key[2]), row.key[0] or 0, *map(str, row.key[3:])))
    return rows, setting_keys


def cells(row: Row, setting_keys: Sequence[str]) -> list[str]:
    depth, residual, shortcut, *setting = row.key
    kind = "-" if residual is None else "residual" if residual else "plain"
    return [
        "-" if depth is None else str(depth),
        kind,
        "-" if shortcut is None or not residual else str(shortcut),
        _params(int(row.runs[0].metrics["params"])),  # type: ignore[index]
        f"{100 * row.mean('best_val_acc'):.2f}",
        f"{100 * row.mean('test_acc'):.2f} ± {100 * row.std('test_acc'):.2f}",
        str(len({r.get("seed") for r in row.runs})),  # distinct seeds (a run repeated is one seed)
        f"{row.mean('epochs'):.2f}" if row.mean("epochs") < 10 else f"{row.mean('epochs'):.0f}",
        _duration(row.mean("seconds")),
        *([" ".join(f"{k}={v}" for k, v in zip(setting_keys, setting, strict=True))] if setting_keys else []),
    ]


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def markdown(
    root: Path, runs: Sequence[Run], rows: Sequence[Row], setting_keys: Sequence[str], figures: list[Path]
) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "unfinished")}
    headers = [*HEADERS, *(["setting"] if setting_keys else [])]
    lines = [
        f"# Results: {root.name}",
        "",
        f"{len(runs)} runs: {counts['completed']} completed, {counts['failed']} failed, "
        f"{counts['unfinished']} unfinished. Accuracies in %; test acc is the mean ± std over seeds; "
        "epochs and wall time are means per run.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if h not in ("residual", "shortcut", "setting") else "---" for h in headers) + "|",
    ]
    lines += ["| " + " | ".join(cells(row, setting_keys)) + " |" for row in rows]
    lines += ["", *(f"![{p.stem}](figures/{p.name})" for p in figures)]
    for status, title in (
        ("failed", "Failed runs"),
        ("unfinished", "Unfinished runs (running, killed or interrupted)"),
    ):
        listed = [r for r in runs if r.status == status]
        if listed:
            lines += ["", f"## {title}", ""]
            for run in listed:
                reason = f": {run.reason}" if run.reason else ""
                lines.append(f"- `{run.dir.relative_to(root)}` ({' '.join(run.overrides)}){reason}")
    return "\n".join(lines) + "\n"


def error_vs_depth(rows: Sequence[Row], path: Path) -> Path | None:
    """Test error vs depth, plain and residual (He et al. 2016, Table 6 as a plot)."""
    series: dict[str, list[Row]] = {}
    for row in rows:
        depth, residual = row.key[0], row.key[1]
        if depth is not None and residual is not None:
            series.setdefault(_label(row), []).append(row)
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r.key[0])
        ax.errorbar(
            [r.key[0] for r in rs],
            [100 * (1 - r.mean("test_acc")) for r in rs],
            yerr=[100 * r.std("test_acc") for r in rs],
            marker="o",
            capsize=3,
            label=label,
            linestyle="-" if "residual" in label else "--",
        )
    ax.set(xlabel="depth (layers)", ylabel="test error (%)", title="test error vs depth (mean ± std over seeds)")
    ax.set_xticks(sorted({r.key[0] for r in rows if r.key[0] is not None}))
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def training_curves(rows: Sequence[Row], path: Path) -> Path | None:
    """Training (dashed) and test (solid) error over iterations, one panel per kind (He et al., Figure 6).

    Test curves need trainer.eval_test=true (degradation_grid sets it); otherwise the val error is drawn.
    """
    panels: dict[str, list[Row]] = {}
    for row in rows:
        if row.key[1] is not None and any(r.history for r in row.runs):
            panels.setdefault(_label(row), []).append(row)
    if not panels:
        return None
    plt = pyplot()
    names = sorted(panels, key=lambda s: ("residual" in s, s))
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for i, row in enumerate(sorted(panels[name], key=lambda r: r.key[0] or 0)):
            steps, train, val, split = _mean_curve(row.runs)
            color = f"C{i}"
            depth = f"{row.key[0]}-layer" if row.key[0] is not None else "run"
            ax.plot(steps, train, linestyle="--", marker=".", color=color, linewidth=1)
            ax.plot(steps, val, linestyle="-", marker="o", markersize=3, color=color, linewidth=2, label=depth)
        ax.set(xlabel="iteration", ylabel="error (%)", title=f"{name}: dashed train, solid {split}")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def _label(row: Row) -> str:
    depth, residual, shortcut, *setting = row.key
    name = f"residual ({shortcut})" if residual else "plain"
    return " ".join([name, *(str(s) for s in setting)])


def _mean_curve(runs: Sequence[Run]) -> tuple[list[float], list[float], list[float], str]:
    """Train and test (else val) error (%) at each evaluation step, averaged over the seeds that reached it."""
    by_step: dict[float, list[dict[str, float]]] = {}
    for run in runs:
        for record in run.history:
            by_step.setdefault(record["step"], []).append(record)
    steps = sorted(by_step)
    split = "test" if all("test_acc" in r for rs in by_step.values() for r in rs) else "val"
    train = [100 * (1 - statistics.fmean(r["train_acc"] for r in by_step[s])) for s in steps]
    held_out = [100 * (1 - statistics.fmean(r[f"{split}_acc"] for r in by_step[s])) for s in steps]
    return steps, train, held_out, split


def print_table(root: Path, rows: Sequence[Row], setting_keys: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{root}", show_header=True)
    for header in [*HEADERS, *(["setting"] if setting_keys else [])]:
        table.add_column(header, justify="left" if header in ("residual", "shortcut", "setting") else "right")
    for row in rows:
        table.add_row(*cells(row, setting_keys))
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # a pipe or file: don't wrap at 80


def report(root: Path, figures: bool = True) -> list[Run]:
    """Write results.md and figures/ into `root`, print the table; returns the runs it found."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: pass the sweep dir, e.g. outputs/multirun/<date>/<time>")
    runs = load_runs(root)
    if not runs:
        raise UserError(f"no runs under {root}: a run dir holds .hydra/overrides.yaml (pass the sweep dir)")
    rows, setting_keys = group_rows(runs)
    written: list[Path] = []
    if figures and rows:
        for draw, name in ((error_vs_depth, "error_vs_depth.png"), (training_curves, "training_curves.png")):
            path = draw(rows, root / "figures" / name)
            if path is not None:
                written.append(path)
    (root / "results.md").write_text(markdown(root, runs, rows, setting_keys, written))
    print_table(root, rows, setting_keys)
    for run in runs:
        if run.status != "completed":
            print(f"{run.status}: {run.dir.relative_to(root)} ({' '.join(run.overrides)}) {run.reason or ''}")
    print(f"wrote {root / 'results.md'}" + "".join(f", {p}" for p in written))
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


if __name__ == "__main__":
    main()
