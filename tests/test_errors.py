"""Every bad input ends in one clear message (key, value, what is allowed, the fix), before any result is written.

Most cases run in-process (the message and error type); the CLI cases check the exit code and that no
traceback is printed. `cnnlab.__main__` turns every UserError into `cnnlab: error: ...` and exit code 2.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torchvision import datasets

from cnnlab.errors import CheckpointError, ConfigError, DataError, UserError
from cnnlab.records import checkpoint
from cnnlab.records.status import read_status
from cnnlab.report import load_runs
from cnnlab.training.trainer import DivergenceError
from tests.helpers import Payload, cli, run_app, write_mnist

TINY = ["trainer.max_steps=2", "runtime.figures=false"]


@pytest.mark.parametrize(
    ("overrides", "error", "says"),
    [
        (["model=resnet", "model.depth=7"], ConfigError, "model.depth=7 is not allowed.*`model.depth=8`"),
        (["model=resnet", "model.width=0"], ConfigError, "model.width=0 is not allowed"),
        (["model=resnet", "model.shortcut=D"], ConfigError, "model.shortcut='D' is not allowed: A, B or C"),
        (["optimizer.lr=0"], ConfigError, "optimizer.lr=0.0 is not allowed: a positive number"),
        (["optimizer.lr=-0.1"], ConfigError, "optimizer.lr=-0.1 is not allowed"),
        (["trainer.batch_size=0"], ConfigError, "trainer.batch_size=0 is not allowed: a positive integer"),
        (["trainer.epochs=-1"], ConfigError, "trainer.epochs=-1 is not allowed: 0 or more"),
        (["dataset.val_size=8000"], ConfigError, "dataset.val_size=8000 is not allowed: between 1 and 7999"),
        (["runtime.device=cuda"], ConfigError, "runtime.device='cuda' is not allowed.*no CUDA GPU"),
        (["runtime.resume=nowhere"], ConfigError, "runtime.resume='nowhere' is not allowed: a run dir"),
        (["logger=wandb", "logger.mode=sometimes"], ConfigError, "logger.mode='sometimes' is not allowed"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_bad_config_fails_before_any_result(tmp_path, overrides, error, says):
    if "runtime.device=cuda" in overrides and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(error, match=says):
        run_app(tmp_path, *TINY, *overrides)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoints").exists()


def test_missing_data_without_download(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no IDX files found in .*empty.*dataset.download=true"):
        run_app(
            tmp_path / "run", *TINY, "dataset=mnist", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false"
        )
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_missing_data_with_a_failing_download(tmp_path, monkeypatch):
    # Nothing listens on port 9 of this machine: the download fails at once, as it does with no network.
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError, match="could not download train-images-idx3-ubyte.gz"):
        run_app(tmp_path / "run", *TINY, "dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=true")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_corrupt_data_file(tmp_path):
    data = write_mnist(tmp_path / "mnist", n_train=100, n_test=20, gz=False)
    images = data / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated or corrupt"):
        run_app(tmp_path / "run", *TINY, "dataset=mnist", f"dataset.root={data}", "dataset.val_size=10")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_wandb_artifact_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(CheckpointError, match="is a W&B artifact, but WANDB_MODE=offline"):
        run_app(tmp_path, "task=evaluate", "checkpoint=wandb:me/cnnlab/model-abc:best")
    assert not (tmp_path / "metrics.json").exists()


def test_evaluate_a_checkpoint_that_is_not_one(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt is truncated or corrupt"):
        run_app(tmp_path / "run", "task=evaluate", f"checkpoint={tmp_path / 'notes.pt'}")


def test_a_refused_checkpoint_is_named_in_plain_text(tmp_path, monkeypatch):
    """torch's weights_only error embeds terminal colour codes: the one-line message must not carry them."""
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "config": Payload(tmp_path / "pwned")}, path)
    with pytest.raises(CheckpointError, match="refused to load") as e:
        checkpoint.load(path)
    assert "\x1b" not in str(e.value) and not (tmp_path / "pwned").exists()

    def refuse(*args, **kwargs):  # whatever torch's wording, colour codes are stripped
        raise pickle.UnpicklingError("\x1b[1mdo not load this\x1b[0m: \x1b[31;1mGLOBAL os.system\x1b[0m\nmore")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(path)
    assert "(do not load this: GLOBAL os.system)" in str(e.value) and "\x1b" not in str(e.value)


