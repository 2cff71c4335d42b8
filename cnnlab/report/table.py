"""The results tables: completed runs grouped by dataset (and task), then by setting over seeds.

One table per dataset and task: numbers of different data never share a table. Within it, one row per setting
(everything but the seed); a CIFAR-10 table adds the paper's reference errors (cnnlab.report.paper), and any
table with two or more depths of both plain and residual nets ends with the degradation verdict.
"""

from __future__ import annotations

import statistics
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.config.schema import defines_result
from cnnlab.records.provenance import mixed_code
from cnnlab.report import paper
from cnnlab.report.runs import Run

# model keys shown as their own columns; other overrides that vary across the sweep go into "setting"
MODEL_COLUMNS = ("model.depth", "model.residual", "model.shortcut")
HEADERS = ("depth", "residual", "shortcut", "params", "best val acc", "test acc", "seeds", "epochs", "wall time")
REFERENCE_HEADERS = ("paper error", "vs paper")
TEXT_COLUMNS = ("residual", "shortcut", "setting")
# what picks the table (dataset, task) and where and how jobs were launched (0.1 named resume so): never a setting
NOT_A_SETTING = ("seed", "dataset", "task", *MODEL_COLUMNS)
LAUNCH = ("hydra", "launcher", "trainer.resume")


@dataclass
class Row:
    """The completed runs of one setting, over seeds. Runs of the same seed count once (their mean)."""

    key: tuple[Any, ...]
    runs: list[Run]

    def values(self, metric: str) -> list[float]:
        """One value per distinct seed: a seed run twice (a repeated agent run, say) is averaged, not counted twice."""
        by_seed: dict[Any, list[float]] = {}
        for run in self.runs:
            by_seed.setdefault(run.get("seed"), []).append(float(run.metrics[metric]))  # type: ignore[index]
        return [statistics.fmean(v) for v in by_seed.values()]

    @property
    def seeds(self) -> int:
        return len({r.get("seed") for r in self.runs})

    def mean(self, metric: str) -> float:
        return statistics.fmean(self.values(metric))

    def std(self, metric: str) -> float:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def error(self) -> float:
        """Test error in %, the paper's measure."""
        return 100 * (1 - self.mean("test_acc"))

    @property
    def kind(self) -> str | None:
        """plain, residual (A|B|C), or None for models without the switch (e.g. the MLP)."""
        residual, shortcut = self.key[1], self.key[2]
        return None if residual is None else f"residual ({shortcut})" if residual else "plain"


@dataclass
class Table:
    """The rows of one dataset and task, what the report says about them, and their figures."""

    dataset: str
    task: str
    rows: list[Row]
    setting_keys: list[str]
    reference: bool = False  # CIFAR-10: the paper's errors as a column
    notes: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.dataset if self.task == "classify" else f"{self.dataset}, task {self.task}"

    @property
    def slug(self) -> str:
        """For file names: the dataset, plus the task when it is not classify."""
        return self.dataset if self.task == "classify" else f"{self.dataset}-{self.task}"

    def headers(self) -> list[str]:
        return [*HEADERS, *(REFERENCE_HEADERS if self.reference else ()), *(["setting"] if self.setting_keys else [])]


