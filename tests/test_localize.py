"""task=localize and its parts: the fully convolutional score maps, canvases, box extraction, metrics."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.ops import box_iou

from cnnlab.data.canvas import make_canvases
from cnnlab.errors import ConfigError
from cnnlab.models.resnet import ResNet
from cnnlab.records import checkpoint
from cnnlab.tasks.build import canvas_kinds
from cnnlab.vision.boxes import Detections, connected_components, detect, pool_scores, regions
from cnnlab.vision.maps import cell_centers, upsample_cells
from cnnlab.vision.methods import FullyConv
from cnnlab.vision.scores import Scores, localization
from tests.helpers import QUALITY, assert_localizes, run_app

# ---------------------------------------------------------------- fully convolutional conversion


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_spatial_mean_of_score_maps_equals_logits(channels, size):
    torch.manual_seed(0)
    model = ResNet(depth=8, width=8, in_channels=channels).eval()
    for m in model.modules():  # non-trivial BN statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.nn.init.normal_(model.fc.bias)
    x = torch.randn(4, channels, size, size)
    with torch.no_grad():
        logits = model(x)
    found = FullyConv(model)(x)
    assert found.maps.shape == (4, 10, size // 4, size // 4) and found.stride == 4
    assert (found.maps.mean(dim=(2, 3)) - logits).abs().max() <= 1e-4
    assert torch.equal(found.logits, logits)


def test_cell_centres_are_where_receptive_fields_are_centred():
    model = ResNet(depth=8, width=4, in_channels=1).eval()
    with torch.no_grad():  # positive weights and inputs keep every ReLU open: the gradient covers the whole field
        for p in model.parameters():
            p.abs_()
    x = torch.rand(1, 1, 64, 64, requires_grad=True)
    model.features(x)[0, :, 5, 9].sum().backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero().flatten()
    cols = x.grad[0, 0].abs().sum(0).nonzero().flatten()
    centres = cell_centers(16, model.stride)
    # pixel i spans [i, i + 1): a field over pixels a..b is centred at (a + b + 1) / 2
    assert (rows.min() + rows.max() + 1) / 2 == centres[5]
    assert (cols.min() + cols.max() + 1) / 2 == centres[9]


def test_upsampling_puts_each_cell_on_its_centre_pixel():
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 2, 5] = 1.0
    field = upsample_cells(maps, 4, (32, 32), "field")
    assert field.shape == (1, 1, 32, 32)
    assert divmod(int(field.argmax()), 32) == (8, 20)  # pixel (4*2, 4*5): centres 8.5, 20.5
    assert field[0, 0, 8, 20] == 1.0
    middle = upsample_cells(maps, 4, (32, 32), "middle")  # centres 4*2 + 2, 4*5 + 2: between pixels 9 and 10
    assert middle[0, 0, 9:11, 21:23].min() == middle.max()
    with pytest.raises(ValueError, match="cell_center"):
        upsample_cells(maps, 4, (32, 32), "corner")


# ---------------------------------------------------------------- canvases


def ink_bank() -> tuple[torch.Tensor, torch.Tensor]:
    """Ten 28x28 'digits': class c is a block of value 20(c+1) at rows 5..20, cols 8..15."""
    images = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    for c in range(10):
        images[c, 0, 5:21, 8:16] = 20 * (c + 1)
    return images, torch.arange(10)


def test_canvas_boxes_are_the_tight_boxes_of_the_pasted_ink():
    images, labels = ink_bank()
    canvases = make_canvases(images, labels, count=6, size=96, digits=3, seed=1)
    assert canvases.images.shape == (6, 1, 96, 96)
    for image, boxes, classes in zip(canvases.images, canvases.boxes, canvases.labels, strict=True):
        assert boxes.shape == (3, 4) and classes.shape == (3,)
        assert (box_iou(boxes, boxes) - torch.eye(3)).abs().max() == 0  # no overlaps
        for box, c in zip(boxes.long().tolist(), classes.tolist(), strict=True):
            x1, y1, x2, y2 = box
            assert (x2 - x1, y2 - y1) == (8, 16)
            assert (image[0, y1:y2, x1:x2] == 20 * (c + 1)).all()
        inside = torch.zeros(96, 96, dtype=torch.bool)
        for x1, y1, x2, y2 in boxes.long().tolist():
            inside[y1:y2, x1:x2] = True
        assert (image[0][~inside] == 0).all()  # no ink outside the boxes without clutter


def test_same_seed_same_canvases_and_clutter_adds_ink():
    images, labels = ink_bank()
    a = make_canvases(images, labels, count=4, size=64, digits=1, clutter=3, fragment=6, seed=5)
    b = make_canvases(images, labels, count=4, size=64, digits=1, clutter=3, fragment=6, seed=5)
    c = make_canvases(images, labels, count=4, size=64, digits=1, clutter=3, fragment=6, seed=6)
    clean = make_canvases(images, labels, count=4, size=64, digits=1, seed=5)
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    assert not torch.equal(a.images, c.images)
    assert (a.images > 0).sum() > (clean.images > 0).sum()


def test_canvas_errors_name_the_argument_and_the_boundary_names_the_key():
    images, labels = ink_bank()
    with pytest.raises(ValueError, match="digits=3 is not allowed: at most 1 on a 32px canvas"):
        make_canvases(images, labels, count=1, size=32, digits=3)
    with pytest.raises(ValueError, match="size=20"):
        make_canvases(images, labels, count=1, size=20)
    sample = OmegaConf.create({"name": "mnist_sample", "shape": [1, 28, 28], "root": None, "download": False})
    canvas = {"count": 1, "size": 32, "digits": 3, "clutter": 0, "fragment": 8, "seed": 0, "split": "test"}
    task = OmegaConf.create({"canvas": canvas, "kinds": None})
    with pytest.raises(ConfigError, match=r"task.canvas.digits=3 is not allowed.*`task.canvas.digits=1`"):
        canvas_kinds(task, sample)
    several = OmegaConf.create({"canvas": {**canvas, "size": 64, "digits": 1}, "kinds": [{}, {"digits": 3}]})
    with pytest.raises(ConfigError, match=r"task.kinds\[1\].digits=3 is not allowed: at most 2 on a 64px canvas"):
        canvas_kinds(several, sample)
    twice = OmegaConf.create({"canvas": {**canvas, "size": 64, "digits": 1}, "kinds": [{}, {"count": 5}]})
    with pytest.raises(ConfigError, match=r"a kind unlike the others \(single twice\)"):
        canvas_kinds(twice, sample)
    cifar = OmegaConf.create({"name": "cifar10", "shape": [3, 32, 32]})
    with pytest.raises(ConfigError, match="MNIST-family"):
        canvas_kinds(task, cifar)


# ---------------------------------------------------------------- boxes from maps, pooling, metrics


def test_connected_components_follow_winding_shapes_and_diagonals():
    mask = torch.zeros(7, 7, dtype=torch.bool)
    mask[0, :] = mask[:, 6] = mask[6, :] = True  # a U: numbers must travel around two corners
    mask[2, 2] = mask[3, 3] = True  # touching at a corner: one component (8-connected)
    labels = connected_components(mask)
    assert labels.max() == 2
    assert labels[0, 0] == labels[6, 0] != labels[2, 2] == labels[3, 3]
    assert (labels[~mask] == 0).all()
    assert connected_components(torch.ones(3, 3, dtype=torch.bool)).unique().tolist() == [1]


def test_regions_map_cells_to_pixels_with_stride_and_centre():
    heat = torch.zeros(32, 32)
    heat[2:5, 3:7] = 1.0  # rows 2..4, cols 3..6
    heat[20:23, 20:22] = 0.8
    heat[10, 10] = 0.3  # below half the maximum
    found = regions(heat, 0.5, stride=4, first_center=0.5)
    assert found.peaks.tolist() == pytest.approx([1.0, 0.8])
    # cell j covers [4j + 0.5 - 2, 4j + 0.5 + 2)
    assert found.boxes.tolist() == [[10.5, 6.5, 26.5, 18.5], [78.5, 78.5, 86.5, 90.5]]
    assert regions(heat, 0.2, stride=4).boxes.shape == (3, 4)
    by_area = regions(heat, 0.5, stride=1, first_center=0.5, rank="area")
    assert by_area.areas.tolist() == [12, 6]
    assert by_area.boxes[0].tolist() == [3.0, 2.0, 7.0, 5.0]  # per-pixel maps: tight pixel boxes


def test_window_pooling_ignores_a_background_that_mean_pooling_follows():
    maps = torch.zeros(1, 3, 32, 32)
    maps[0, 0] = 0.5  # class 0 weakly everywhere (what black background does)
    maps[0, 2, 10:17, 4:11] = 4.0  # class 2 strongly on one digit-sized patch
    assert pool_scores(maps, "mean").argmax() == 0
    assert pool_scores(maps, "window", window=7).argmax() == 2
    assert pool_scores(maps, "topk", topk=16).argmax() == 2
    assert pool_scores(maps, "max").argmax() == 2
    with pytest.raises(ValueError, match="pooling"):
        pool_scores(maps, "median")


def test_detect_gives_each_best_class_a_box_then_fills_with_the_best_other_components():
    heat = torch.zeros(4, 16, 16)
    heat[1, 2:4, 2:4] = 3.0
    heat[1, 10:12, 10:12] = 2.5  # a second digit of class 1
    heat[3, 6:8, 0:2] = 2.0
    heat[3, 2:4, 2:5] = 1.8  # class 3 also likes the first digit: the same place, dropped
    heat[2, 0, 15] = 0.1
    heat[0] = -1.0  # below an empty canvas everywhere: no region at all
    scores = torch.tensor([0.0, 3.0, 0.1, 2.0])
    one = detect(heat, scores, digits=1, threshold=0.5, stride=1)
    assert one.labels.tolist() == [1] and one.boxes.tolist() == [[2.0, 2.0, 4.0, 4.0]]
    two = detect(heat, scores, digits=2, threshold=0.5, stride=1)
    assert two.labels.tolist() == [1, 3] and two.boxes[1].tolist() == [0.0, 6.0, 2.0, 8.0]
    three = detect(heat, scores, digits=3, threshold=0.5, stride=1)
    assert three.labels.tolist() == [1, 3, 2]  # every one of the three best classes gets its best place
    heat[2] = 0.0
    again = detect(heat, scores, digits=3, threshold=0.5, stride=1)
    assert again.labels.tolist() == [1, 3, 1]  # then the second class-1 digit; class 3's copy of digit 1 is dropped
    assert again.boxes[2].tolist() == [10.0, 10.0, 12.0, 12.0]
    assert len(detect(heat, scores, digits=4, threshold=0.5, stride=1).labels) == 3  # class 0 adds nothing


def test_scores_match_torchvision_iou_and_the_pointing_game():
    truth = torch.tensor([[10.0, 10.0, 30.0, 40.0], [60.0, 60.0, 80.0, 90.0]])
    labels = torch.tensor([3, 7])
    shifted = truth + torch.tensor([[5.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    scores = Scores()
    pred = Detections(shifted, torch.tensor([3, 2]), torch.ones(2))  # second box has the wrong class
    scores.add(pred, truth, labels, {3: (20.0, 20.0), 7: (5.0, 5.0)})
    summary = localization(scores.table())
    expected_iou = float(box_iou(truth[:1], shifted[:1]))
    assert summary["mean_iou"] == pytest.approx(expected_iou / 2)
    assert summary["loc_acc"] == 0.5 and summary["cls_acc"] == 0.5
    assert summary["center_err_px"] == pytest.approx(5.0)
    assert summary["pointing_acc"] == 0.5
    assert summary["box_precision"] == 0.5
    assert summary["digits"] == 2 and summary["canvases"] == 1


def test_a_box_is_labelled_by_the_classifier_on_the_crop_centred_on_it():
    """A 'classifier' whose class is the position of the brightest pixel of its 4x4 input: each box's label says
    where its crop was cut (centred on the box, black beyond the canvas's edge), whatever class its map gave."""
    from cnnlab.vision.canvas_eval import BoxRule, crop_labels

    black = torch.full((1, 1, 1), -0.5)
    canvas = black.expand(1, 1, 16, 16).clone()
    canvas[0, 0, 5, 9] = 3.0  # the one bright pixel, at (row 5, col 9)
    canvas[0, 0, 14, 0] = 2.0  # and one at the corner, next to the edge

    def where(crops: torch.Tensor) -> torch.Tensor:
        assert crops.shape[1:] == (1, 4, 4) and float(crops.min()) == -0.5  # black, outside the canvas as well
        return crops.flatten(1)

    boxes = torch.tensor([[8.0, 4.0, 11.0, 7.0], [7.0, 3.0, 11.0, 7.0], [-1.0, 13.0, 1.0, 15.0]])
    found = [Detections(boxes, torch.tensor([7, 7, 7]), torch.ones(3))]
    labelled = crop_labels(where, canvas, found, black, BoxRule(threshold=0.5, steps=2, crop=(4, 4)))[0]
    # crop corners (col, row): round(centre - 2) = (7.5, 3.5) -> (8, 4), (7, 3), (-2, 12)
    assert labelled.labels.tolist() == [(5 - 4) * 4 + (9 - 8), (5 - 3) * 4 + (9 - 7), (14 - 12) * 4 + (0 + 2)]
    assert torch.equal(labelled.boxes, boxes) and torch.equal(labelled.scores, found[0].scores)
    empty = [Detections(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))]
    assert crop_labels(where, canvas, empty, black, BoxRule(threshold=0.5, steps=2, crop=(4, 4))) == empty