NAN = [  # lr 0.1 for 10 steps (evaluations at 5 and 10), then 0.1 * 1e12: the loss overflows within a few steps
    "model.hidden=[8]", "runtime.figures=false", "trainer.max_steps=60", "trainer.eval_every=5", "runtime.log_every=1",
    "scheduler=multistep", "scheduler.unit=step", "scheduler.milestones=[10]", "scheduler.gamma=1e12",
]  # fmt: skip


def test_nan_loss_stops_the_run_keeps_best_and_records_divergence(tmp_path):
    with pytest.raises(
        DivergenceError, match=r"NaN or inf (at step|between steps) \d+.*try optimizer.lr=0.01 or lower"
    ) as e:
        run_app(tmp_path, *NAN)
    assert isinstance(e.value, UserError) and "best checkpoint so far is kept" in str(e.value)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and 10 < metrics["steps"] < 60 and metrics["best_step"] in (5, 10)
    assert "test_acc" not in metrics and str(metrics["steps"]) in metrics["error"]
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in best["model"].values())


def test_a_diverged_run_says_so_in_status_json_and_exits_non_zero(tmp_path):
    run_dir = tmp_path / "run"
    result = cli("logger=none", *NAN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "cnnlab: error: the training loss became NaN or inf" in result.stderr and "Traceback" not in result.stderr
    status = read_status(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "diverged" and metrics["status"] == "diverged"
    assert status["step"] == metrics["steps"] and 10 < status["step"] < 60
    assert status["error"] == f"DivergenceError: {metrics['error']}" and "NaN or inf" in status["error"]
    (run,) = load_runs(tmp_path)  # the report lists it as failed, with the step
    assert run.status == "failed" and run.error.startswith(f"diverged at step {status['step']}: the training loss")


def test_unwritable_output_dir_is_one_clear_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("logger=none", *TINY, f"paths.output_dir={blocker / 'outputs'}")
    assert result.returncode == 2
    assert "cnnlab: error: cannot write the run dir" in result.stderr and "paths.output_dir=DIR" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["model=resnet", "model.shortcut=D"], "model.shortcut='D' is not allowed"),
        (["trainer.epochs=-1"], "trainer.epochs=-1 is not allowed"),
        (["dataset.val_size=8000"], "dataset.val_size=8000 is not allowed"),
        (["runtime.resume=auto"], "runtime.resume=auto: no run under"),
    ],
)
def test_cli_errors_are_one_line_exit_2_and_write_no_metrics(tmp_path: Path, overrides, says):
    result = cli("logger=none", *TINY, f"paths.output_dir={tmp_path}", *overrides)
    assert result.returncode == 2 and says in result.stderr
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.slow
def test_diverging_job_fails_and_the_sweep_goes_on(tmp_path: Path):
    result = cli(
        "-m", "logger=none", "model.hidden=[8]", "trainer.max_steps=30", "runtime.log_every=1",
        "runtime.figures=false", "optimizer.lr=0.1,1e12", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode != 0
    ok, diverged = (json.loads((tmp_path / job / "metrics.json").read_text()) for job in ("0", "1"))
    assert "test_acc" in ok and diverged["status"] == "diverged"


def test_a_sweep_on_the_command_line_does_not_hide_a_jobs_own_error() -> None:
    """A multirun whose jobs fail for a reason of their own (a full disk, a bug) with `seed=0,1` on its command
    line: the error is left to say itself (None: a bug keeps its traceback), not replaced by Hydra's
    "Cannot convert sweep to str" from reading the sweep's value."""
    from cnnlab.app.launch import one_line
    from cnnlab.config.overrides import values

    assert values(["seed=0,1", "model.depth=range(8,21,6)", "trainer.max_steps=3"]) == {
        "seed": "0,1",
        "model.depth": "range(8,21,6)",
        "trainer.max_steps": "3",
    }
    assert one_line(RuntimeError("unexpected pos 2152896 vs 2152824"), ["seed=0,1", "trainer.max_steps=3"]) is None
