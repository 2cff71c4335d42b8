"""The canvas benchmark's method table: per canvas kind a row per method, ranked by the headline metric.

The headline is the deletion AUC on the information axis (cnnlab.vision.faithfulness): a map that knows no class
(the baselines, marked) cannot win it. Lower is better; runs without faithfulness are ranked by loc_acc. The
first columns carry their 95% intervals over canvases.
Under each table, the best method against every other one on the same canvases: the paired difference, its
interval and a bootstrap p-value (cnnlab.records.intervals), canvas by canvas from each run's units.csv.
"""

from __future__ import annotations

from typing import Any

import torch

from cnnlab.records.intervals import paired
from cnnlab.vision.scores import RATIOS, ratio

# with intervals: the headline (deletion AUC), then localization, which a class-agnostic map can win on single
# canvases (map-guided boxes take any ink a map covers); insertion is not a headline: from RISE's blurred start,
# random maps win it on single canvases (measured, scripts/RESULTS.md)
HEADLINE = ("deletion_auc", "loc_acc", "pointing_acc", "cls_acc")
OTHERS = (
    "insertion_auc",
    "mean_iou",
    "box_precision",
    "center_err_px",
    "adcc",
    "average_drop",
    "map_size",
    "sanity_rank_corr",
)
LOWER = ("deletion_auc", "center_err_px", "average_drop")  # lower is better
SHORT = {"deletion_auc": "del_auc", "insertion_auc": "ins_auc", "pointing_acc": "pointing", "average_drop": "avg_drop"}
SHORT |= {"sanity_rank_corr": "sanity_corr", "box_precision": "box_prec", "center_err_px": "center_px"}
COMPARED = ("deletion_auc", "loc_acc")  # the paired comparisons


def kind_order(kind: str) -> tuple[int, str]:
    """single, then cluttered, then several digits, then test images."""
    rank = 0 if kind == "single" else 1 if kind.startswith("clutter") else 3 if kind.endswith(" test") else 2
    return (rank, kind)


def canvas_count(run: Any) -> int:
    return int(run.metrics.get("canvases") or 0)


def rank_key(runs: list[Any]) -> str:
    return "deletion_auc" if any("deletion_auc" in r.metrics for r in runs) else "loc_acc"


def ordered(runs: list[Any]) -> list[Any]:
    """Best first by the headline metric (runs without it last)."""
    key = rank_key(runs)
    sign = 1 if key in LOWER else -1

    def value(run: Any) -> float:
        v = run.metrics.get(key)
        return sign * float(v) if isinstance(v, (int, float)) and v == v else float("inf")

    return sorted(runs, key=lambda r: (value(r), r.method))


def cell(run: Any, key: str, interval: bool) -> str:
    value = run.metrics.get(key)
    if not isinstance(value, (int, float)):
        return "-"
    digits = 2 if key in ("center_err_px", "average_drop") else 3
    text = f"{value:.{digits}f}"
    low_high = run.metrics.get(f"{key}_ci")
    if interval and isinstance(low_high, list) and len(low_high) == 2:
        text += f" [{low_high[0]:.{digits}f}, {low_high[1]:.{digits}f}]"
    if key == "sanity_rank_corr" and run.metrics.get("sanity_pass") is False:
        text = f"**{text} fails**"
    return text


def kind_table(runs: list[Any]) -> str:
    """One kind's markdown table, best first; a baseline's name says so."""
    runs = ordered(runs)
    keys = [k for k in (*HEADLINE, *OTHERS) if any(k in r.metrics for r in runs)]
    head = ["method", *(SHORT.get(k, k) for k in keys)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    most = max(canvas_count(r) for r in runs)
    for run in runs:
        name = f"{run.method} (baseline)" if run.baseline else run.method
        fewer = canvas_count(run)
        name += f" (on {fewer})" if 0 < fewer < most else ""  # fewer canvases: not the same ones, not paired
        lines.append("| " + " | ".join([name, *(cell(run, k, k in HEADLINE) for k in keys)]) + " |")
    return "\n".join(lines) + "\n"


def paired_values(a: Any, b: Any, metric: str) -> tuple[torch.Tensor, ...] | None:
    """Numerators and denominators of `metric` for two runs on the same canvases (rows both scored)."""
    if a.canvases != b.canvases or not a.units or not b.units:
        return None
    if metric in RATIOS:
        return (*ratio(a.units, metric), *ratio(b.units, metric))
    if metric not in a.units or metric not in b.units:
        return None
    both = ~(a.units[metric].isnan() | b.units[metric].isnan())
    x, y = a.units[metric][both], b.units[metric][both]
    return (x, torch.ones_like(x), y, torch.ones_like(y)) if len(x) else None


def comparison(runs: list[Any]) -> str:
    """The best method minus each other one on the same canvases, for the headline and loc_acc."""
    runs = ordered(runs)
    most = max(canvas_count(r) for r in runs)
    best, rows = next(r for r in runs if canvas_count(r) == most), []  # of the full set
    for other in (r for r in runs if r is not best):
        cells = []
        for metric in COMPARED:
            values = paired_values(best, other, metric)
            if values is None:
                cells += ["-", "-"]
                continue
            d = paired(values[0], values[2], values[1], values[3])
            cells += [f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]", f"{d['p']:.3f}"]
        if any(c != "-" for c in cells):
            rows.append(f"| {other.method} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    head = " | ".join(f"{SHORT.get(m, m)} difference [95%] | p" for m in COMPARED)
    lines = [f"{best.method} minus each other method on the same canvases (paired bootstrap over canvases):", ""]
    return "\n".join([*lines, f"| method | {head} |", "|---|---|---|---|---|", *rows]) + "\n"


def ranked_markdown(runs: list[Any]) -> str:
    """Every kind's table and paired comparison, then the methods that fail the sanity check."""
    text = "## Localization and class maps\n"
    for kind in sorted({r.kind for r in runs}, key=kind_order):
        mine = [r for r in runs if r.kind == kind]
        count = max((int(r.metrics.get("canvases", r.metrics.get("images", 0)) or 0) for r in mine), default=0)
        size = f" ({count} {'images' if kind.endswith(' test') else 'canvases'})" if count else ""
        text += f"\n### {kind}{size}\n\n"
        text += kind_table(mine)
        pairs = comparison(mine)
        text += f"\n{pairs}" if pairs else ""
    text += (
        f"\nranked by {SHORT.get(rank_key(runs), rank_key(runs))}; [95% interval over canvases]; lower is better: "
        "del_auc (deletion AUC over the share of ink removed), center_px, avg_drop; higher: the others but "
        "sanity_corr (|corr| >= 0.5 fails) and map_size (the map's mean: avg_drop is read beside it)\n"
    )
    failed = sorted({r.method for r in runs if r.metrics.get("sanity_pass") is False})
    if failed:
        text += (
            f"\n> sanity: {', '.join(failed)}: the maps keep their rank order (|rank corr| >= 0.5) with every "
            "weight re-initialized (Adebayo et al. 2018): they do not explain the model.\n"
        )
    return text
