"""scripts/bench.py runs end to end on the CPU with tiny settings and prints its figures as JSON lines.

Only that each figure is there, with its fields, as positive finite numbers: no assertion on speed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

BENCH = ROOT / "scripts" / "bench.py"


def bench(*args: str, timeout: int = 900) -> list[dict]:
    """Run the script as a person would, with --quick on the CPU and one thread; its JSON lines."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--device", "cpu", "--threads", "1", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is one JSON object
    assert lines, proc.stderr[-3000:]
    return lines


def positive(line: dict, *keys: str) -> None:
    for key in keys:
        value = line[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, line)


def by(lines: list[dict], name: str) -> list[dict]:
    return [line for line in lines if line["bench"] == name]


def test_training_figures_and_estimates() -> None:
    lines = bench("--only", "machine", "train", "recipe", "grid", "--modes", "fp32", "bf16")
    (machine,) = by(lines, "machine")
    assert machine["device"] == "cpu" and machine["precision"] in ("32", "bf16")
    positive(machine, "cores", "threads")

    train = by(lines, "train")
    measured = [line for line in train if "skipped" not in line]
    assert {(line["model"], line["mode"]) for line in measured} >= {("resnet20", "fp32"), ("resnet56", "fp32")}
    for line in measured:
        positive(line, "img_per_s", "warmup_s", "steps", "batch")
    assert {line["mode"] for line in train} == {"fp32", "bf16"}
    assert all(line["skipped"] for line in train if line not in measured)  # no native bf16: said why not

    recipe = by(lines, "recipe")
    assert [line["model"] for line in recipe] == ["resnet20", "resnet56"]
    for line in recipe:
        positive(line, "step_ms", "eval_s", "hours_64k", "window_steps")

    grid = by(lines, "grid")
    assert [line["model"] for line in grid] == [f"resnet{d}" for d in (20, 32, 44, 56, 110)]
    (total,) = by(lines, "grid_total")
    assert total["runs"] == 10
    positive(total, "hours")
    assert total["hours"] == pytest.approx(2 * sum(line["hours_64k"] for line in grid), rel=0.01)


def test_ratio_figures() -> None:
    lines = bench("--only", "step", "data", "epoch", "options", "packed", "--members", "2", "--packed-steps", "1")
    step = by(lines, "step")
    assert [line["model"] for line in step] == ["resnet20", "resnet56"]
    for line in step:
        positive(line, "cnnlab_img_per_s", "bare_img_per_s", "ratio")
    (data,) = by(lines, "data")
    positive(data, "cnnlab_img_per_s", "dataloader_img_per_s", "ratio", "data_share_of_step")
    (epoch,) = by(lines, "epoch")
    positive(epoch, "images", "val_images", "cnnlab_s", "usual_recipe_s", "ratio")
    assert set(epoch["cnnlab_parts_s"]) == set(epoch["usual_parts_s"]) == {"build", "read", "train", "evaluate"}
    assert by(lines, "options")
    packed = by(lines, "packed")
    pairs = [(line["model"], line["members"], line["exact"]) for line in packed]
    assert pairs == [("resnet20", 2, True), ("resnet20", 2, False), ("resnet56", 2, True), ("resnet56", 2, False)]
    for line in packed:
        positive(line, "packed_img_per_s_per_member", "sequential_img_per_s_per_member", "ratio")


@pytest.mark.slow
def test_startup_and_compile_figures() -> None:
    lines = bench("--only", "startup", "train", "--modes", "compile")
    (startup,) = by(lines, "startup")
    positive(startup, "cfg_job_s", "first_step_s")
    for line in by(lines, "train"):
        positive(line, "img_per_s", "warmup_s", "compile_s")
