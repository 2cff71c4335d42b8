"""A first hour without surprises: input errors found before anything is written, one line each; a quiet start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import cli, run_app

QUIET = ["logger=wandb", "trainer.max_steps=2"]  # W&B (offline) on: a refused run must not start one


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("mlp")
    run_app(run_dir, "trainer.max_steps=3", "runtime.figures=false")
    return run_dir / "checkpoints" / "best.pt"


def refused(tmp_path: Path, *args: str) -> str:
    """Run the CLI with `args`; assert exit 2, one line on stderr, nothing under paths.output_dir. The line."""
    out = tmp_path / "out"
    proc = cli(*args, *QUIET, f"paths.output_dir={out}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: "), proc.stderr[-2000:]
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    return lines[0]


def test_a_missing_checkpoint(tmp_path: Path) -> None:
    assert "does not exist" in refused(tmp_path, "task=evaluate", f"checkpoint={tmp_path / 'nowhere.pt'}")


def test_a_log_file_given_as_checkpoint(tmp_path: Path, mnist_checkpoint: Path) -> None:
    log = mnist_checkpoint.parent.parent / "cnnlab.log"
    log.write_text(log.read_text() if log.is_file() else "a log\n")
    assert "not written by cnnlab" in refused(tmp_path, "task=evaluate", f"checkpoint={log}")


def test_a_layer_the_model_does_not_have(tmp_path: Path, mnist_checkpoint: Path) -> None:
    line = refused(tmp_path, "task=cam", f"checkpoint={mnist_checkpoint}", "task.method=grad-cam", "task.layer=stage5")
    assert "task.layer='stage5' is not allowed" in line and "stage1" in line


def test_an_mlp_checkpoint_to_the_localizer(tmp_path: Path, mlp_checkpoint: Path) -> None:
    assert "model=resnet" in refused(tmp_path, "task=localize", f"checkpoint={mlp_checkpoint}")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["dataset.val_size=100000"], "dataset.val_size=100000 is not allowed: fewer than the 8000 training images"),
        (["model=resnet", "model.in_channels=0"], "model.in_channels=0 is not allowed"),
        (["dataset.std=[1,2]"], "dataset.std=[1.0, 2.0] is not allowed: one value per channel"),
    ],
)
def test_values_that_used_to_fail_inside_the_run(tmp_path: Path, args: list[str], said: str) -> None:
    assert said in refused(tmp_path, *args)


def test_a_dataset_root_without_the_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    line = refused(tmp_path, "dataset=mnist", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false")
    assert "no IDX files found" in line and "dataset.root=DIR" in line


def test_evaluate_takes_a_run_dir_as_its_best_checkpoint(tmp_path: Path, mnist_checkpoint: Path) -> None:
    run_dir = mnist_checkpoint.parent.parent
    proc = cli("task=evaluate", f"checkpoint={run_dir}", "logger=none", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"its best checkpoint, {mnist_checkpoint}" in proc.stdout + proc.stderr
    assert f"cnnlab: task=evaluate checkpoint={run_dir} (resnet(depth=8, width=4) on mnist_sample)" in proc.stderr


def test_a_default_start_prints_one_line_of_choices_not_the_config_tree(tmp_path: Path) -> None:
    args = ["model=resnet", "model.depth=8", "trainer.max_steps=1", "logger=none", "runtime.figures=false"]
    quiet = cli(*args, f"hydra.run.dir={tmp_path / 'a'}")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "model=resnet(depth=8, width=16) dataset=mnist_sample optimizer=sgd(lr=0.1)" in quiet.stderr
    assert "├──" not in quiet.stderr + quiet.stdout
    tree = cli(*args, "runtime.print_config=true", f"hydra.run.dir={tmp_path / 'b'}")
    assert "├──" in tree.stderr + tree.stdout


def test_debug_profile_on_a_cpu_prints_no_cuda_errors(tmp_path: Path) -> None:
    proc = cli("debug=profile", "model=resnet", "model.depth=8", "model.width=4", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "profile" / "trace.json").is_file()
    said = proc.stdout + proc.stderr
    assert "gpuGetDeviceCount" not in said and "CUDA" not in said


def test_a_closed_stdout_does_not_kill_the_jobs_of_a_sweep(tmp_path: Path) -> None:
    """`cnnlab -m ... 2>&1 | head -c 10`: the reader is gone after 10 bytes; every job completes and says so."""
    import os
    import subprocess
    import sys

    args = ["-m", "seed=0,1", "model=resnet", "model.depth=8", "model.width=4", "trainer.max_steps=20"]
    command = [sys.executable, "-m", "cnnlab", *args, "logger=none", f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    proc.stdout.read(10)
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    statuses = [json.loads((tmp_path / j / "status.json").read_text())["status"] for j in ("0", "1")]
    assert statuses == ["completed", "completed"]


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_piped_through_tee_stops_it_and_resume_finishes_it(tmp_path: Path) -> None:
    """Ctrl-C in a terminal reaches cnnlab and tee: tee is gone, job 0 of 3 writes last.pt and `interrupted`,
    jobs 1 and 2 never start, cnnlab exits 130; `cnnlab resume` then finishes the sweep."""
    import os
    import signal
    import subprocess
    import sys
    import time

    grid = ["-m", "seed=0,1,2", "model=resnet", "model.depth=8", "model.width=4", "trainer.max_steps=400"]
    args = [*grid, "runtime.checkpoint_every=10", "logger=none", "runtime.figures=false", f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env)  # fmt: skip
    deadline = time.time() + 120
    while not (tmp_path / "0" / "checkpoints" / "last.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.stdout.close()  # tee died
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    record = json.loads((tmp_path / "0" / "status.json").read_text())
    assert record["status"] == "interrupted" and (tmp_path / "0" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "1").exists() and not (tmp_path / "2").exists()
    resumed = cli("resume", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    statuses = [json.loads((tmp_path / j / "status.json").read_text())["status"] for j in "012"]
    assert statuses == ["completed"] * 3


def test_maps_of_the_test_split_take_a_count_and_show_progress(tmp_path: Path, mnist_checkpoint: Path) -> None:
    args = ["task=cam", f"checkpoint={mnist_checkpoint}", "task.source=test", "task.count=30", "task.sanity=false"]
    proc = cli(*args, "task.faithfulness=false", "logger=none", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 30 and metrics["task.count"] == 30
    said = proc.stdout + proc.stderr
    assert "cam on test images: 30/30" in said  # the phase's progress (log lines off a terminal)
    assert "cam: cam at stage3, " in said  # the title names the method and its layer once


def test_help_names_the_subcommands(tmp_path: Path) -> None:
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert all(f"cnnlab {name} " in proc.stdout for name in ("report", "resume", "sweep"))


def test_evaluate_on_other_data_of_the_same_shape(tmp_path: Path, mnist_checkpoint: Path, mnist_dir: Path) -> None:
    """A model trained on the MNIST sample, tested on other MNIST-format files: allowed, and the title says so."""
    args = ["task=evaluate", f"checkpoint={mnist_checkpoint}", "dataset=mnist", f"dataset.root={mnist_dir}",
            "dataset.val_size=100"]  # fmt: skip
    proc = cli(*args, "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(trained on mnist_sample) on mnist (test)" in " ".join(proc.stderr.split())  # the table title
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test_acc" in metrics and "trained_test_acc" not in metrics  # another test split: nothing to compare
    line = refused(tmp_path, "task=evaluate", f"checkpoint={mnist_checkpoint}", "dataset=cifar10")
    assert "dataset='cifar10' is not allowed: a dataset of the model's input shape [1, 28, 28]" in line


def test_a_blown_up_but_finite_loss_gets_a_hint() -> None:
    from cnnlab.training.trainer import blown_up

    assert blown_up(2.3, 0.1) is None and blown_up(float("nan"), 0.1) is None
    hint = blown_up(1e11, 0.5)
    assert hint is not None and "optimizer.lr=0.05" in hint and "divergence guard" in hint


def test_an_error_inside_a_single_run_is_one_line(tmp_path: Path) -> None:
    """Found only while training (a diverging lr): still one line, no Hydra 'Error executing job' before it."""
    args = ["model=resnet", "model.depth=8", "model.width=4", "trainer.max_steps=5", "optimizer.lr=1e12"]
    proc = cli(*args, "logger=none", "runtime.figures=false", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("cnnlab: error", "Error executing"))]
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: the training loss became NaN or inf"), lines
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "diverged"
