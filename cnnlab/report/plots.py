"""The report's figures: test error vs depth (He et al. 2016, Table 6) and training curves (Figure 6).

They stay readable whatever the number of settings: a panel per setting (and, for the curves, per kind), at most
MAX_COLUMNS x MAX_ROWS panels per file, so a file is never larger than that; further settings go into numbered
pages (error_vs_depth-2.png, ...). Each panel keeps its short legend inside.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cnnlab.records.figures import pyplot, save_figure
from cnnlab.report.runs import Run
from cnnlab.report.table import Row, Table, setting_label

PANEL = (5.0, 3.8)  # inches per panel; figures are saved at 110 dpi
MAX_COLUMNS = 3
MAX_ROWS = 3

Panels = dict[tuple[Any, ...], dict[str, list[Row]]]  # setting -> kind -> its rows


def draw_figures(table: Table, folder: Path, suffix: str = "") -> list[Path]:
    """Both figures of one table: error_vs_depth{suffix}.png and training_curves{suffix}.png (and their pages)."""
    return [
        *error_vs_depth(table, folder / f"error_vs_depth{suffix}.png"),
        *training_curves(table, folder / f"training_curves{suffix}.png"),
    ]


def error_vs_depth(table: Table, path: Path) -> list[Path]:
    """Test error vs depth, plain and residual, one panel per setting (He et al. 2016, Table 6 as a plot)."""
    panels = _panels(table, lambda row: row.key[0] is not None)
    if not panels:
        return []
    seeds = max(row.seeds for row in table.rows)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    written = []
    for page, settings in enumerate(_pages(list(panels), MAX_COLUMNS * MAX_ROWS)):
        fig, axes = _grid(len(settings), min(len(settings), MAX_COLUMNS))
        for ax, setting in zip(axes, settings, strict=True):
            for kind, rows in _by_kind(panels[setting]):
                rows = sorted(rows, key=lambda r: r.key[0])
                ax.errorbar(
                    [r.key[0] for r in rows],
                    [r.error() for r in rows],
                    yerr=[100 * r.std("test_acc") for r in rows] if seeds > 1 else None,
                    marker="o",
                    capsize=3,
                    label=kind,
                    linestyle="--" if kind == "plain" else "-",
                )
            ax.set(xlabel="depth (layers)", ylabel="test error (%)", title=_title(table, setting, len(panels)))
            ax.set_xticks(sorted({r.key[0] for rows in panels[setting].values() for r in rows}))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"test error vs depth, {table.title} ({spread})")
        written.append(save_figure(fig, _page_path(path, page)))
    return written


def training_curves(table: Table, path: Path) -> list[Path]:
    """Training (dashed) and test (solid) error over iterations: a row of panels per setting, a column per kind,
    one line per depth, averaged over seeds (He et al., Figure 6).

    Test curves need trainer.eval_test=true (degradation_grid sets it); otherwise the val error is drawn.
    """
    panels = _panels(table, lambda row: any(r.history for r in row.runs))
    if not panels:
        return []
    kinds = sorted({kind for by_kind in panels.values() for kind in by_kind}, key=_kind_order)
    seeds = max(row.seeds for row in table.rows)
    written = []
    for page, settings in enumerate(_pages(list(panels), MAX_ROWS)):
        fig, axes = _grid(len(settings) * len(kinds), len(kinds), sharey="row")
        for i, setting in enumerate(settings):
            for ax, kind in zip(axes[i * len(kinds) : (i + 1) * len(kinds)], kinds, strict=True):
                if kind in panels[setting]:
                    _curves(ax, panels[setting][kind], kind, _title(table, setting, len(panels)))
                else:
                    ax.set_visible(False)
        fig.suptitle(f"training curves, {table.title}" + (f" (mean over {seeds} seeds)" if seeds > 1 else ""))
        written.append(save_figure(fig, _page_path(path, page)))
    return written


def _curves(ax: Any, rows: Sequence[Row], kind: str, setting: str) -> None:
    split = "val"
    for i, row in enumerate(sorted(rows, key=lambda r: r.key[0] or 0)):
        steps, train, held_out, split = _mean_curve(row.runs)
        depth = f"{row.key[0]}-layer" if row.key[0] is not None else "run"
        ax.plot(steps, train, linestyle="--", marker=".", color=f"C{i}", linewidth=1)
        ax.plot(steps, held_out, linestyle="-", marker="o", markersize=3, color=f"C{i}", linewidth=2, label=depth)
    title = f"{kind}: dashed train, solid {split}"
    ax.set(xlabel="iteration", ylabel="error (%)", title=f"{setting}\n{title}" if setting else title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _panels(table: Table, keep: Any) -> Panels:
    """The rows with a kind (plain or residual) that `keep` accepts, by setting, then by kind."""
    panels: Panels = {}
    for row in table.rows:
        if row.kind is not None and keep(row):
            panels.setdefault(tuple(row.key[3:]), {}).setdefault(row.kind, []).append(row)
    return panels


def _by_kind(by_kind: dict[str, list[Row]]) -> list[tuple[str, list[Row]]]:
    return sorted(by_kind.items(), key=lambda item: _kind_order(item[0]))


def _kind_order(kind: str) -> tuple[bool, str]:
    return ("residual" in kind, kind)  # plain first, as in the paper's figures


def _title(table: Table, setting: tuple[Any, ...], panels: int) -> str:
    """A panel names its setting only when the figure has several; long settings wrap."""
    return "\n".join(textwrap.wrap(setting_label(table.setting_keys, setting), 50)) if panels > 1 else ""


def _pages(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _page_path(path: Path, page: int) -> Path:
    return path if page == 0 else path.with_name(f"{path.stem}-{page + 1}{path.suffix}")


def _grid(panels: int, columns: int, sharey: Any = False) -> tuple[Any, list[Any]]:
    """A figure of `panels` axes in rows of `columns`, each PANEL inches; unused axes hidden."""
    rows = math.ceil(panels / columns)
    fig, axes = pyplot().subplots(
        rows, columns, figsize=(PANEL[0] * columns, PANEL[1] * rows + 0.4), sharey=sharey, squeeze=False
    )
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


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
