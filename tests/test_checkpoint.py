"""Checkpoints: atomic writes survive a kill, bad files fail with a clear error, and loading never runs code."""

from __future__ import annotations

import io
import os
import pickle
import random
import signal
import zipfile

import numpy as np
import pytest
import torch

from cnnlab.errors import CheckpointError
from cnnlab.models.resnet import ResNet
from cnnlab.records import checkpoint
from cnnlab.tasks.build import restore_model
from tests.helpers import Payload


def test_kill_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save({"step": 1, "weights": torch.ones(10_000)}, path)
    pid = os.fork()
    if pid == 0:  # the child writes half of the next checkpoint and is killed: no cleanup code runs
        real_save = torch.save

        def half_then_die(obj, f):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = half_then_die
        checkpoint.save({"step": 2, "weights": torch.zeros(10_000)}, path)
        os._exit(0)  # not reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    state = checkpoint.load(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(10_000))
    (partial,) = tmp_path.glob(".last.pt.*.tmp")  # the half-written file never replaced last.pt
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(partial)


def test_save_leaves_no_temporary_file(tmp_path):
    checkpoint.save({"step": 3}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


@pytest.mark.parametrize("cut", [0, 10, 0.5, -8])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, cut):
    path = tmp_path / "good.pt"
    checkpoint.save({"model": ResNet(depth=8, width=4).state_dict()}, path)
    data = path.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(CheckpointError, match=r"bad\.pt is truncated or corrupt"):
        checkpoint.load(bad)


def test_corrupt_bytes_are_a_clear_error(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path)


def test_missing_checkpoint_and_foreign_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.pt")
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a cnnlab checkpoint"):
        checkpoint.load(tmp_path / "plain.pt")


def test_a_checkpoint_of_another_format_number_is_one_clear_line(tmp_path):
    assert checkpoint.FORMAT == "cnnlab-checkpoint-2"
    torch.save({"format": "cnnlab-checkpoint-1", "model": {}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(tmp_path / "old.pt")
    assert "format cnnlab-checkpoint-1, and this cnnlab reads cnnlab-checkpoint-2" in str(e.value)
    assert "\n" not in str(e.value)


def test_the_header_reads_the_plain_values_without_loading_tensors(tmp_path):
    path = checkpoint.save({"config": {"seed": 3}, "model": {"w": torch.arange(4.0)}}, tmp_path / "c.pt")
    header = checkpoint.header(path)
    assert header["config"] == {"seed": 3} and torch.equal(header["model"]["w"], torch.arange(4.0))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_checkpoint_is_refused_without_running_its_payload(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    state = {"format": checkpoint.FORMAT, "model": {}, "extra": Payload(marker)}
    with open(path, "wb") as f:
        torch.save(state, f) if writer == "torch.save" else pickle.dump(state, f)
    says = "refused to load .*evil.pt.*could run code on load" if writer == "torch.save" else "evil.pt .*refused"
    with pytest.raises(CheckpointError, match=says):
        checkpoint.load(path)
    assert not marker.exists()
    # the same file loaded without weights_only would run the payload: the test's file really is malicious
    if writer == "torch.save":
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_restore_model_refuses_a_malicious_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "config": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        restore_model(str(path), torch.device("cpu"), tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("other", "says"),
    [
        ({"depth": 14}, "tensors the model lacks"),
        ({"width": 8}, "stage1.0.bn1.weight: model (4,) vs checkpoint (8,)"),
        ({"num_classes": 5}, "fc.weight: model (10, 16) vs checkpoint (5, 16)"),
        ({"shortcut": "C"}, "tensors the model lacks"),
    ],
)
def test_checkpoint_of_another_model_says_what_differs(tmp_path, other, says):
    mine = ResNet(depth=8, width=4, in_channels=1)
    theirs = ResNet(**{"depth": 8, "width": 4, "in_channels": 1, **other})
    with pytest.raises(CheckpointError, match="does not fit this model") as error:
        checkpoint.check_fits(mine, theirs.state_dict(), tmp_path / "x.pt")
    assert says in str(error.value)


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    checkpoint.save({"rng": checkpoint.rng_states()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    checkpoint.set_rng_states(checkpoint.load(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_checkpoint_is_a_zip_of_tensors(tmp_path):
    path = checkpoint.save({"model": {"w": torch.ones(2)}}, tmp_path / "c.pt")
    assert zipfile.is_zipfile(path)
