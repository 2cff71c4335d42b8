"""The README's commands, run as a user runs them: a subprocess of `python -m cnnlab`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnlab.report import main as report_main
from tests.helpers import accuracy, cli, make_run, run_app

SCRIPT = Path(sys.executable).parent / "cnnlab"  # the console script pip install -e . put beside the interpreter


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
    args = [str(SCRIPT), "model=resnet", "model.depth=56", "model.residual=false", "--cfg", "job", "--resolve"]
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
    assert "model='vgg' is not allowed: one of mlp, resnet." in result.stderr  # nothing close: no suggestion
    assert "Fix it" not in result.stderr
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


def test_runs_stopped_before_any_work_are_not_runs_for_the_report(tmp_path, capsys):
    """A typo and missing data files both fail before Hydra makes the run dir (the preflight reads the data
    files' headers); neither leaves a run that `cnnlab report` counts."""
    typo = cli("model=resnet", "model.depth=21", "logger=none", f"hydra.run.dir={tmp_path / 'typo'}")
    assert typo.returncode == 2 and "model.depth=21 is not allowed" in typo.stderr
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    overrides = ["dataset=mnist", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false", "logger=none"]
    no_data = cli(*overrides, f"hydra.run.dir={tmp_path / 'no-data'}")
    assert no_data.returncode == 2 and "cnnlab: error:" in no_data.stderr and "Traceback" not in no_data.stderr
    assert "no IDX files found" in no_data.stderr and not (tmp_path / "no-data").exists()
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"cnnlab report: error: no runs under {tmp_path}" in capsys.readouterr().err
    assert not (tmp_path / "results.md").exists()


def test_console_script_report_and_sweep(tmp_path):
    sweep = tmp_path / "multirun"
    for num, (depth, residual) in enumerate([(20, True), (20, False), (32, True), (32, False)]):
        overrides = [f"model.depth={depth}", f"model.residual={str(residual).lower()}", "seed=0"]
        make_run(sweep / str(num), overrides, accuracy(depth, residual, 0), status="completed")
    args = [str(SCRIPT), "report", str(sweep), "--no-figures"]
    report = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert report.stdout.rstrip().endswith(f"wrote {sweep / 'results.md'}")
    assert "4 runs: 4 completed, 0 failed, 0 unfinished" in (sweep / "results.md").read_text()
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in report.stdout.splitlines() if line[:1] == "│"]
    assert [r[:2] for r in rows] == [["20", "plain"], ["32", "plain"], ["20", "residual"], ["32", "residual"]]
    assert rows[1][5] == f"{100 * accuracy(32, False, 0):.2f}"  # one seed: the value alone

    out = tmp_path / "s.yaml"
    args = [str(SCRIPT), "sweep", "model=resnet", "model.depth=20,32", "seed=0,1", "-o", str(out)]
    made = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"wrote {out}: 4 runs over model.depth, seed\n") and "wandb agent" in made.stdout
    config = yaml.safe_load(out.read_text())
    assert config["parameters"] == {"model.depth": {"values": [20, 32]}, "seed": {"values": [0, 1]}}
    assert config["command"][:5] == ["${env}", "${interpreter}", "-m", "cnnlab", "model=resnet"]  # the agent's python
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun", "s.yaml"]  # -o: no sweep-<name>.yaml


def test_evaluate_warns_that_model_overrides_are_ignored(tmp_path):
    run_app(tmp_path / "train", "model.hidden=[16]", "trainer.max_steps=2", "runtime.figures=false")
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    best = tmp_path / "train" / "checkpoints" / "best.pt"
    run_dir = tmp_path / "evaluate"
    done = cli("task=evaluate", f"checkpoint={best}", "model=resnet", "model.depth=56", "logger=none",
               f"hydra.run.dir={run_dir}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    says = "task=evaluate rebuilds the model from the checkpoint: ignored model, model.depth"
    lines = (done.stdout + done.stderr).splitlines()
    assert len([line for line in lines if "WARNING" in line and line.endswith(says)]) == 1
    assert says in (run_dir / "cnnlab.log").read_text()
    evaluated = json.loads((run_dir / "metrics.json").read_text())
    assert evaluated["model"] == "mlp" and evaluated["test_acc"] == trained["test_acc"]  # the checkpoint's model


def test_optunas_no_completed_trial_message_is_known() -> None:
    """The one plugin message matched by its text: Optuna's storages raise it from get_best_trial."""
    import inspect

    from optuna.storages import BaseStorage

    from cnnlab.app.launch import no_trial_completed

    assert "No trials are completed yet." in inspect.getsource(BaseStorage.get_best_trial)
    assert no_trial_completed(ValueError("No trials are completed yet."))
    assert not no_trial_completed(ValueError("model.depth=21 is not allowed"))
