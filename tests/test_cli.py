"""The README's commands, run as a user runs them: a subprocess of `python -m cnnlab`."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli


def test_default_run_is_offline_wandb_and_accurate(tmp_path):
    """`python -m cnnlab`: the MLP on the bundled sample, W&B offline, test_acc >= 0.90."""
    result = cli(f"hydra.run.dir={tmp_path}", "runtime.threads=2")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_acc"] >= 0.90
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert list((runs[0] / "files" / "media" / "images").rglob("*.png"))  # figures went to W&B too
    assert "test_acc" in result.stderr  # the summary table


def test_console_script_and_config_printing():
    script = Path(sys.executable).parent / "cnnlab"  # installed by pip install -e .
    args = [str(script), "model=resnet", "model.depth=56", "model.residual=false", "--cfg", "job", "--resolve"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "depth: 56" in result.stdout and "residual: false" in result.stdout
    assert "in_channels: 1" in result.stdout  # follows the dataset: never set twice


def test_bad_depth_is_one_clear_line(tmp_path):
    result = cli(f"hydra.run.dir={tmp_path}", "model=resnet", "model.depth=21", "logger=none")
    assert result.returncode == 2
    assert "model.depth=21 is not allowed" in result.stderr and "model.depth=20" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "metrics.json").exists()


def test_unknown_group_option_lists_choices(tmp_path):
    result = cli(f"hydra.run.dir={tmp_path}", "model=vgg")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "model='vgg' is not allowed: one of mlp, resnet" in result.stderr and "`model=mlp`" in result.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing written


def test_missing_data_offline_names_the_files(tmp_path):
    empty = Path(tmp_path) / "empty"
    empty.mkdir()
    result = cli(
        f"hydra.run.dir={tmp_path}/run",
        "dataset=mnist",
        f"dataset.root={empty}",
        "dataset.download=false",
        "logger=none",
    )
    assert result.returncode == 2
    assert "train-images-idx3-ubyte" in result.stderr and "dataset.root" in result.stderr