# ---------------------------------------------------------------- the task, end to end


def test_localize_end_to_end_on_a_tiny_model(tmp_path, mnist_checkpoint):
    overrides = [
        "task=localize",
        f"checkpoint={mnist_checkpoint}",
        "task.canvas.count=12",
        "task.canvas.size=64",
        "task.canvas.digits=2",
        "task.canvas.clutter=2",
        "task.figure_count=4",
    ]
    result = run_app(tmp_path, *overrides)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert result == metrics["loc_acc"]
    assert metrics["canvases"] == 12 and metrics["digits"] == 24 and metrics["dataset"] == "mnist_sample"
    for key in ("cls_acc", "loc_acc", "mean_iou", "pointing_acc", "box_precision"):
        assert 0.0 <= metrics[key] <= 1.0
    assert (tmp_path / "figures" / "localize.png").read_bytes()[:4] == b"\x89PNG"
    for key in ("cls_acc", "loc_acc", "mean_iou", "pointing_acc", "box_precision"):  # every metric's interval
        low, high = metrics[f"{key}_ci"]
        assert 0 <= low <= metrics[key] <= high <= 1


def test_several_canvas_kinds_in_one_run(tmp_path, mnist_checkpoint):
    kinds = "task.kinds=[{},{clutter:2,count:4},{digits:2}]"
    small = ["task.canvas.count=6", "task.canvas.size=64", "task.figure_count=2", "task.faithfulness_count=3"]
    result = run_app(tmp_path, "task=localize", f"checkpoint={mnist_checkpoint}", kinds, *small, "task.sanity=false")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["kinds"] == ["single", "clutter2", "2digits"]
    assert [metrics[f"{k}/canvases"] for k in metrics["kinds"]] == [6, 4, 6]  # each kind with its count
    assert metrics["2digits/digits"] == 12 and metrics["canvases"] == 16 and metrics["digits"] == 22  # all together
    assert result == metrics["loc_acc"]
    located = sum(metrics[f"{k}/loc_acc"] * metrics[f"{k}/digits"] for k in metrics["kinds"])
    assert metrics["loc_acc"] == pytest.approx(located / 22)  # the run's own: every digit of every kind
    assert len(metrics["2digits/deletion_auc_ci"]) == 2 and "single/loc_acc_ci" in metrics
    rows = (tmp_path / "units.csv").read_text().splitlines()
    assert rows[0].startswith("kind,unit,") and len(rows) == 1 + 16  # a row per canvas, for paired comparisons
    for kind in metrics["kinds"]:
        assert (tmp_path / "figures" / f"localize-{kind}.png").exists() and (tmp_path / f"maps-{kind}.pt").exists()


