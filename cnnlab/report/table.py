"""The results table: completed runs grouped by setting over seeds, as markdown and in the terminal."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.config import defines_result
from cnnlab.report.runs import Run

# model keys shown as their own columns; other overrides that vary across the sweep go into "setting"
MODEL_COLUMNS = ("model.depth", "model.residual", "model.shortcut")
HEADERS = ("depth", "residual", "shortcut", "params", "best val acc", "test acc", "seeds", "epochs", "wall time")


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


def print_table(root: Path, rows: Sequence[Row], setting_keys: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{root}", show_header=True)
    for header in [*HEADERS, *(["setting"] if setting_keys else [])]:
        table.add_column(header, justify="left" if header in ("residual", "shortcut", "setting") else "right")
    for row in rows:
        table.add_row(*cells(row, setting_keys))
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # a pipe or file: don't wrap at 80
