"""Figures as PNG (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cnnlab.records.results import class_name

PANEL_IN = 1.9  # inches per image panel, whatever the pixel size (32 px CIFAR and 128 px canvases alike)
CAPTION_PT = 7.0
COLORBAR_LABEL = "map, normalized to [0, 1]"


class Figures:
    """pyplot's figure, subplots and close without pyplot's global state: figures are drawn off-screen and saved,
    and the caller's backend (a notebook's inline one) is left as it is."""

    @staticmethod
    def figure(**kwargs: Any) -> Any:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(**kwargs)
        FigureCanvasAgg(fig)  # drawn by Agg, as the PNG files are
        return fig

    @staticmethod
    def subplots(*args: Any, figsize: Any = None, layout: Any = None, **kwargs: Any) -> tuple[Any, Any]:
        fig = Figures.figure(figsize=figsize, layout=layout)
        return fig, fig.subplots(*args, **kwargs)

    @staticmethod
    def close(fig: Any) -> None:
        """Nothing to close: no pyplot figure manager holds it."""


FIGURES = Figures()


def pyplot() -> Figures:
    return FIGURES


def training_curves(history: Sequence[dict[str, float]], path: Path, title: str | None = None) -> Path:
    """Loss and error of the training batches, the val split and (when logged) the test split over optimizer steps;
    `title` (e.g. 'resnet20-res-s0 on mnist_sample') names the run."""
    plt = pyplot()
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4.3), layout="constrained")
    for split in ("train", "val", "test"):
        # test metrics are only in the rows where the trainer evaluated the test split (trainer.eval_test)
        loss = [(r["step"], r[f"{split}_loss"]) for r in history if f"{split}_loss" in r]
        err = [(r["step"], 100 * (1 - r[f"{split}_acc"])) for r in history if f"{split}_acc" in r]
        if loss:
            ax_loss.plot(*zip(*loss, strict=True), marker="o", markersize=3, label=split)  # a lone evaluation shows
        if err:
            ax_err.plot(*zip(*err, strict=True), marker="o", markersize=3, label=split)
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_err.set(xlabel="step", ylabel="error (%)", title="error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def confusion_matrix(
    matrix: torch.Tensor,
    path: Path,
    title: str = "confusion matrix",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Counts (true rows, predicted columns); ticks show `class_names` when given, else the class indices."""
    plt = pyplot()
    n = matrix.shape[0]
    side = max(5.0, 0.45 * n + 1.5)  # a cell stays readable with many classes
    fig, ax = plt.subplots(figsize=(side + 0.5, side), layout="constrained")
    ax.imshow(matrix.numpy(), cmap="Blues")
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            color = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(names) != n:
            raise ValueError(f"{len(names)} class names for a {n}x{n} confusion matrix")
        # rotated and anchored at the tick so long names do not run into each other
        ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticklabels(names)
    return save_figure(fig, path)


def box_grid(
    images: torch.Tensor,
    heat: torch.Tensor | None,
    truth: Any,
    found: Sequence[Any],
    path: Path,
    title: str,
    captions: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    colorbar: bool = True,
) -> Path:
    """Images (N, C, H, W) uint8 with a heat map (N, H, W) in [0, 1] on top, true boxes in green (labels above)
    and predicted boxes in red (labels below); `truth` and each of `found` have .boxes and .labels, truth may
    be None (no boxes). Box labels are class indices, shown as `class_names[label]` when given; `colorbar`
    adds one colour bar for the heat maps of the whole grid."""
    plt = pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n = len(images)
    cols = min(n, 8)
    rows = -(-n // cols)
    wrapped = _wrap_captions(captions, PANEL_IN, CAPTION_PT) if captions else None
    lines = max(c.count("\n") + 1 for c in wrapped) if wrapped else 0
    bar = heat is not None and colorbar
    # each row gets room for its caption lines so constrained layout need not shrink the panels into each other
    height = rows * (PANEL_IN + lines * CAPTION_PT * 1.3 / 72 + 0.1) + 0.45
    width = cols * PANEL_IN + (0.9 if bar else 0.1)
    fig = plt.figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = images[i].permute(1, 2, 0).numpy()
        # nearest: 32 px images are blown up to the same panel size as 128 px canvases, keep the pixels sharp
        image = image[..., 0] if image.shape[2] == 1 else image
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if heat is not None:
            ax.imshow(heat[i].numpy(), cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="nearest")
        boxes = [(b, int(c), "lime") for b, c in zip(truth.boxes[i], truth.labels[i], strict=True)] if truth else []
        boxes += [(b, int(c), "red") for b, c in zip(found[i].boxes, found[i].labels, strict=True)]
        for box, label, color in boxes:
            _draw_box(ax, box.tolist(), class_name(label, class_names), color)
        if wrapped:
            ax.set_title(wrapped[i], fontsize=CAPTION_PT, pad=3)
    if bar:
        # one bar for the whole grid: stealing its space from all panels keeps them the same size
        mappable = ScalarMappable(norm=Normalize(0, 1), cmap="jet")
        cbar = fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=min(0.9, 0.5 + 0.2 * rows), aspect=25, pad=0.02)
        cbar.set_label(COLORBAR_LABEL, fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def _draw_box(ax: Any, box: list[float], label: str, color: str) -> None:
    """A rectangle with its label above (true, green) or below (predicted, red)."""
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = box  # continuous pixel coordinates; imshow centres pixel i on i
    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=color, lw=1.2))
    below = color == "red"
    # offset in points, not pixels: the same gap on a 32 px image as on a 128 px canvas
    ax.annotate(
        label,
        (x1 - 0.5, y2 - 0.5 if below else y1 - 0.5),
        xytext=(0, -1 if below else 1),
        textcoords="offset points",
        color=color,
        fontsize=7,
        va="top" if below else "bottom",
    )


def _wrap_captions(captions: Sequence[str], panel_in: float, fontsize: float) -> list[str]:
    """Break captions into lines no wider than a panel: 'pred automobile / true airplane' at the ' / '. When one
    caption needs it, all are broken the same way so the panels line up."""
    limit = max(8, int(0.9 * panel_in * 72 / (0.6 * fontsize)))  # ~0.6 em per character
    if all(len(c) <= limit for c in captions):
        return list(captions)
    return ["\n".join(textwrap.fill(part, limit) for part in c.split(" / ")) for c in captions]


def save_figure(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:  # a figure with constrained layout (colour bars) keeps it
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