@pytest.mark.slow
def test_a_briefly_trained_classifier_localizes_digits_on_canvases(tmp_path, canvas_checkpoint):
    trained = checkpoint.load(canvas_checkpoint)["metrics"]
    assert trained["test_acc"] >= 0.85, trained["test_acc"]
    result = run_app(tmp_path, "task=localize", f"checkpoint={canvas_checkpoint}", *QUALITY)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert result == metrics["loc_acc"] and metrics["task.method"] == "fully-conv"
    assert_localizes(metrics)


def test_localize_refuses_bad_options_and_non_mnist_models(tmp_path, mnist_checkpoint, cifar_checkpoint):
    with pytest.raises(ConfigError, match="task.threshold"):
        run_app(tmp_path / "a", "task=localize", f"checkpoint={mnist_checkpoint}", "task.threshold=1.5")
    with pytest.raises(ConfigError, match="MNIST-family"):
        run_app(tmp_path / "b", "task=localize", f"checkpoint={cifar_checkpoint}")
    assert not (tmp_path / "a" / "metrics.json").exists()


def flooded_components(mask: torch.Tensor) -> torch.Tensor:
    """The reference labelling: every pixel takes the largest number among its 8 neighbours until nothing changes
    (one round per pixel of the longest path), then the numbers are made consecutive."""
    keep = mask.float()
    labels = torch.arange(1, mask.numel() + 1, dtype=torch.float32).view(mask.shape) * keep
    while not torch.equal(grown := torch.nn.functional.max_pool2d(labels[None], 3, 1, 1)[0] * keep, labels):
        labels = grown
    compact = torch.unique(labels, return_inverse=True)[1]
    return compact if not mask.all() else compact + 1


def test_connected_components_are_the_flooded_ones_on_random_and_blob_masks():
    generator = torch.Generator().manual_seed(0)
    masks = []
    for _ in range(60):  # any size, any density
        h, w = torch.randint(1, 40, (2,), generator=generator).tolist()
        masks.append(torch.rand(h, w, generator=generator) < torch.rand(1, generator=generator))
    for _ in range(10):  # smooth maps thresholded as the boxes are: blobs, some touching at corners
        heat = torch.nn.functional.interpolate(torch.rand(1, 1, 16, 16, generator=generator) ** 4, size=(64, 64))
        masks.append(heat[0, 0] >= 0.3 * heat.max())
    masks += [torch.ones(4, 5, dtype=torch.bool), torch.zeros(3, 3, dtype=torch.bool)]
    for mask in masks:
        assert torch.equal(connected_components(mask), flooded_components(mask))
