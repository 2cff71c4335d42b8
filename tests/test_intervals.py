"""Intervals over canvases, paired comparisons, per-canvas scores and map-guided (ink-snapped) boxes."""

from __future__ import annotations

import pytest
import torch

from cnnlab.records.intervals import interval, paired
from cnnlab.vision.boxes import Detections, ink_components, snap_to_ink
from cnnlab.vision.scores import Scores, localization, summarize


def test_an_interval_holds_the_metric_and_narrows_with_more_units():
    assert interval([0.5] * 40) == pytest.approx([0.5, 0.5])  # no spread, no width
    few = torch.tensor([1.0, 0.0] * 10)
    many = torch.tensor([1.0, 0.0] * 500)
    low, high = interval(few)
    assert low < 0.5 < high and high - low > 0.3
    low2, high2 = interval(many)
    assert low2 < 0.5 < high2 and high2 - low2 < 0.1
    assert interval(few) == interval(few)  # seeded: the same values, the same interval
    assert all(v != v for v in interval([]))  # no units: NaN, not an error


def test_a_ratio_metric_is_resampled_by_canvas_not_by_digit():
    # 3-digit canvases: loc_acc = located digits / digits over the canvases drawn
    located, digits = torch.tensor([3.0, 0.0] * 20), torch.full((40,), 3.0)
    low, high = interval(located, digits)
    assert low < 0.5 < high
    with pytest.raises(ValueError, match="one of each per unit"):
        interval(located, digits[:5])


def test_paired_comparison_finds_a_real_difference_and_no_false_one():
    base = torch.rand(200, generator=torch.Generator().manual_seed(0))
    same = paired(base, base.clone())
    assert same["diff"] == 0 and same["low"] == same["high"] == 0 and same["p"] == 1.0
    better = paired(base + 0.05, base)  # the same canvases, each 0.05 better: a small, sure difference
    assert better["diff"] == pytest.approx(0.05) and better["low"] > 0 and better["p"] < 0.01
    noise = paired(base, torch.rand(200, generator=torch.Generator().manual_seed(1)))
    assert noise["low"] < 0 < noise["high"] and noise["p"] > 0.05  # two unrelated maps: no difference claimed


def boxes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_scores_count_per_canvas_and_sum_to_the_metrics():
    scores = Scores(0.5)
    truth = boxes([0, 0, 10, 10], [20, 20, 30, 30])
    perfect = Detections(truth.clone(), torch.tensor([1, 2]), torch.ones(2))
    scores.add(perfect, truth, torch.tensor([1, 2]), {1: (5.0, 5.0), 2: (25.0, 25.0)})
    wrong_class = Detections(truth[:1].clone(), torch.tensor([7]), torch.ones(1))
    scores.add(wrong_class, truth[:1], torch.tensor([1]), {1: (50.0, 50.0)})
    table = scores.table()
    assert table["digits"].tolist() == [2, 1] and table["located"].tolist() == [2, 0]
    metrics = localization(table)
    assert metrics["loc_acc"] == pytest.approx(2 / 3) and metrics["cls_acc"] == pytest.approx(2 / 3)
    assert metrics["pointing_acc"] == pytest.approx(2 / 3) and metrics["box_precision"] == pytest.approx(2 / 3)
    assert metrics["mean_iou"] == pytest.approx(2 / 3) and metrics["center_err_px"] == 0  # matched boxes only
    assert metrics["canvases"] == 2 and metrics["digits"] == 3
    low, high = metrics["loc_acc_ci"]
    assert 0 <= low <= 2 / 3 <= high <= 1


def test_per_image_values_skip_the_images_not_scored():
    table = {"deletion_auc": torch.tensor([0.1, 0.3, float("nan")], dtype=torch.float64)}
    out = summarize(table, ["deletion_auc"])
    assert out["deletion_auc"] == pytest.approx(0.2) and 0.1 <= out["deletion_auc_ci"][0] <= out["deletion_auc_ci"][1]


def canvas_with_ink() -> torch.Tensor:
    """A 40 px canvas: a digit in two strokes (rows 5-14, cols 5-7 and 10-12) and a fragment at (30, 30)."""
    ink = torch.zeros(40, 40, dtype=torch.bool)
    ink[5:15, 5:8] = True
    ink[5:15, 10:13] = True
    ink[30:33, 30:33] = True
    return ink


def test_ink_components_are_the_tight_boxes_of_connected_ink():
    parts, sizes, labels = ink_components(canvas_with_ink())
    assert sorted(parts.tolist()) == [[5, 5, 8, 15], [10, 5, 13, 15], [30, 30, 33, 33]]
    assert sorted(sizes.tolist()) == [9, 30, 30] and int(labels.max()) == 3
    assert len(ink_components(torch.zeros(5, 5, dtype=torch.bool))[0]) == 0


def test_a_map_box_snaps_to_the_ink_it_holds():
    ink = canvas_with_ink()
    loose = Detections(boxes([3, 3, 12, 17]), torch.tensor([4]), torch.ones(1))  # holds stroke 1, 2/3 of stroke 2
    snapped = snap_to_ink(loose, ink, share=0.5)
    assert snapped.boxes.tolist() == [[5, 5, 13, 15]] and snapped.labels.tolist() == [4]  # both strokes, tight
    strict = snap_to_ink(loose, ink, share=0.9)  # stroke 2 is held only 2/3: left out
    assert strict.boxes.tolist() == [[5, 5, 8, 15]]
    far = Detections(boxes([20, 0, 25, 4]), torch.tensor([1]), torch.ones(1))  # no ink inside: stays as drawn
    assert snap_to_ink(far, ink).boxes.tolist() == [[20, 0, 25, 4]]
    fragment_near = Detections(boxes([4, 4, 34, 34]), torch.tensor([1]), torch.ones(1))  # a box over everything
    assert snap_to_ink(fragment_near, ink).boxes.tolist() == [[5, 5, 33, 33]]  # takes all the ink it holds
