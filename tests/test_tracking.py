"""W&B offline: the run lives in the run dir and holds config, metrics, figures and the checkpoint artifact."""

import base64
import hashlib
import json
import struct
from pathlib import Path

from tests.helpers import run_app

BLOCK, HEADER = 32 * 1024, 7  # the .wandb file: LevelDB's log format, 32 KiB blocks, 7-byte record headers


def wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file, parsed with wandb's own protobuf definitions.

    wandb has no Python reader of its own (wandb-core writes and syncs the file): this follows LevelDB's log
    format, as wandb's writer does: a 7-byte file header (":W&B", magic, version), then chunks with a header
    of crc32 (4 bytes), length (2) and type (1: full, 2: first, 3: middle, 4: last) that never cross a block.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the block's tail is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero fill: the end of what was written
            break
        pending += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def md5_base64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def artifact_records(path, expected: int, patience_s: float = 60.0) -> list:
    """The artifact records of an offline run file. W&B's service process may still be writing the file's last
    block (the artifacts come last) when finish() has returned on a loaded machine: read again until they are
    there, or give up after `patience_s`."""
    import time

    deadline = time.monotonic() + patience_s
    while True:
        try:
            artifacts = [r.artifact for r in wandb_records(path) if r.HasField("artifact")]
        except Exception:  # a chunk still being written
            artifacts = []
        if len(artifacts) >= expected or time.monotonic() > deadline:
            return artifacts
        time.sleep(0.5)


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
    # the checkpoint artifact: best.pt with alias best, then last.pt, which takes the alias latest from it
    artifacts = artifact_records(run / f"run-{run_id}.wandb", expected=2)
    record = (run / f"run-{run_id}.wandb").read_bytes()  # complete now: the artifacts are written last
    assert [(a.name, a.type) for a in artifacts] == [(f"model-{run_id}", "model")] * 2
    best, last = artifacts
    assert "best" in best.aliases and list(last.aliases) == ["latest"]
    files = {n: [(c.path, c.digest) for c in a.manifest.contents] for n, a in (("best", best), ("last", last))}
    assert files == {n: [("model.pt", md5_base64(tmp_path / "checkpoints" / f"{n}.pt"))] for n in ("best", "last")}
    assert b"eval/val_acc" in record and b"train/loss" in record and b"test_acc" in record
    assert b"parameters/" in record or b"gradients/" in record  # wandb.watch histograms
    assert list((run / "files" / "media" / "images").rglob("confusion_matrix*.png"))
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 4


def test_logger_none_writes_no_wandb_dir(tmp_path):
    run_app(tmp_path, "model.hidden=[16]", "trainer.max_steps=2", "runtime.figures=false")
    assert not (tmp_path / "wandb").exists() and (tmp_path / "metrics.json").exists()
