"""The report's figures: test error vs depth (He et al. 2016, Table 6) and training curves (Figure 6)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from cnnlab.figures import pyplot, save_figure
from cnnlab.report.runs import Run
from cnnlab.report.table import Row


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
