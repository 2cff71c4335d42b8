"""The background class (dataset.background): canvas patches without a whole digit as an extra, last class.

Its patches, the model's extra output (the cnnlab.outputs resolver), the datasets it is refused for, the loaders
(patches appended to train and val, never shifted by pad-and-crop), the per-cell scores of the canvas evaluation
and a tiny run of classify, localize and cam with it.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cnnlab.config.checks import validate
from cnnlab.config.schema import outputs
from cnnlab.data import canvas
from cnnlab.data.canvas import background_patches, context_digits
from cnnlab.data.loader import DeviceLoader
from cnnlab.errors import ConfigError
from cnnlab.records import figures
from cnnlab.tasks.build import background_index, build_loaders, class_names, typed
from cnnlab.vision.canvas_eval import cell_scores
from tests.helpers import cli, composed, run_app

INK = 200  # every digit of the bank: a solid 20x20 block of ink at rows and columns 4..23, as MNIST centres its ink


def block_digits(n: int = 10) -> torch.Tensor:
    """(n, 1, 28, 28) uint8 'digits' whose ink is a whole 20x20 block: easy to tell whole from cut."""
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 4:24, 4:24] = INK
    return images


def holds_a_whole_digit(patches: torch.Tensor) -> torch.Tensor:
    """(N,) bool: some 20x20 window of the patch is all ink (a whole block digit, wherever it sits)."""
    ink = (patches[:, :1] > 0).float()
    return F.max_pool2d(-F.max_pool2d(-ink, 20, stride=1), kernel_size=ink.shape[-1] - 19).flatten() > 0.5


# ---------------------------------------------------------------- the patches


def test_patches_are_seeded_uint8_digit_sized_and_a_share_is_empty():
    images = block_digits()
    a = background_patches(images, 200, seed=3)
    assert a.shape == (200, 1, 28, 28) and a.dtype == torch.uint8
    assert torch.equal(a, background_patches(images, 200, seed=3))
    assert not torch.equal(a, background_patches(images, 200, seed=4))
    empty = (a.flatten(1).amax(1) == 0).float().mean()
    assert 0.15 <= empty <= 0.4, empty  # a quarter drawn empty (a fragment may also land on the edge unseen)


def test_no_patch_holds_a_whole_digit_but_the_check_would_see_one():
    images = block_digits()
    patches = background_patches(images, 400, seed=0)
    assert not holds_a_whole_digit(patches).any()
    assert holds_a_whole_digit(images).all()  # the check sees a whole digit where there is one


def test_a_neighbour_closer_than_the_margin_would_show_whole(monkeypatch):
    """The placement rule is what keeps digits cut: with a neighbour 0..4 px away the same draw shows it whole."""
    images = block_digits()
    monkeypatch.setattr(canvas, "BACKGROUND_MARGIN", 0)
    monkeypatch.setattr(canvas, "BACKGROUND_REACH", 4)
    patches = background_patches(images, 200, seed=0)
    whole = holds_a_whole_digit(patches).float().mean()
    assert whole > 0.3, whole  # half the patches have a neighbour; now every one of them is whole


def test_patches_of_real_digits_keep_most_ink_out():
    from cnnlab.data import sources

    digits = sources.load("mnist_sample", None, False).train_x[:500]
    patches = background_patches(digits, 300, seed=1)
    assert (patches.float().sum(dim=(1, 2, 3)) < 0.8 * digits.float().sum(dim=(1, 2, 3)).mean()).float().mean() > 0.9


# ---------------------------------------------------------------- the model's outputs and the config


def test_outputs_resolver_adds_one_class_with_a_background():
    assert outputs(10, 0) == 10 and outputs(10, 0.0) == 10
    assert outputs(10, 0.25) == 11 and outputs("10", "0.01") == 11


@pytest.mark.parametrize("model", ["resnet", "mlp"])
def test_the_composed_model_has_an_output_for_the_background(model):
    assert composed(f"model={model}").model.num_classes == 10
    cfg = composed(f"model={model}", "dataset.background=0.25")
    assert cfg.model.num_classes == 11 and cfg.dataset.num_classes == 10
    validate(cfg)
    assert composed(f"model={model}", "dataset=fashion_mnist", "dataset.background=0.5").model.num_classes == 11


def test_class_names_and_background_index():
    plain = OmegaConf.create({"num_classes": 10, "background": 0, "classes": None})
    named = OmegaConf.create({"num_classes": 3, "background": 0.25, "classes": ["a", "b", "c"]})
    assert background_index(plain) is None and class_names(plain) is None
    assert background_index(named) == 3 and class_names(named) == ["a", "b", "c", "background"]
    numbered = OmegaConf.create({"num_classes": 10, "background": 0.25})
    assert class_names(numbered) == [*(str(c) for c in range(10)), "background"]


def test_background_on_cifar10_is_one_config_error():
    with pytest.raises(ConfigError) as caught:
        validate(composed("dataset=cifar10", "dataset.background=0.25"))
    error = caught.value
    assert (error.key, error.value, error.fix) == ("dataset.background", 0.25, "dataset.background=0")
    assert "MNIST family" in str(error) and "\n" not in str(error)
    with pytest.raises(ConfigError, match="dataset.background=-0.5 is not allowed"):
        validate(composed("dataset.background=-0.5"))
    validate(composed("dataset=cifar10", "dataset.background=0"))


def test_background_on_cifar10_stops_the_cli_before_a_run_dir(tmp_path):
    result = cli("dataset=cifar10", "dataset.background=0.25", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "dataset.background=0.25 is not allowed" in result.stderr and "`dataset.background=0`" in result.stderr
    assert not (tmp_path / "run").exists()


def test_context_digits_keep_their_digit_whole_and_add_ink_at_its_border():
    images = block_digits(10)
    images[:, :, 4:24, 4:24] = torch.arange(1, 11, dtype=torch.uint8).view(10, 1, 1, 1) * 20  # tell them apart
    out, which = context_digits(images, 200, seed=2)
    assert out.shape == (200, 1, 28, 28) and out.dtype == torch.uint8 and which.shape == (200,)
    again, same = context_digits(images, 200, seed=2)
    assert torch.equal(out, again) and torch.equal(which, same)
    assert (out >= images[which]).all() and holds_a_whole_digit(out).all()  # pasted by maximum: the digit stays
    added = (out > images[which]).flatten(1).any(1)
    assert added.float().mean() > 0.8, added.float().mean()  # a neighbour's edge or fragments (some fall outside)
    outside = out[:, :, :4].flatten(1).amax(1) + out[:, :, 24:].flatten(1).amax(1) + out[:, :, :, :4].flatten(1).amax(1)
    assert (outside > 0).float().mean() > 0.3  # ink around the digit, where a crop on a canvas shows a neighbour


def test_context_needs_a_background_class():
    with pytest.raises(ConfigError) as caught:
        validate(composed("dataset.context=0.5"))
    assert (caught.value.key, caught.value.fix) == ("dataset.context", "dataset.context=0")
    assert "background class" in str(caught.value) and "\n" not in str(caught.value)
    validate(composed("dataset.context=0.5", "dataset.background=0.25"))


# ---------------------------------------------------------------- the loaders


def test_uncropped_samples_stay_in_place_and_the_others_keep_their_offsets():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (16, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(16)
    kept = torch.zeros(16, dtype=torch.bool)
    kept[10:] = True
    args = {"batch_size": 5, "mean": [0.0], "std": [1.0], "shuffle": True, "pad": 3, "seed": 7}
    plain = DeviceLoader(x, y, **args)
    masked = DeviceLoader(x, y, uncropped=kept, **args)
    moved = 0
    for epoch in range(3):
        for (xa, ya), (xb, yb) in zip(plain.batches(epoch), masked.batches(epoch), strict=True):
            assert torch.equal(ya, yb)  # the same order: the mask draws nothing
            original = x[ya].float() * masked.scale - masked.shift  # normalized as the loader does
            for i, label in enumerate(ya.tolist()):
                if kept[label]:
                    assert torch.equal(xb[i], original[i])  # in place, no zeros shifted in
                    moved += int(not torch.equal(xa[i], original[i]))
                else:
                    assert torch.equal(xb[i], xa[i])  # the same offset as without the mask
    assert moved >= 10  # without the mask those samples would have moved


@pytest.fixture(scope="module")
def loaders():
    cfg = composed("dataset.background=0.25", "dataset.augment.pad=8")
    plain = composed("dataset.augment.pad=8")
    build = lambda c: build_loaders(c.dataset, typed(c.trainer), typed(c.runtime), 0, torch.device("cpu"))  # noqa: E731
    return build(cfg), build(plain)


def test_build_loaders_appends_background_patches_to_train_and_val(loaders):
    with_bg, plain = loaders
    assert (plain.train.num_samples, plain.val.num_samples, plain.test.num_samples) == (7000, 1000, 2000)
    for split, n, extra in (("train", 7000, 1750), ("val", 1000, 250)):
        loader, before = getattr(with_bg, split), getattr(plain, split)
        assert loader.num_samples == n + extra
        assert torch.equal(loader.x[:n], before.x) and torch.equal(loader.y[:n], before.y)
        assert (loader.y[n:] == 10).all() and (loader.y[:n] < 10).all()
        assert (loader.x[n:].flatten(1).amax(1) == 0).float().mean() > 0.15  # patches, some empty
    # from each split's own digits, the seed's for train and the next for val (the first patches: drawn in order)
    assert torch.equal(with_bg.train.x[7000:7020], background_patches(plain.train.x, 20, seed=0))
    assert torch.equal(with_bg.val.x[1000:1020], background_patches(plain.val.x, 20, seed=1))
    assert torch.equal(with_bg.train.uncropped, torch.arange(8750) >= 7000)
    assert with_bg.val.uncropped is None and with_bg.train.pad == 8
    assert torch.equal(with_bg.test.x, plain.test.x) and torch.equal(with_bg.test.y, plain.test.y)


def test_build_loaders_adds_context_digits_with_their_own_labels(loaders):
    with_bg, plain = loaders
    cfg = composed("dataset.background=0.25", "dataset.context=0.5", "dataset.augment.pad=8")
    ctx = build_loaders(cfg.dataset, typed(cfg.trainer), typed(cfg.runtime), 0, torch.device("cpu"))
    train = ctx.train
    assert train.num_samples == 7000 + 3500 + 1750 and ctx.val.num_samples == 1000 + 500 + 250
    assert torch.equal(train.x[:7000], plain.train.x) and torch.equal(train.x[10500:], with_bg.train.x[7000:])
    digits, labels = train.x[7000:10500], train.y[7000:10500]
    assert (labels < 10).all() and len(labels.unique()) == 10
    # each context digit holds a training digit of its label whole (pasted by maximum)
    sources = plain.train.x.flatten(1).int()
    for i in range(0, 3500, 500):
        covered = (digits[i].flatten().int() >= sources).all(1)
        assert covered.any() and (plain.train.y[covered] == labels[i]).all()
    assert torch.equal(train.uncropped, torch.arange(12250) >= 10500)  # only the background patches stay put


# ---------------------------------------------------------------- the per-cell scores of the canvas evaluation


def test_cell_scores_are_the_digit_channels_of_the_softmax_over_every_class():
    maps = torch.randn(2, 11, 4, 4)
    assert cell_scores(maps, None) is maps
    scores = cell_scores(maps, 10)
    assert scores.shape == (2, 10, 4, 4)
    assert torch.allclose(scores, maps.softmax(1)[:, :10])
    assert (scores.sum(1) < 1).all() and not torch.allclose(scores, maps[:, :10].softmax(1))
    maps[0, 10, 1, 2] = 50.0  # the cell sees background: every digit is near zero there
    assert cell_scores(maps, 10)[0, :, 1, 2].max() < 1e-10


# ---------------------------------------------------------------- a tiny run, end to end

TINY = ["model=resnet", "model.depth=8", "model.width=4", "trainer.max_steps=2", "dataset.background=0.25"]


def test_classify_localize_and_cam_with_a_background_class(tmp_path, monkeypatch):
    drawn = {}
    real = figures.confusion_matrix

    def confusion_matrix(matrix, path, title="", class_names=None):
        drawn.update(matrix=matrix, class_names=class_names)
        return real(matrix, path, title, class_names)

    monkeypatch.setattr(figures, "confusion_matrix", confusion_matrix)
    run_app(tmp_path / "train", *TINY, "dataset.augment.pad=8")
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert trained["model.num_classes"] == 11 and trained["dataset"] == "mnist_sample" and trained["steps"] == 2
    assert 0.0 <= trained["test_acc"] <= 1.0 and 0.0 <= trained["val_acc"] <= 1.0
    assert (tmp_path / "train" / "figures" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn["matrix"].shape == (11, 11) and drawn["matrix"][10].sum() == 0  # the test split has no background
    assert drawn["matrix"].sum() == 2000 and drawn["class_names"][-1] == "background"
    best = tmp_path / "train" / "checkpoints" / "best.pt"
    small = ["task.canvas.count=4", "task.canvas.size=64", "task.figure_count=2", "task.sanity_count=2"]
    for task, method in (("localize", "fully-conv"), ("cam", "cam"), ("cam", "grad-cam")):
        run_dir = tmp_path / f"{task}-{method}"
        result = run_app(run_dir, f"task={task}", f"checkpoint={best}", f"task.method={method}", *small)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert result == metrics["loc_acc"] and metrics["canvases"] == 4 and metrics["model.num_classes"] == 11
        for key in ("cls_acc", "loc_acc", "mean_iou", "pointing_acc", "box_precision", "insertion_auc"):
            assert 0.0 <= metrics[key] <= 1.0, (task, method, key)
        assert (run_dir / "figures" / f"{task}.png").read_bytes()[:4] == b"\x89PNG"
