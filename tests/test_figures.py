"""cnnlab.records.figures on small fabricated inputs: run names in titles, class names, the shared colour bar, captions
that keep clear of each other. Figures are drawn through the public functions (layout and savefig included) and
caught when save_figure closes them."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from cnnlab.records import figures

PNG = b"\x89PNG\r\n\x1a\n"
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RUN = "resnet20-res-s0 on mnist_sample"


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The figures save_figure saved, kept open (instead of closed) so a test can look at them."""
    plt = figures.pyplot()
    real_close = plt.close
    kept: list[Any] = []
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for fig in kept:
        real_close(fig)


def no_boxes(n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)) for _ in range(n)]


def history(test: bool) -> list[dict[str, float]]:
    rows = []
    for step in range(0, 50, 10):
        row = {"step": step, "train_loss": 1 / (step + 1), "train_acc": 0.5, "val_loss": 0.9, "val_acc": 0.6}
        rows.append(row | ({"test_loss": 0.8, "test_acc": 0.7} if test else {}))
    return rows


def image_axes(fig: Any) -> list[Any]:
    return [ax for ax in fig.axes if ax.images]


def overlap(a: Any, b: Any) -> float:
    """Area (px²) shared by two display-space bounding boxes."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


def test_training_curves_name_the_run_and_draw_test(tmp_path: Path, drawn: list[Any]) -> None:
    path = figures.training_curves(history(test=True), tmp_path / "curves.png", title=RUN)
    assert path.read_bytes()[:8] == PNG
    (fig,) = drawn
    assert fig._suptitle.get_text() == RUN
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["train", "val", "test"]


def test_training_curves_without_test_rows(tmp_path: Path, drawn: list[Any]) -> None:
    figures.training_curves(history(test=False), tmp_path / "curves.png", title=RUN)
    (fig,) = drawn
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train", "val"]


def test_confusion_matrix_ticks_show_class_names(tmp_path: Path, drawn: list[Any]) -> None:
    matrix = torch.randint(0, 50, (10, 10))
    path = figures.confusion_matrix(matrix, tmp_path / "cm.png", title=f"test, acc 0.91 {RUN}", class_names=CIFAR)
    assert path.read_bytes()[:8] == PNG
    (fig,) = drawn
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == CIFAR
    assert [t.get_text() for t in ax.get_yticklabels()] == CIFAR
    assert all(t.get_rotation() > 0 for t in ax.get_xticklabels())  # long names side by side would collide
    assert RUN in ax.get_title()


def test_box_grid_has_one_shared_colorbar_and_even_panels(tmp_path: Path, drawn: list[Any]) -> None:
    images = torch.randint(0, 256, (6, 1, 128, 128), dtype=torch.uint8)
    heat = torch.rand(6, 128, 128)
    path = figures.box_grid(images, heat, None, no_boxes(6), tmp_path / "grid.png", RUN, colorbar=True)
    assert path.read_bytes()[:8] == PNG
    (fig,) = drawn
    panels = image_axes(fig)
    bars = [ax for ax in fig.axes if ax.get_ylabel() == figures.COLORBAR_LABEL]
    assert len(panels) == 6 and len(bars) == 1
    assert len(fig.axes) == 6 + 1  # one bar for the grid, not one per panel
    assert fig._suptitle.get_text() == RUN
    fig.canvas.draw()
    sizes = {(round(ax.get_window_extent().width), round(ax.get_window_extent().height)) for ax in panels}
    assert len(sizes) == 1, sizes  # the bar took its room from all panels alike


@pytest.mark.parametrize("heat", [False, True])
def test_box_grid_without_colorbar(tmp_path: Path, drawn: list[Any], heat: bool) -> None:
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    maps = torch.rand(3, 32, 32) if heat else None
    figures.box_grid(images, maps, None, no_boxes(3), tmp_path / "grid.png", RUN, colorbar=not heat)
    (fig,) = drawn
    assert len(fig.axes) == 3  # colorbar=False, or no heat to explain


def test_box_grid_labels_use_class_names(tmp_path: Path, drawn: list[Any]) -> None:
    images = torch.zeros(1, 1, 128, 128, dtype=torch.uint8)
    truth = SimpleNamespace(boxes=[torch.tensor([[10.0, 10.0, 40.0, 40.0]])], labels=[torch.tensor([3])])
    found = [SimpleNamespace(boxes=torch.tensor([[12.0, 12.0, 42.0, 42.0]]), labels=torch.tensor([5]))]
    figures.box_grid(images, None, truth, found, tmp_path / "grid.png", RUN, class_names=CIFAR)
    (fig,) = drawn
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert texts == {"cat", "dog"}


def test_cifar_captions_keep_clear_of_each_other(tmp_path: Path, drawn: list[Any]) -> None:
    """16 CIFAR-sized images in two rows: no caption runs into a neighbour's caption or image, or the title."""
    n = 16
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    captions = [f"pred {CIFAR[(i + 1) % 10]} / true {CIFAR[i % 10]}" for i in range(n)]
    captions[0] = "pred automobile / true airplane"
    figures.box_grid(
        images, torch.rand(n, 32, 32), None, no_boxes(n), tmp_path / "grid.png", RUN, captions, class_names=CIFAR
    )
    (fig,) = drawn
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = image_axes(fig)
    assert len(panels) == n
    titles = [ax.title.get_window_extent(renderer) for ax in panels]
    boxes = [ax.get_window_extent(renderer) for ax in panels]
    for i, j in combinations(range(n), 2):
        assert overlap(titles[i], titles[j]) < 1, (captions[i], captions[j])
        assert overlap(titles[i], boxes[j]) < 1 and overlap(titles[j], boxes[i]) < 1, (i, j)
    suptitle = fig._suptitle.get_window_extent(renderer)
    assert all(overlap(t, suptitle) < 1 for t in titles)
    width, height = fig.canvas.get_width_height()
    assert all(t.x0 >= 0 and t.x1 <= width and t.y1 <= height for t in titles)  # nothing cut off at the edge
