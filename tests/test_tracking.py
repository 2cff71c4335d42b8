"""W&B offline: the run lives in the run dir and holds config, metrics, figures and the checkpoint artifact."""

import json

from tests.conftest import run_app


def test_wandb_offline_run_records_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_app(
        tmp_path,
        "logger=wandb",
        "logger.watch.log=all",
        "logger.watch.freq=1",
        "logger.tags=[unit]",
        "model.hidden=[16]",
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "seed=3",
    )
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    run_id = run.name.rsplit("-", 1)[1]
    record = (run / f"run-{run_id}.wandb").read_bytes()
    assert b"mlp-s3" in record  # the readable run name
    assert f"model-{run_id}".encode() in record and b"best" in record and b"latest" in record  # artifacts
    assert b"eval/val_acc" in record and b"train/loss" in record and b"test_acc" in record
    assert b"parameters/" in record or b"gradients/" in record  # wandb.watch histograms
    assert list((run / "files" / "media" / "images").rglob("confusion_matrix*.png"))
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 4


def test_logger_none_writes_no_wandb_dir(tmp_path):
    run_app(tmp_path, "model.hidden=[16]", "trainer.max_steps=2", "runtime.figures=false")
    assert not (tmp_path / "wandb").exists() and (tmp_path / "metrics.json").exists()
