"""What a task leaves behind: metrics.json (flat keys), a summary table, and the same in the logger."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import torch


def confusion(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    import torch  # here, not at the top: the Hydra callbacks import this module before any error is said

    """matrix[true, predicted] counts."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def per_class(matrix: torch.Tensor) -> dict[str, float]:
    """Flat precision/recall/F1 per class from a confusion matrix."""
    tp = matrix.diag().double()
    precision = tp / matrix.sum(0).clamp(min=1)
    recall = tp / matrix.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    out = {}
    for c in range(matrix.shape[0]):
        out |= {
            f"class{c}_precision": precision[c].item(),
            f"class{c}_recall": recall[c].item(),
            f"class{c}_f1": f1[c].item(),
        }
    return out


def write_json(path: Path, data: dict[str, Any]) -> Path:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def print_table(title: str, metrics: dict[str, Any], keys: list[str] | None = None) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys or list(metrics):
        if key in metrics:
            table.add_row(key, with_interval(metrics, key))
    Console(stderr=True).print(table)


def with_interval(metrics: dict[str, Any], key: str) -> str:
    """A metric as the tables show it, with its 95% interval (`<key>_ci`) where it has one."""
    text = _format(metrics[key])
    low_high = metrics.get(f"{key}_ci")
    if isinstance(low_high, (list, tuple)) and len(low_high) == 2:
        text += f" [{_format(float(low_high[0]))}, {_format(float(low_high[1]))}]"
    return text


def _format(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4f}"


def class_name(label: int, names: Sequence[str] | None) -> str:
    """A class as people read it: its name when the dataset has names, else its number."""
    return str(names[label]) if names is not None and 0 <= label < len(names) else str(label)


def class_table(matrix: torch.Tensor, scores: dict[str, float], names: Sequence[str] | None = None) -> Table:
    """Precision, recall, F1 and support per class, as a rich table."""
    table = Table(title="per class", show_header=True)
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="right")
    for c in range(matrix.shape[0]):
        table.add_row(
            class_name(c, names),
            *(f"{scores[f'class{c}_{k}']:.4f}" for k in ("precision", "recall", "f1")),
            str(int(matrix[c].sum())),
        )
    return table


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out
