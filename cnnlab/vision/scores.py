"""Localization scores per canvas, and every metric with its 95% interval over canvases.

A canvas is the unit: its counts (digits, located digits, IoU sum, ...) are kept apart, so a metric is the ratio
of sums over canvases (loc_acc = located / digits), its interval a bootstrap over canvases
(cnnlab.records.intervals), and two methods on the same canvases compare canvas by canvas (`cnnlab report`).
Faithfulness and sanity values are per image: a mean over the images scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchvision.ops import box_iou

from cnnlab.records.intervals import interval
from cnnlab.vision.boxes import Detections

# metric: (numerator, denominator), the per-canvas counts it is the ratio of the sums of
RATIOS = {
    "cls_acc": ("classes_correct", "digits"),
    "loc_acc": ("located", "digits"),
    "mean_iou": ("iou_sum", "digits"),
    "center_err_px": ("center_sum", "matched"),
    "pointing_acc": ("pointing_hits", "pointing_total"),
    "box_precision": ("predicted_correct", "predicted"),
}
COUNTS = tuple(dict.fromkeys(part for pair in RATIOS.values() for part in pair))
Table = dict[str, Tensor]  # column -> (units,) values; NaN where a unit has no value (faithfulness beyond its count)


@dataclass
class Scores:
    """Accumulates per-canvas localization counts; `table()` gives them as columns."""

    iou_threshold: float = 0.5
    rows: list[dict[str, float]] = field(default_factory=list)

    def add(
        self, pred: Detections, true_boxes: Tensor, true_labels: Tensor, peaks: dict[int, tuple[float, float]]
    ) -> None:
        """One canvas: its detections, true boxes and labels, and the heat maximum of each true class."""
        row = dict.fromkeys(COUNTS, 0.0)
        row["digits"] = float(len(true_labels))
        for c in true_labels.unique().tolist():
            row["classes_correct"] += min(int((true_labels == c).sum()), int((pred.labels == c).sum()))
        same = true_labels[:, None] == pred.labels[None, :]
        iou = box_iou(true_boxes, pred.boxes) * same if len(pred.boxes) else torch.zeros(len(true_labels), 0)
        for t in range(len(true_labels)):
            if not (iou.shape[1] and same[t].any()):
                continue
            best = int(iou[t].argmax())
            row["iou_sum"] += float(iou[t, best])
            row["located"] += float(iou[t, best] >= self.iou_threshold)
            row["center_sum"] += float(torch.dist(center(true_boxes[t]), center(pred.boxes[best])))
            row["matched"] += 1
        row["predicted"] = float(len(pred.labels))
        row["predicted_correct"] = float((iou >= self.iou_threshold).any(dim=0).sum()) if iou.numel() else 0.0
        for c, (x, y) in peaks.items():
            mine = true_boxes[true_labels == c]
            inside = (mine[:, 0] <= x) & (x < mine[:, 2]) & (mine[:, 1] <= y) & (y < mine[:, 3])
            row["pointing_hits"] += float(inside.any())
            row["pointing_total"] += 1
        self.rows.append(row)

    def table(self) -> Table:
        return {k: torch.tensor([r[k] for r in self.rows], dtype=torch.float64) for k in COUNTS}


def center(box: Tensor) -> Tensor:
    return (box[:2] + box[2:]) / 2


def ratio(table: Table, metric: str) -> tuple[Tensor, Tensor]:
    """The per-unit numerator and denominator of `metric`: a count ratio, or a per-image value (NaN rows out)."""
    if metric in RATIOS:
        num, den = RATIOS[metric]
        return table[num], table[den]
    values = table[metric]
    values = values[~values.isnan()]
    return values, torch.ones_like(values)


def summarize(table: Table, metrics: list[str]) -> dict[str, float | list[float]]:
    """Each metric over all units, and `<metric>_ci`: its 95% bootstrap interval over units."""
    out: dict[str, float | list[float]] = {}
    for metric in metrics:
        num, den = ratio(table, metric)
        out[metric] = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
        out[f"{metric}_ci"] = interval(num, den)
    return out


def localization(table: Table) -> dict[str, float | list[float]]:
    """The localization metrics of a canvas table, with intervals, and the canvas and digit counts."""
    counts = {"canvases": len(table["digits"]), "digits": int(table["digits"].sum())}
    return {**summarize(table, list(RATIOS)), **counts}
