"""task=cam and the CAM / Grad-CAM maps it draws."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab import figures
from cnnlab.cam import class_activation_maps, grad_cam, normalize_per_image
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models.fully_conv import FullyConvNet
from cnnlab.models.resnet import ResNet
from tests.conftest import run_app
from tests.test_localize import cifar_checkpoint, mnist_checkpoint  # noqa: F401 (fixtures)


def small_resnet() -> ResNet:
    torch.manual_seed(0)
    model = ResNet(depth=8, width=8, in_channels=1).eval()
    torch.nn.init.normal_(model.fc.bias)
    return model


def test_cam_is_the_score_map_without_the_bias():
    model = small_resnet()
    x = torch.randn(3, 1, 40, 40)
    with torch.no_grad():
        cams = class_activation_maps(model, x)
        maps = FullyConvNet(model)(x)
    assert (cams + model.fc.bias.view(1, -1, 1, 1) - maps).abs().max() < 1e-4


def test_grad_cam_at_the_last_layer_is_relu_cam_and_elsewhere_has_that_layers_size():
    model = small_resnet()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        cams = class_activation_maps(model, x)
    grads = grad_cam(model, x)
    assert grads.shape == (2, 10, 8, 8)
    assert (grads - torch.relu(cams) / 64).abs().max() < 1e-6
    assert grad_cam(model, x, layer=3).shape == (2, 10, 32, 32)  # the first block, before any stride


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


@pytest.mark.parametrize("method", ["cam", "grad-cam"])
def test_cam_end_to_end_on_canvases(tmp_path, mnist_checkpoint, method):  # noqa: F811
    result = run_app(
        tmp_path,
        "task=cam",
        f"checkpoint={mnist_checkpoint}",
        f"task.method={method}",
        "task.canvas.count=8",
        "task.canvas.size=64",
        "task.figure_count=4",
        "task.threshold=0.2",
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert result == metrics["loc_acc"]
    assert metrics["canvases"] == 8 and metrics["task.method"] == method and metrics["task.threshold"] == 0.2
    for key in ("cls_acc", "loc_acc", "mean_iou", "pointing_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert (tmp_path / "figures" / "cam.png").read_bytes()[:4] == b"\x89PNG"


def test_cam_overlays_on_cifar_test_images(tmp_path, cifar_checkpoint, monkeypatch):  # noqa: F811
    overrides = ["task=cam", f"checkpoint={cifar_checkpoint}", "task.figure_count=6"]
    with pytest.raises(ConfigError, match="task.monitor='loc_acc'.*source=test"):  # no boxes on test images
        run_app(tmp_path / "a", *overrides, "task.source=test", "task.monitor=loc_acc")
    with pytest.raises(ConfigError, match="MNIST-family"):
        run_app(tmp_path / "b", *overrides)
    drawn = {}
    real_box_grid = figures.box_grid

    def box_grid(*args, **kwargs):  # what the figure is drawn with: class names, a colour bar, the run's name
        drawn.update(kwargs, title=args[5])
        return real_box_grid(*args, **kwargs)

    monkeypatch.setattr(figures, "box_grid", box_grid)
    result = run_app(tmp_path / "c", *overrides, "task.source=test")  # the monitor follows the source: cls_acc
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["images"] == 50 and metrics["dataset"] == "cifar10" and result == metrics["cls_acc"]
    assert (tmp_path / "c" / "figures" / "cam.png").is_file()
    assert drawn["class_names"][0] == "airplane" and drawn.get("colorbar", True)
    assert all(c.startswith("pred ") and c.split()[1].isalpha() for c in drawn["captions"])  # names, not numbers
    assert "resnet8-res-s0" in drawn["title"] and "cifar10" in drawn["title"]


def test_cam_checks_its_options_before_work(tmp_path, mnist_checkpoint):  # noqa: F811
    base = ["task=cam", f"checkpoint={mnist_checkpoint}"]
    with pytest.raises(ConfigError, match="task.method"):
        run_app(tmp_path / "a", *base, "task.method=score-cam")
    with pytest.raises(ConfigError, match="task.class_index"):
        run_app(tmp_path / "b", *base, "task.class_index=12")
    with pytest.raises(ConfigError, match="task.layer"):
        run_app(tmp_path / "c", *base, "task.method=grad-cam", "task.layer=40")


def test_cam_refuses_a_model_without_convolutional_features(tmp_path):
    checkpoint = trained_checkpoint_mlp(tmp_path)
    with pytest.raises(CheckpointError, match="model=resnet"):
        run_app(tmp_path / "cam", "task=cam", f"checkpoint={checkpoint}")


def trained_checkpoint_mlp(tmp_path):
    run_app(tmp_path / "mlp", "model=mlp", "trainer.max_steps=1", "runtime.figures=false")
    return tmp_path / "mlp" / "checkpoints" / "best.pt"
