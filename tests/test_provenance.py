"""Every run records the code it ran (commit, dirty tree, versions, host, device); the report warns on mixed code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cnnlab.data import loader
from cnnlab.records import checkpoint, provenance
from cnnlab.records.provenance import code_version, mixed_code
from cnnlab.records.status import read_status, write_status
from cnnlab.records.tracking import NullLogger
from cnnlab.report import report
from cnnlab.training.stop import Interrupted, stop
from tests.helpers import ROOT, make_run, run_app

RUN = ("model.hidden=[8]", "trainer.max_steps=4", "trainer.eval_every=2", "runtime.figures=false")
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run")
    run_app(path, *RUN)
    return path


def test_metrics_and_checkpoints_record_the_code(run_dir: Path) -> None:
    recorded = json.loads((run_dir / "metrics.json").read_text())["provenance"]
    assert recorded["commit"] == code_version(ROOT)["commit"]  # this checkout's commit (None outside git)
    assert recorded["torch"] == torch.__version__ and recorded["cnnlab"] and recorded["python"]
    assert recorded["device"] == "cpu" and recorded["gpu"] is None and recorded["host"]
    assert "resumed_from" not in recorded
    for name in ("last.pt", "best.pt"):
        saved = checkpoint.load(run_dir / "checkpoints" / name)
        assert saved["provenance"] == recorded
        assert "provenance" not in saved["config"]  # apart from the config, which resume compares


def test_an_evaluation_records_its_own_code(run_dir: Path, tmp_path: Path) -> None:
    run_app(tmp_path, "task=evaluate", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}")
    recorded = json.loads((tmp_path / "metrics.json").read_text())["provenance"]
    assert recorded["torch"] == torch.__version__ and recorded["device"] == "cpu" and "commit" in recorded


def interrupted_run(run_dir: Path, monkeypatch: pytest.MonkeyPatch, at: int = 3) -> None:
    """A run stopped as by SIGTERM before training batch `at`: it checkpoints and raises Interrupted."""
    original = loader.DeviceLoader.batches

    def batches(self: loader.DeviceLoader, epoch: int = 0, start: int = 0) -> Iterator[Any]:
        for n, batch in enumerate(original(self, epoch, start), start + 1):
            if self.shuffle and n == at:
                stop.signal_name = "SIGTERM"
            yield batch

    with monkeypatch.context() as patch:
        patch.setattr(loader.DeviceLoader, "batches", batches)
        with pytest.raises(Interrupted):
            run_app(run_dir, *RUN)


def test_resume_from_other_code_goes_on_and_keeps_where_it_began(tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    interrupted_run(run_dir, monkeypatch)
    last = run_dir / "checkpoints" / "last.pt"
    state = checkpoint.load(last)
    assert state["train_state"]["step"] < 4
    old = {**state["provenance"], "commit": "0" * 40, "torch": "1.0.0"}
    checkpoint.save({**state, "provenance": old}, last)  # as if written by other code
    started: list[dict[str, Any]] = []
    monkeypatch.setattr(NullLogger, "start", lambda self, config, *a, **k: started.append(config))

    run_app(tmp_path / "new", *RUN, f"runtime.resume={run_dir}")  # not refused: provenance is not config

    recorded = json.loads((run_dir / "metrics.json").read_text())["provenance"]
    assert recorded["torch"] == torch.__version__ and recorded["resumed_from"] == old
    assert started[0]["provenance"] == recorded  # the W&B config
    resumed = checkpoint.load(last)
    assert resumed["train_state"]["step"] == 4 and resumed["provenance"] == recorded


def test_status_records_carry_provenance_and_a_restored_one_keeps_its_own(tmp_path: Path) -> None:
    write_status(tmp_path, "failed", ["seed=1"], RuntimeError("boom"))
    assert read_status(tmp_path)["provenance"]["torch"] == torch.__version__  # type: ignore[index]
    write_status(tmp_path, "interrupted", [], provenance={"commit": "abc"})
    assert read_status(tmp_path)["provenance"] == {"commit": "abc"}  # type: ignore[index]


def git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@needs_git
def test_code_version_of_a_checkout_clean_dirty_and_ignored(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("outputs/\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "metrics.json").write_text("{}")  # ignored: runs write here
    assert code_version(tmp_path) == {"commit": head, "dirty": False, "diff": None}

    (tmp_path / "new.py").write_text("")  # untracked: dirty, but no diff of tracked files
    assert code_version(tmp_path) == {"commit": head, "dirty": True, "diff": None}
    (tmp_path / "a.py").write_text("x = 2\n")
    first = code_version(tmp_path)["diff"]
    (tmp_path / "a.py").write_text("x = 3\n")
    second = code_version(tmp_path)["diff"]
    assert first and second and first != second  # two dirty trees with different edits tell apart

    (tmp_path / "sub").mkdir()  # a folder inside someone else's checkout (a venv in a project) is not its code
    assert code_version(tmp_path / "sub")["dirty"] is None


def test_code_version_without_git_is_none_and_never_fails(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(provenance, "_installed_commit", lambda: None)
    assert code_version(tmp_path) == {"commit": None, "dirty": None, "diff": None}  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git binary at all
    assert code_version(ROOT) == {"commit": None, "dirty": None, "diff": None}


def test_importing_it_does_not_import_torch() -> None:
    code = "import sys, cnnlab.records.provenance; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def record(commit: str | None = "a" * 40, **fields: Any) -> dict[str, Any]:
    return {"commit": commit, "dirty": False, "diff": None, "cnnlab": "0.2.0", "torch": "2.5.0", **fields}


def test_mixed_code_is_none_when_alike_or_all_unknown() -> None:
    assert mixed_code([record(), record(host="other", device="cuda:0")]) is None  # host and device may differ
    assert mixed_code([None, None]) is None
    assert mixed_code([]) is None


def test_mixed_code_names_what_differs_and_how_many_runs() -> None:
    line = mixed_code([record(), record(), record("b" * 40, torch="2.6.0"), None])
    assert line is not None and "\n" not in line
    assert "aaaaaaaa (2 runs)" in line and "bbbbbbbb (1 run)" in line and "unknown (1 run)" in line
    assert "torch 2.5.0 (2 runs)" in line and "2.6.0 (1 run)" in line and "cnnlab 0.2.0 (3 runs)" in line
    dirty = mixed_code([record(), record(dirty=True, diff="123456789abc")])
    assert dirty is not None and "aaaaaaaa+changes 123456789abc (1 run)" in dirty
    assert mixed_code([record(dirty=True, diff="1"), record(dirty=True, diff="2")]) is not None
    assert "no git commit (1 run)" in str(mixed_code([record(), record(None, dirty=None)]))


def made_run(job: Path, seed: int, code: dict[str, Any]) -> None:
    make_run(job, ["model.depth=20", f"seed={seed}"], 0.9)
    metrics = json.loads((job / "metrics.json").read_text())
    (job / "metrics.json").write_text(json.dumps({**metrics, "provenance": code}))


def test_report_warns_when_its_runs_come_from_different_code(tmp_path: Path, capsys) -> None:
    made_run(tmp_path / "0", 0, record())
    made_run(tmp_path / "1", 1, record("b" * 40))
    report(tmp_path, figures=False)
    out = " ".join(capsys.readouterr().out.split())  # the terminal wraps notes
    assert "Warning: the 2 runs come from different code" in out and "bbbbbbbb (1 run)" in out
    text = (tmp_path / "results.md").read_text()
    table, note = text.index("| depth |"), text.index("Warning: the 2 runs come from different code")
    assert table < note  # under the table whose rows it concerns


def test_report_is_quiet_when_its_runs_ran_the_same_code(tmp_path: Path, capsys) -> None:
    made_run(tmp_path / "0", 0, record())
    made_run(tmp_path / "1", 1, record(host="elsewhere"))
    report(tmp_path, figures=False)
    assert "Warning" not in capsys.readouterr().out and "Warning" not in (tmp_path / "results.md").read_text()


def test_report_shows_the_precision_when_auto_resolved_differently(tmp_path: Path, capsys) -> None:
    for job, seed, precision in (("0", 0, "bf16"), ("1", 0, "32")):  # one command, two machines
        made_run(tmp_path / job, seed, record())
        metrics = json.loads((tmp_path / job / "metrics.json").read_text())
        (tmp_path / job / "metrics.json").write_text(json.dumps({**metrics, "precision": precision}))
    report(tmp_path, figures=False)
    text = (tmp_path / "results.md").read_text()
    assert "| setting |" in text and "precision=bf16 |" in text and "precision=32 |" in text  # two rows