def tables(runs: Sequence[Run]) -> list[Table]:
    """The completed runs as one table per (dataset, task), in the order the datasets first appear."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.status == "completed":
            dataset = run.get("dataset.name") or run.overridden.get("dataset") or "dataset not recorded"
            groups.setdefault((str(dataset), str(run.get("task.name") or "classify")), []).append(run)
    result = []
    for (dataset, task), group in groups.items():
        rows, setting_keys = group_rows(group)
        table = Table(dataset, task, rows, setting_keys, reference=paper.is_cifar10(group))
        table.notes = _notes(table, group)
        result.append(table)
    return result


def _notes(table: Table, runs: Sequence[Run]) -> list[str]:
    code = mixed_code([run.metrics.get("provenance") for run in runs if run.metrics is not None])
    notes = [f"Warning: {code}"] if code else []  # the rows compare runs of different code
    if table.reference:
        notes.append(
            "paper error: test error (%) of He et al. 2016, Table 6 (residual); ≈: published reproductions "
            "(plain, mean of 5 runs). vs paper: this sweep's test error minus it, in points."
        )
        differences = paper.recipe_differences(runs)
        if differences:
            notes.append("These runs differ from the paper's recipe: " + "; ".join(differences) + ".")
    return notes + verdicts(table)


def verdicts(table: Table) -> list[str]:
    """The degradation verdict for each setting (and residual shortcut) with >= 2 depths of both kinds."""
    by_setting: dict[tuple[Any, ...], list[Row]] = {}
    for row in table.rows:
        if row.kind is not None and row.key[0] is not None:
            by_setting.setdefault(tuple(row.key[3:]), []).append(row)
    lines = []
    for setting, rows in by_setting.items():
        plain = {("plain", r.key[0]): r.error() for r in rows if r.kind == "plain"}
        for kind in sorted({r.kind for r in rows if r.kind != "plain"}):  # type: ignore[type-var]
            residual = {("residual", r.key[0]): r.error() for r in rows if r.kind == kind}
            line = paper.verdict({**plain, **residual})
            if line:
                lines.append((line, kind, setting))
    many = len(lines) > 1
    steps = [r.mean("steps") for r in table.rows if all("steps" in run.metrics for run in r.runs)]
    budget = (
        f" It rests on {statistics.fmean(steps):,.0f} optimizer steps a run (the paper trains 64,000): a short"
        " budget may not show the paper's gap."
        if steps
        else ""
    )
    return [
        "Verdict"
        + (f" ({' '.join([kind, *_setting(table.setting_keys, setting)])})" if many else "")
        + f": {line}."
        + budget
        for line, kind, setting in lines
    ]


def varying_overrides(runs: Sequence[Run]) -> list[str]:
    """Override keys (other than seed, dataset, task and the model columns) whose value differs between runs."""
    values: dict[str, set[str]] = {}
    for run in runs:
        for key, value in run.overridden.items():
            values.setdefault(key, set()).add(value)
    keys = [k for k in values if k not in NOT_A_SETTING and defines_result(k) and not k.startswith(LAUNCH)]
    return [k for k in keys if len(values[k]) > 1 or any(k not in r.overridden for r in runs)]


def group_rows(runs: Sequence[Run]) -> tuple[list[Row], list[str]]:
    """Completed runs grouped by setting (everything but the seed), plain before residual, then by depth."""
    done = [r for r in runs if r.status == "completed"]
    setting_keys = varying_overrides(done)
    if len({run.metrics.get("precision") for run in done}) > 1 and "trainer.precision" not in setting_keys:  # type: ignore[union-attr]
        setting_keys.append("precision")  # trainer.precision=auto ran bf16 on some machines and 32 on others
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in done:
        setting = tuple(_setting_value(run, k) for k in setting_keys)
        key = (*(run.get(k) for k in MODEL_COLUMNS), *setting)
        groups.setdefault(key, []).append(run)
    rows = [Row(key, sorted(rs, key=lambda r: r.get("seed") or 0)) for key, rs in groups.items()]
    rows.sort(key=lambda row: (bool(row.key[1]), str(row.key[2]), row.key[0] or 0, *map(str, row.key[3:])))
    return rows, setting_keys


def _setting_value(run: Run, key: str) -> str:
    """The value a run set for a setting key ("" when it left it at its default); precision: what ran."""
    if key == "precision":
        return str(run.metrics.get("precision", ""))  # type: ignore[union-attr]
    return run.overridden.get(key, "")


def _setting(setting_keys: Sequence[str], values: Sequence[Any]) -> list[str]:
    """`key=value` for the keys a run set; a key it left at its default is not shown (no empty `key=`)."""
    return [f"{k}={v}" for k, v in zip(setting_keys, values, strict=True) if v != ""]


def setting_label(setting_keys: Sequence[str], values: Sequence[Any]) -> str:
    return " ".join(_setting(setting_keys, values)) or "defaults"


def cells(row: Row, setting_keys: Sequence[str], reference: bool = False) -> list[str]:
    depth, residual, shortcut, *setting = row.key
    kind = "-" if residual is None else "residual" if residual else "plain"
    test = f"{100 * row.mean('test_acc'):.2f}"
    return [
        "-" if depth is None else str(depth),
        kind,
        "-" if shortcut is None or not residual else str(shortcut),
        _params(int(row.runs[0].metrics["params"])),  # type: ignore[index]
        f"{100 * row.mean('best_val_acc'):.2f}",
        f"{test} ± {100 * row.std('test_acc'):.2f}" if row.seeds > 1 else test,  # one seed: no "± 0.00"
        str(row.seeds),
        f"{row.mean('epochs'):.2f}" if row.mean("epochs") < 10 else f"{row.mean('epochs'):.0f}",
        _duration(row.mean("seconds")),
        *(_reference(row) if reference else []),
        *([setting_label(setting_keys, setting)] if setting_keys else []),
    ]


def _reference(row: Row) -> list[str]:
    ref = paper.reference(row.key[0], row.key[1])
    return ["-", "-"] if ref is None else [ref[1], f"{row.error() - ref[0]:+.2f}"]


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def sweep_title(runs: Sequence[Run]) -> str:
    """What the runs were: the keys their sweep varied, on which datasets, e.g. `model.depth x model.residual on
    cifar10`."""
    swept = [k for k in ("model.depth", "model.residual") if len({r.get(k) for r in runs}) > 1]
    swept += [k for k in varying_overrides(runs) if k not in swept]
    datasets = sorted({str(r.get("dataset.name")) for r in runs if r.get("dataset.name")})
    return (" x ".join(swept) or "runs") + (f" on {', '.join(datasets)}" if datasets else "")


def markdown(root: Path, runs: Sequence[Run], groups: Sequence[Table]) -> str:
    """results.md: the counts, one section per table (rows, notes, figures), then the runs that did not finish."""
    counts = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "unfinished", "not started")}
    lines = [
        f"# Results: {sweep_title(runs)} ({root.name})",
        "",
        f"{len(runs)} runs: {counts['completed']} completed, {counts['failed']} failed, "
        f"{counts['unfinished']} unfinished"
        + (f", {counts['not started']} not started" if counts["not started"] else "")
        + ". Accuracies in %; test acc is the mean ± std over seeds (the value alone for one seed); "
        "epochs and wall time are means per run.",
    ]
    for table in groups:
        lines += ["", f"## {table.title}", "", *_markdown_table(table)]
        lines += [*(f"\n{note}" for note in table.notes)]
        lines += ["", *(f"![{p.stem}](figures/{p.name})" for p in table.figures)] if table.figures else []
    for status, title in (
        ("failed", "Failed runs"),
        ("unfinished", "Unfinished runs (running, killed or interrupted)"),
        ("not started", "Not started (the sweep stopped before them)"),
    ):
        listed = [r for r in runs if r.status == status]
        if listed:
            lines += ["", f"## {title}", ""]
            for run in listed:
                reason = f": {run.reason}" if run.reason else ""
                lines.append(f"- `{run.dir.relative_to(root)}` ({' '.join(run.overrides)}){reason}")
    return "\n".join(lines) + "\n"


def _markdown_table(table: Table) -> list[str]:
    headers = table.headers()
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if h in TEXT_COLUMNS else "---:" for h in headers) + "|",
        *("| " + " | ".join(cells(row, table.setting_keys, table.reference)) + " |" for row in table.rows),
    ]


def print_table(root: Path, groups: Sequence[Table]) -> None:
    """Each table in the terminal, titled with the dir and its dataset, followed by its notes."""
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(width=None if sys.stdout.isatty() else 200)  # a pipe or file: don't wrap at 80
    for table in groups:
        rich = RichTable(title=f"{root}: {table.title}", show_header=True)
        for header in table.headers():
            rich.add_column(header, justify="left" if header in TEXT_COLUMNS else "right")
        for row in table.rows:
            rich.add_row(*cells(row, table.setting_keys, table.reference))
        console.print(rich)
        for note in table.notes:
            console.print(textwrap.fill(note, 120), highlight=False)
