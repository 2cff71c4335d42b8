"""What a person reads while a run trains: epochs counted from 1, a rate that leaves out the warm-up."""

from __future__ import annotations

import io
import logging

from rich.console import Console

from cnnlab.records.progress import Progress


def test_log_lines_count_epochs_from_one_and_show_no_rate_for_the_warm_up_window(caplog):
    console = Console(file=io.StringIO(), force_terminal=False)  # a file, CI or SLURM: plain log lines
    with caplog.at_level(logging.INFO, logger="cnnlab"), Progress(100, log_every=10, epochs=5, console=console) as p:
        p.update(10, 1, 2.0, 0.1, batch_size=128)
        p.update(20, 1, 1.5, 0.3, batch_size=128)
    first, second = [r.getMessage() for r in caplog.records]
    assert "epoch 1/5" in first and "img/s" not in first  # the first window holds the warm-up
    assert "epoch 1/5" in second and second.endswith("img/s)")


def test_the_bar_shows_the_recent_rate_only(monkeypatch):
    times = iter([0.0, 100.0, 101.0])  # a slow first window (warm-up), then 10 steps in 1 s
    monkeypatch.setattr("cnnlab.records.progress.time.perf_counter", lambda: next(times))
    p = Progress(100, log_every=10, epochs=2, console=Console(file=io.StringIO()))
    assert p.rate(10, 128) == ""
    assert p.rate(20, 128) == "1,280 img/s"


def test_a_run_counts_epochs_from_one(tmp_path, caplog):
    from tests.helpers import run_app

    with caplog.at_level(logging.INFO, logger="cnnlab"):
        run_app(tmp_path, "model.hidden=[8]", "trainer.epochs=2", "runtime.log_every=30", "runtime.figures=false")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    epochs = [line.split("epoch ")[1].split()[0] for line in lines if " epoch " in line]
    assert epochs[0] == "1/2" and epochs[-1] == "2/2" and "0/2" not in epochs
