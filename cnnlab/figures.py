"""Figures as PNG (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Loss and error of the training batches and the val split over optimizer steps."""
    plt = pyplot()
    steps = [r["step"] for r in history]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(steps, [r[f"{split}_loss"] for r in history], marker=".", label=split)
        ax_err.plot(steps, [100 * (1 - r[f"{split}_acc"]) for r in history], marker=".", label=split)
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_err.set(xlabel="step", ylabel="error (%)", title="error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def confusion_matrix(matrix: torch.Tensor, path: Path, title: str = "confusion matrix") -> Path:
    plt = pyplot()
    n = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(matrix.numpy(), cmap="Blues")
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            color = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    return save_figure(fig, path)


def box_grid(
    images: torch.Tensor,
    heat: torch.Tensor | None,
    truth: Any,
    found: Sequence[Any],
    path: Path,
    title: str,
    captions: Sequence[str] | None = None,
) -> Path:
    """Images (N, C, H, W) uint8 with a heat map (N, H, W) in [0, 1] on top, true boxes in green (labels above)
    and predicted boxes in red (labels below); `truth` and each of `found` have .boxes and .labels, truth may
    be None (no boxes)."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    n = len(images)
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.1 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = images[i].permute(1, 2, 0).numpy()
        ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255)
        if heat is not None:
            ax.imshow(heat[i].numpy(), cmap="jet", alpha=0.4, vmin=0, vmax=1)
        boxes = [(b, int(c), "lime") for b, c in zip(truth.boxes[i], truth.labels[i], strict=True)] if truth else []
        boxes += [(b, int(c), "red") for b, c in zip(found[i].boxes, found[i].labels, strict=True)]
        for box, label, color in boxes:
            x1, y1, x2, y2 = box.tolist()  # continuous pixel coordinates; imshow centres pixel i on i
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=color, lw=1.2))
            below = color == "red"
            ax.text(
                x1 - 0.5,
                y2 + 0.5 if below else y1 - 1.5,
                str(label),
                color=color,
                fontsize=7,
                va="top" if below else "bottom",
            )
        if captions:
            ax.set_title(captions[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
