"""Exact resume: a training run killed mid-epoch (SIGKILL, SIGTERM, Ctrl-C) and resumed ends bit-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.errors import CheckpointError
from cnnlab.records import checkpoint
from cnnlab.records.rundir import truncate_rows
from cnnlab.records.status import read_status
from cnnlab.report import load_runs
from tests.helpers import RESUME_RUN, ROOT, assert_same_run, cli, run_app

KILL_AT = 37  # mid-epoch 2: the last periodic checkpoint is at step 30, the last evaluation at 28

# Runs cnnlab in a child that sends itself `signal` just before its training batch number `at` is used.
CHILD = """
import os, sys
from cnnlab.data import loader
sig, at = int(sys.argv[1]), int(sys.argv[2])
original, count = loader.DeviceLoader.batches, [0]
def batches(self, epoch=0, start=0):
    for batch in original(self, epoch, start):
        if self.shuffle:
            count[0] += 1
            if count[0] == at:
                os.kill(os.getpid(), sig)
        yield batch
loader.DeviceLoader.batches = batches
import runpy
sys.argv = ["cnnlab", *sys.argv[3:]]
runpy.run_module("cnnlab", run_name="__main__", alter_sys=True)  # as `python -m cnnlab`
"""


def run_killed(sig: int, at: int, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(int(sig)), str(at), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference")
    run_app(run_dir, *RESUME_RUN)
    return run_dir


def test_sigkill_mid_epoch_then_resume_auto_is_bit_identical(reference, tmp_path):
    out = tmp_path / "outputs"
    killed = run_killed(signal.SIGKILL, KILL_AT, *RESUME_RUN, f"paths.output_dir={out}")
    assert killed.returncode == -signal.SIGKILL
    (run_dir,) = [p.parent for p in out.rglob("checkpoints")]
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["train_state"]["step"] == 30
    assert not (run_dir / "metrics.json").exists()
    assert read_status(run_dir)["status"] == "running"  # a SIGKILL leaves no word: the report calls it unfinished

    resumed = cli(*RESUME_RUN, f"paths.output_dir={out}", "runtime.resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, reference)
    assert read_status(run_dir)["status"] == "completed"
    assert len(list(out.rglob("overrides.yaml"))) == 2  # one run dir: .hydra/ as started, .hydra/resume/
    assert "runtime.resume" not in (run_dir / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGINT"]
)
def test_signal_writes_checkpoint_prints_resume_command_and_resumes(reference, tmp_path, sig):
    run_dir = tmp_path / "run"
    stopped = run_killed(sig, KILL_AT, *RESUME_RUN, f"hydra.run.dir={run_dir}")
    assert stopped.returncode == 128 + sig, stopped.stderr
    assert f"interrupted by {sig.name} at step {KILL_AT}" in stopped.stderr
    assert "resume with: python -m cnnlab" in stopped.stderr and f"runtime.resume={run_dir}" in stopped.stderr
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["train_state"]["step"] == KILL_AT
    assert not (run_dir / "metrics.json").exists()
    status = read_status(run_dir)
    command = status["resume_command"]
    assert status["status"] == "interrupted" and status["step"] == KILL_AT
    assert command.startswith("python -m cnnlab ") and command.endswith(f"runtime.resume={run_dir}")
    assert status["error"].startswith(f"Interrupted: interrupted by {sig.name} at step {KILL_AT}")
    (run,) = load_runs(tmp_path)  # the report: unfinished, with where it stopped and how to continue
    assert run.status == "unfinished" and run.note == f"interrupted at step {KILL_AT}, resume with `{command}`"

    # the resume, as a user runs it (status.json is the Hydra job's): outputs elsewhere go to tmp_path
    last = run_dir / "checkpoints" / "last.pt"
    resumed = cli(*RESUME_RUN, f"paths.output_dir={tmp_path / 'outputs'}", f"runtime.resume={last}")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, reference)
    assert read_status(run_dir)["status"] == "completed" and "previous" not in read_status(run_dir)
    assert not (tmp_path / "outputs").exists()  # it continued in the original run dir


def test_resume_with_another_model_says_what_differs(reference, tmp_path):
    with pytest.raises(CheckpointError, match=r"model.hidden: \[16\] in the checkpoint, \[32\] now"):
        run_app(tmp_path, *RESUME_RUN[:3], "model.hidden=[32]", *RESUME_RUN[4:], f"runtime.resume={reference}")
    assert not (tmp_path / "metrics.json").exists()


def test_truncate_rows_keeps_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"step": 10}\n{"step": 20}\n{"step": 30}\n{"st')  # the last line was cut by a kill
    truncate_rows(path, 20)
    assert path.read_text() == '{"step": 10}\n{"step": 20}\n'


@pytest.mark.slow
def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    run = [o for o in RESUME_RUN if not o.startswith("logger=")] + ["logger=wandb", f"hydra.run.dir={tmp_path}"]
    stopped = run_killed(signal.SIGTERM, KILL_AT, *run)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    (first,) = (tmp_path / "wandb").glob("offline-run-*")
    run_id = first.name.rsplit("-", 1)[1]
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["wandb_id"] == run_id

    resumed = cli(*run, f"runtime.resume={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {r.name.rsplit("-", 1)[1] for r in runs} == {run_id}  # one W&B run, two sessions
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["wandb_id"] == run_id
