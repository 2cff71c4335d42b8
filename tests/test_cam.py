"""task=cam: every class-map method through the one canvas evaluation, on canvases and on test images."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from cnnlab.config.schema import MAP_BASELINES, MAP_METHODS
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.records import figures
from cnnlab.vision.maps import normalize_per_image
from tests.helpers import QUALITY, assert_localizes, run_app

PGC = ["pgc:ScoreCAM", "pgc:HiResCAM"]
needs_pgc = pytest.mark.skipif(importlib.util.find_spec("pytorch_grad_cam") is None, reason="the cam extra")
EVERY = [*MAP_METHODS, *MAP_BASELINES, *(pytest.param(m, marks=needs_pgc) for m in PGC)]
SMALL = ["task.canvas.count=8", "task.canvas.size=64", "task.figure_count=4"]


def test_per_image_normalization_is_min_max_scaling_of_each_map():
    maps = torch.tensor(
        [
            [[[2.0, 3.0], [6.0, 5.0]], [[-3.0, -1.0], [-2.5, -3.0]]],  # image 0: two classes' maps
            [[[0.2, 0.4], [0.3, 0.2]], [[10.0, 10.0], [10.0, 10.0]]],  # image 1: inside [0, 1]; a flat map
        ]
    )
    out = normalize_per_image(maps)
    expected = torch.tensor(
        [
            [[[0.0, 0.25], [1.0, 0.75]], [[0.0, 1.0], [0.25, 0.0]]],  # (x - min) / (max - min), per map
            [[[0.0, 1.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],  # a flat map becomes 0, not NaN
        ]
    )
    assert out.shape == maps.shape and torch.allclose(out, expected, atol=1e-6)
    rand = torch.randn(2, 3, 5, 5) * 7 + 3
    out = normalize_per_image(rand)
    assert torch.allclose(out.flatten(2).amin(-1), torch.zeros(2, 3))
    assert torch.allclose(out.flatten(2).amax(-1), torch.ones(2, 3))
    assert torch.equal(out.flatten(2).argmax(-1), rand.flatten(2).argmax(-1))  # order kept within each map


@pytest.mark.parametrize("method", EVERY)
def test_every_method_runs_on_canvases(tmp_path, mnist_checkpoint, method):
    result = run_app(tmp_path, "task=cam", f"checkpoint={mnist_checkpoint}", f"task.method={method}", *SMALL)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert result == metrics["loc_acc"]
    assert metrics["canvases"] == 8 and metrics["task.method"] == method and metrics["task.layer"] is None
    for key in ("cls_acc", "loc_acc", "mean_iou", "pointing_acc", "box_precision"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["stride"] == (1 if method in MAP_BASELINES or method.startswith("pgc:") else 4)
    assert (tmp_path / "figures" / "cam.png").read_bytes()[:4] == b"\x89PNG"


def test_the_class_comes_from_the_same_pooling_whatever_the_map(tmp_path, mnist_checkpoint):
    found = {}
    for method in ("fully-conv", "cam", "ink", "random"):
        run_app(tmp_path / method, "task=cam", f"checkpoint={mnist_checkpoint}", f"task.method={method}", *SMALL)
        found[method] = json.loads((tmp_path / method / "metrics.json").read_text())["cls_acc"]
    assert len(set(found.values())) == 1, found


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cam", "grad-cam", "score-cam"])
def test_class_maps_of_a_briefly_trained_classifier_localize(tmp_path, canvas_checkpoint, method):
    result = run_app(tmp_path, "task=cam", f"checkpoint={canvas_checkpoint}", f"task.method={method}", *QUALITY)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert result == metrics["loc_acc"] and metrics["task.method"] == method
    assert_localizes(metrics)


@pytest.mark.parametrize("method", EVERY)
def test_every_method_runs_on_test_images(tmp_path, cifar_checkpoint, method):
    overrides = ["task=cam", f"checkpoint={cifar_checkpoint}", "task.source=test", "task.figure_count=3"]
    layer = [] if method in ("fully-conv", "cam") or method in MAP_BASELINES else ["task.layer=stage2"]
    result = run_app(tmp_path, *overrides, f"task.method={method}", *layer)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 50 and result == metrics["cls_acc"] and metrics["task.method"] == method
    assert (tmp_path / "figures" / "cam.png").read_bytes()[:4] == b"\x89PNG"


def test_cam_overlays_on_cifar_test_images(tmp_path, cifar_checkpoint, monkeypatch):
    overrides = ["task=cam", f"checkpoint={cifar_checkpoint}", "task.figure_count=6"]
    with pytest.raises(ConfigError, match="task.monitor='loc_acc'.*source=test"):  # no boxes on test images
        run_app(tmp_path / "a", *overrides, "task.source=test", "task.monitor=loc_acc")
    with pytest.raises(ConfigError, match="MNIST-family"):
        run_app(tmp_path / "b", *overrides)
    drawn = {}
    real_box_grid = figures.box_grid

    def box_grid(*args, **kwargs):  # what the figure is drawn with: class names, a colour bar, the run's name
        drawn.update(kwargs, title=args[5], overlays=args[1])
        return real_box_grid(*args, **kwargs)

    monkeypatch.setattr(figures, "box_grid", box_grid)
    result = run_app(tmp_path / "c", *overrides, "task.source=test")  # the monitor follows the source: cls_acc
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["images"] == 50 and metrics["dataset"] == "cifar10" and result == metrics["cls_acc"]
    assert (tmp_path / "c" / "figures" / "cam.png").is_file()
    assert drawn["class_names"][0] == "airplane" and drawn.get("colorbar", True)
    assert all(c.startswith("pred ") and c.split()[1].isalpha() for c in drawn["captions"])  # names, not numbers
    assert "resnet8-res-s0" in drawn["title"] and "cifar10" in drawn["title"]
    assert drawn["overlays"].shape == (6, 32, 32) and drawn["overlays"].amax(dim=(1, 2)).min() > 0.99


def test_cam_checks_its_options_before_work(tmp_path, mnist_checkpoint):
    base = ["task=cam", f"checkpoint={mnist_checkpoint}"]
    with pytest.raises(ConfigError, match="task.method='score_cam' is not allowed: one of fully-conv, cam") as e:
        run_app(tmp_path / "a", *base, "task.method=score_cam")
    assert all(name in str(e.value) for name in (*MAP_METHODS, *MAP_BASELINES, "pgc:<Name>"))
    with pytest.raises(ConfigError, match="task.class_index"):
        run_app(tmp_path / "b", *base, "task.class_index=12")
    with pytest.raises(ConfigError, match=r"task.layer='1' is not allowed: null or a layer name: stem, stage1"):
        run_app(tmp_path / "c", *base, "task.method=grad-cam", "task.layer=1")  # a number is no layer name
    with pytest.raises(ConfigError, match="task.layer='stage9' is not allowed: null or a layer name: stem, stage1"):
        run_app(tmp_path / "d", *base, "task.method=grad-cam", "task.layer=stage9")
    with pytest.raises(ConfigError, match="task.layer='stage2' is not allowed: null or stage3"):
        run_app(tmp_path / "e", *base, "task.layer=stage2")  # CAM needs the maps the classifier pools
    for run in "abcde":
        assert not (tmp_path / run / "metrics.json").exists()


def test_a_library_method_without_the_extra_is_one_clear_error(tmp_path, mnist_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # what a missing package looks like to import
    with pytest.raises(ConfigError, match=r"task.method='pgc:ScoreCAM' is not allowed: .*pip install -e \"\.\[cam\]\""):
        run_app(tmp_path, "task=cam", f"checkpoint={mnist_checkpoint}", "task.method=pgc:ScoreCAM")


def test_cam_refuses_a_model_without_convolutional_features(tmp_path):
    checkpoint = trained_checkpoint_mlp(tmp_path)
    with pytest.raises(CheckpointError, match="model=resnet"):
        run_app(tmp_path / "cam", "task=cam", f"checkpoint={checkpoint}")


def trained_checkpoint_mlp(tmp_path):
    run_app(tmp_path / "mlp", "model=mlp", "trainer.max_steps=1", "runtime.figures=false")
    return tmp_path / "mlp" / "checkpoints" / "best.pt"
