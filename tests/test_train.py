"""End-to-end runs of the classify and evaluate tasks on small data, in-process."""

import json

import pytest
import torch

from cnnlab.config.schema import RuntimeConfig, TrainerConfig
from cnnlab.models.resnet import ResNet
from cnnlab.records import checkpoint
from cnnlab.training.trainer import Trainer
from tests.helpers import run_app, write_cifar10

METRIC_KEYS = {
    "test_acc",
    "test_loss",
    "val_acc",
    "best_val_acc",
    "params",
    "epochs",
    "steps",
    "seconds",
    "train_img_per_s",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small MLP trained on the bundled real MNIST digits for 60 steps, evaluated every 20."""
    run_dir = tmp_path_factory.mktemp("run")
    value = run_app(
        run_dir, "model.hidden=[64]", "trainer.max_steps=60", "trainer.eval_every=20", "runtime.log_every=5"
    )
    return run_dir, value


def test_training_writes_metrics_history_checkpoints_figures(trained):
    run_dir, value = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics.keys() >= METRIC_KEYS
    assert metrics["params"] == 784 * 64 + 64 + 64 * 10 + 10
    assert metrics["steps"] == 60 and metrics["epochs"] == pytest.approx(60 / 55)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [20, 40, 60]
    best = next(r for r in history if r["step"] == metrics["best_step"])
    assert value == metrics["val_acc"] == best["val_acc"]  # best.pt's, recomputed after training
    assert metrics["best_val_acc"] == max(r["val_acc"] for r in history)
    assert metrics["last_val_acc"] == history[-1]["val_acc"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] < 2.3  # it learns
    assert metrics["test_acc"] > 0.8  # real digits; chance is 0.1
    assert {"lr", "val_loss", "train_acc", "epoch"} <= history[0].keys()
    for name in ("training_curves.png", "confusion_matrix.png"):
        assert (run_dir / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["val_indices"]) == 1000


def test_resnet_on_mnist_format_files(tmp_path, mnist_dir):
    run_app(
        tmp_path,
        "model=resnet",
        "model.depth=8",
        "model.width=4",
        "model.residual=false",
        "dataset=mnist",
        f"dataset.root={mnist_dir}",
        "dataset.download=false",
        "dataset.val_size=100",
        "trainer.epochs=2",
        "trainer.batch_size=50",
        "runtime.figures=false",
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["params"] == sum(p.numel() for p in ResNet(depth=8, width=4, in_channels=1).parameters())
    assert metrics["steps"] == 2 * 10 and metrics["model.residual"] is False and metrics["dataset"] == "mnist"


def test_checkpoint_contents(trained):
    run_dir, _ = trained
    best = checkpoint.load(run_dir / "checkpoints" / "best.pt")
    last = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scheduler", "train_state", "rng", "config", "metrics"} <= best.keys()
    assert best["config"]["model"]["hidden"] == [64] and best["metrics"]["test_acc"] > 0.8
    assert last["train_state"]["step"] == 60 and isinstance(last["rng"]["torch"], torch.Tensor)


def test_evaluate_reproduces_test_acc(trained, tmp_path):
    run_dir, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    acc = run_app(tmp_path, "task=evaluate", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}")
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    assert acc == metrics["test_acc"] == evaluated["test_acc"]
    assert evaluated["test_loss"] == pytest.approx(metrics["test_loss"], abs=1e-6)
    assert {"class0_precision", "class9_recall", "class3_f1"} <= evaluated.keys()
    assert (tmp_path / "figures" / "confusion_matrix.png").exists()


def test_the_best_evaluation_before_the_last_is_the_one_tested(tmp_path):
    """lr 0.1 for 15 steps, then 3.0: val accuracy peaks at step 15 and collapses after, so best.pt is not the end
    of training. The metrics, best.pt and `task=evaluate` must all be of the step-15 weights."""
    run_dir = tmp_path / "run"
    run_app(
        run_dir, "model.hidden=[16]", "trainer.max_steps=30", "trainer.eval_every=5", "runtime.figures=false",
        "scheduler=multistep", "scheduler.unit=step", "scheduler.milestones=[15]", "scheduler.gamma=30",
    )  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [5, 10, 15, 20, 25, 30] and metrics["steps"] == 30
    best = max(history, key=lambda r: r["val_acc"])
    assert metrics["best_step"] == best["step"] < metrics["steps"]
    assert metrics["val_acc"] == best["val_acc"] == metrics["best_val_acc"]
    assert metrics["last_val_acc"] == history[-1]["val_acc"] < best["val_acc"] - 0.2  # a collapse, not noise
    assert checkpoint.load(run_dir / "checkpoints" / "best.pt")["train_state"]["step"] == best["step"]

    best_pt = run_dir / "checkpoints" / "best.pt"
    assert run_app(tmp_path / "val", "task=evaluate", "task.split=val", f"checkpoint={best_pt}") == metrics["val_acc"]
    evaluated = run_app(tmp_path / "test", "task=evaluate", f"checkpoint={best_pt}")
    assert evaluated == metrics["test_acc"]
    assert json.loads((tmp_path / "test" / "metrics.json").read_text())["test_loss"] == pytest.approx(
        metrics["test_loss"], abs=1e-6
    )


def test_max_steps_and_no_checkpoint(tmp_path):
    run_app(tmp_path, "trainer.max_steps=3", "runtime.checkpoint=false", "runtime.figures=false")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 3 and not (tmp_path / "checkpoints").exists()


def test_cifar10_resnet_with_augmentation_and_schedule(tmp_path):
    data = write_cifar10(tmp_path / "data", per_batch=20, n_test=20)
    run_app(
        tmp_path / "run",
        "model=resnet",
        "model.depth=8",
        "model.width=4",
        "model.shortcut=B",
        "dataset=cifar10",
        f"dataset.root={data}",
        "dataset.download=false",
        "dataset.val_size=20",
        "trainer.batch_size=16",
        "trainer.epochs=2",
        "scheduler=multistep",
        "scheduler.milestones=[1]",
        "runtime.figures=false",
    )
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert history[0]["lr"] == pytest.approx(0.01) and history[1]["lr"] == pytest.approx(0.01)
    expected = sum(p.numel() for p in ResNet(depth=8, width=4, shortcut="B").parameters())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["params"] == expected


def test_channels_last_auto_avoids_the_cpu_kernel_crash(tmp_path):
    cpu = torch.device("cpu")
    small = Trainer(TrainerConfig(), cpu, tmp_path)
    small.prepare(ResNet(depth=8, width=4, shortcut="B"))  # 4->8 channel 1x1 stride-2 projection
    assert small.runtime.channels_last is False
    wide = Trainer(TrainerConfig(), cpu, tmp_path)
    model = wide.prepare(ResNet(depth=8, width=16, shortcut="B"))
    assert wide.runtime.channels_last is True and model.fc.weight.device == cpu
    assert model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    forced = Trainer(TrainerConfig(), cpu, tmp_path, runtime=RuntimeConfig(channels_last=True))
    with pytest.raises(ValueError, match="fewer than 8 input channels"):
        forced.prepare(ResNet(depth=8, width=4, shortcut="C"))


def test_eval_test_adds_test_curves_without_changing_the_choice(tmp_path):
    run_app(tmp_path, "model.hidden=[16]", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.eval_test=true")
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert all("test_acc" in r and "test_loss" in r for r in history)
    best = max(history, key=lambda r: r["val_acc"])  # the first best on val, as the trainer keeps it
    assert metrics["best_step"] == best["step"] and metrics["test_acc"] == pytest.approx(best["test_acc"])


def test_figures_name_their_run_and_the_run_dir_is_printed_whole(tmp_path, monkeypatch, capsys):
    from cnnlab.records import figures

    titles = {}
    real_curves, real_matrix = figures.training_curves, figures.confusion_matrix
    monkeypatch.setattr(figures, "training_curves", lambda h, p, title=None: titles.setdefault("curves", title)
                        and real_curves(h, p, title))  # fmt: skip
    monkeypatch.setattr(figures, "confusion_matrix", lambda m, p, title="", class_names=None: titles.setdefault(
        "matrix", title) and real_matrix(m, p, title, class_names))  # fmt: skip
    run_dir = tmp_path / ("a-long-directory-name-" * 6) / "run"  # longer than a terminal line
    run_app(run_dir, "model.hidden=[8]", "trainer.max_steps=3", "seed=3")
    assert titles["curves"] == "mlp-s3 on mnist_sample" and titles["matrix"].startswith("mlp-s3 on mnist_sample")
    err = capsys.readouterr().err
    assert f"run dir: {run_dir}\n" in err  # on its own line, never wrapped mid-name
    assert f"figure: {run_dir / 'figures' / 'training_curves.png'}\n" in err
