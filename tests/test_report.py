"""cnnlab.report on fabricated run dirs: the table, the failure list, the figures, partial and W&B-agent layouts."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from cnnlab.callbacks import write_status
from cnnlab.errors import DataError, UserError
from cnnlab.report import load_runs, main, report
from cnnlab.training.stop import Interrupted
from cnnlab.training.trainer import DivergenceError

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(
    job: Path,
    overrides: list[str],
    test_acc: float | None = None,
    model: dict | None = None,
    steps: int = 40,
    status: str | None = None,
    error: BaseException | None = None,
    **fields: object,
) -> Path:
    """A run dir as cnnlab leaves it: .hydra/, and metrics.json + history.jsonl when the run completed."""
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    values = dict(o.split("=", 1) for o in overrides)
    model = model or {
        "_target_": "cnnlab.models.resnet.ResNet",
        "depth": int(values.get("model.depth", 20)),
        "residual": values.get("model.residual", "true") == "true",
        "shortcut": "A",
        "in_channels": "${dataset.shape.0}",  # left unresolved, as Hydra saves it
    }
    config = {"seed": int(values.get("seed", 0)), "model": model, "dataset": {"shape": [1, 28, 28]}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if test_acc is not None:
        metrics = {"test_acc": test_acc, "best_val_acc": test_acc + 0.01, "params": 269_434, "epochs": 2.0}
        (job / "metrics.json").write_text(json.dumps({**metrics, "seconds": 75.0, "steps": steps}))
        history = [
            {"step": s, "epoch": s / 20, "train_loss": 1.0, "train_acc": 0.5 + s / 200, "val_acc": test_acc * s / steps}
            for s in range(10, steps + 1, 10)
        ]
        (job / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    if status is not None:
        write_status(job, status, overrides, error, **fields)
    return job


def accuracy(depth: int, residual: bool, seed: int) -> float:
    """Fabricated test accuracy: the degradation pattern, plus a seed-dependent wobble."""
    base = 0.90 + (0.002 if residual else -0.003) * (depth - 20) / 12
    return round(base + 0.004 * seed, 4)


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """A finished 2 depths x plain/residual x 2 seeds multirun, jobs numbered like Hydra's."""
    sweep = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    num = 0
    for depth in (20, 32):
        for residual in (True, False):
            for seed in (0, 1):
                overrides = [f"model.depth={depth}", f"model.residual={str(residual).lower()}", f"seed={seed}"]
                make_run(sweep / str(num), overrides, accuracy(depth, residual, seed), status="completed")
                num += 1
    return sweep


def table_rows(results: str) -> list[list[str]]:
    lines = [line for line in results.splitlines() if line.startswith("| ") and not line.startswith("| depth")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_table_has_one_row_per_setting_with_mean_and_std_over_seeds(grid: Path) -> None:
    report(grid)
    results = (grid / "results.md").read_text()
    rows = table_rows(results)
    assert [(r[0], r[1]) for r in rows] == [("20", "plain"), ("32", "plain"), ("20", "residual"), ("32", "residual")]
    for row in rows:
        depth, residual = int(row[0]), row[1] == "residual"
        accs = [accuracy(depth, residual, seed) for seed in (0, 1)]
        assert row[5] == f"{100 * statistics.fmean(accs):.2f} ± {100 * statistics.stdev(accs):.2f}"
        assert row[4] == f"{100 * statistics.fmean(accs) + 1:.2f}"  # best val acc, mean
        assert row[2] == ("A" if residual else "-")
        assert row[3] == "0.27M" and row[6] == "2" and row[8] == "1m 15s"
    assert "8 runs: 8 completed, 0 failed, 0 unfinished" in results
    assert "Failed runs" not in results


def test_figures_are_written_and_linked(grid: Path) -> None:
    report(grid)
    results = (grid / "results.md").read_text()
    for name in ("error_vs_depth.png", "training_curves.png"):
        assert (grid / "figures" / name).read_bytes().startswith(PNG)
        assert f"(figures/{name})" in results


def test_partial_sweep_lists_failed_and_unfinished_runs(grid: Path) -> None:
    make_run(
        grid / "8",
        ["model.depth=44", "model.residual=false", "seed=0"],
        status="failed",
        error=RuntimeError("CUDA out of memory"),
    )
    make_run(grid / "9", ["model.depth=44", "model.residual=true", "seed=0"], status="running")
    make_run(grid / "10", ["model.depth=56", "model.residual=true", "seed=0"])  # killed before its first status
    report(grid, figures=False)
    results = (grid / "results.md").read_text()
    assert len(table_rows(results)) == 4  # only completed runs make rows: no depth-44 row
    failed = results.split("## Failed runs")[1].split("##")[0]
    assert "`8` (model.depth=44 model.residual=false seed=0): RuntimeError: CUDA out of memory" in failed
    unfinished = results.split("## Unfinished runs")[1]
    assert "`9`" in unfinished and "`10`" in unfinished and "`8`" not in unfinished
    assert "11 runs: 8 completed, 1 failed, 2 unfinished" in results


def test_a_diverged_run_is_a_failure_and_other_tasks_are_left_out(grid: Path) -> None:
    diverged = make_run(grid / "8", ["model.depth=56", "model.residual=false", "seed=0", "optimizer.lr=10"])
    (diverged / "metrics.json").write_text(json.dumps({"status": "diverged", "error": "loss is nan at step 7"}))
    evaluate = make_run(grid / "9", ["task=evaluate", "checkpoint=best.pt"])
    config = yaml.safe_load((evaluate / ".hydra" / "config.yaml").read_text())
    (evaluate / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "task": {"name": "evaluate"}}))
    (evaluate / "metrics.json").write_text(json.dumps({"test_acc": 0.5}))
    runs = {r.dir.name: r for r in load_runs(grid)}
    assert runs["8"].status == "failed" and runs["8"].error == "diverged: loss is nan at step 7"
    assert "9" not in runs and len(runs) == 9


def test_a_rejected_run_is_not_a_run(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status rejected: a config or data error stopped it before any work. Neither listed nor counted."""
    overrides = ["model.depth=44", "dataset=mnist", "dataset.download=false"]
    make_run(grid / "8", overrides, status="rejected", error=DataError("no IDX files found in /data"))
    assert [r.dir.name for r in load_runs(grid)] == [str(n) for n in range(8)]
    report(grid, figures=False)
    results = (grid / "results.md").read_text()
    assert "8 runs: 8 completed, 0 failed, 0 unfinished" in results
    assert "`8`" not in results and "no IDX files" not in results and "Unfinished runs" not in results
    assert "model.depth=44" not in capsys.readouterr().out


def test_a_dir_holding_only_rejected_runs_has_no_runs(tmp_path: Path) -> None:
    make_run(tmp_path / "0", ["model.depth=20"], status="rejected", error=DataError("no IDX files found"))
    with pytest.raises(UserError, match="no runs under"):
        report(tmp_path)
    assert not (tmp_path / "results.md").exists()


def test_an_interrupted_run_is_unfinished_with_its_step_and_resume_command(
    grid: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = ["model.depth=44", "model.residual=true", "seed=0"]
    command = f"python -m cnnlab {' '.join(overrides)} runtime.resume={grid / '8'}"
    stopped = Interrupted("SIGTERM", 37, str(grid / "8" / "checkpoints" / "last.pt"))
    make_run(grid / "8", overrides, status="interrupted", error=stopped, step=37, resume_command=command)
    (run,) = [r for r in load_runs(grid) if r.dir.name == "8"]
    assert run.status == "unfinished" and run.error is None
    report(grid, figures=False)
    results = (grid / "results.md").read_text()
    assert "9 runs: 8 completed, 0 failed, 1 unfinished" in results and "Failed runs" not in results
    unfinished = results.split("## Unfinished runs")[1]
    assert f"- `8` (model.depth=44 model.residual=true seed=0): interrupted at step 37, resume with `{command}`" in (
        unfinished
    )
    assert f"unfinished: 8 ({' '.join(overrides)}) interrupted at step 37, resume with `{command}`" in (
        capsys.readouterr().out
    )


def test_a_diverged_status_is_a_failure_with_its_step_and_error(grid: Path) -> None:
    overrides = ["model.depth=56", "model.residual=false", "seed=0", "optimizer.lr=10"]
    message = "the training loss became NaN or inf at step 12 (lr 10). Lower the learning rate: try optimizer.lr=1"
    job = make_run(grid / "8", overrides, status="diverged", error=DivergenceError(message, None), step=12)
    diverged = {"status": "diverged", "error": message, "steps": 12, "best_step": 10, "best_val_acc": 0.3}
    (job / "metrics.json").write_text(json.dumps(diverged))  # as task=classify leaves it
    (run,) = [r for r in load_runs(grid) if r.dir.name == "8"]
    assert run.status == "failed" and run.error == f"diverged at step 12: {message}"
    report(grid, figures=False)
    results = (grid / "results.md").read_text()
    assert "9 runs: 8 completed, 1 failed, 0 unfinished" in results
    assert f"- `8` ({' '.join(overrides)}): diverged at step 12: {message}" in results.split("## Failed runs")[1]


def test_completed_run_wins_over_a_stale_status(grid: Path) -> None:
    write_status(grid / "0", "running", ["model.depth=20"])  # e.g. status.json written before a crash of the writer
    assert [r.status for r in load_runs(grid)].count("completed") == 8


def test_jobs_are_ordered_numerically(tmp_path: Path) -> None:
    for num in (10, 2, 1):
        make_run(tmp_path / str(num), [f"model.depth={20 + 12 * (num % 3)}"], 0.9)
    assert [r.dir.name for r in load_runs(tmp_path)] == ["1", "2", "10"]


def test_wandb_agent_runs_under_one_output_dir(tmp_path: Path) -> None:
    """Agent runs are single runs: outputs/<date>/<time>/, found at any depth, wandb/ folders ignored."""
    outputs = tmp_path / "outputs"
    for i, (depth, residual) in enumerate([(20, True), (20, False), (32, True)]):
        job = make_run(
            outputs / "2026-01-01" / f"12-00-0{i}-000000",
            [f"model.depth={depth}", f"model.residual={str(residual).lower()}", "seed=0", "logger.mode=online"],
            accuracy(depth, residual, 0),
        )
        (job / "wandb" / "run-x" / "files").mkdir(parents=True)
    report(outputs, figures=False)
    rows = table_rows((outputs / "results.md").read_text())
    assert [(r[0], r[1], r[6]) for r in rows] == [
        ("20", "plain", "1"),
        ("20", "residual", "1"),
        ("32", "residual", "1"),
    ]


def test_other_varying_overrides_get_their_own_rows(tmp_path: Path) -> None:
    for num, lr in enumerate(("0.1", "0.01")):
        make_run(tmp_path / str(num), ["model.depth=20", f"optimizer.lr={lr}"], 0.9 - num / 10)
    report(tmp_path, figures=False)
    results = (tmp_path / "results.md").read_text()
    assert "| setting |" in results
    rows = table_rows(results)
    assert sorted(r[-1] for r in rows) == ["optimizer.lr=0.01", "optimizer.lr=0.1"]
    assert not (tmp_path / "figures").exists()


def test_models_without_depth_get_a_table_but_no_depth_plot(tmp_path: Path) -> None:
    mlp = {"_target_": "cnnlab.models.mlp.MLP", "hidden": [16]}
    for seed in (0, 1):
        make_run(tmp_path / str(seed), [f"seed={seed}"], 0.95, model=mlp)
    report(tmp_path)
    rows = table_rows((tmp_path / "results.md").read_text())
    assert len(rows) == 1 and rows[0][:3] == ["-", "-", "-"] and rows[0][6] == "2"
    assert not (tmp_path / "figures" / "error_vs_depth.png").exists()


def test_cli_prints_the_table(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(grid), "--no-figures"])
    out = capsys.readouterr().out
    assert "residual" in out and "plain" in out and "results.md" in out


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_cli_refuses_a_dir_without_runs(tmp_path: Path, make, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(make(tmp_path))])
    assert exit_info.value.code == 2
    assert "cnnlab report: error:" in capsys.readouterr().err


def test_curves_use_test_error_when_the_runs_recorded_it() -> None:
    from cnnlab.report.plots import _mean_curve
    from cnnlab.report.runs import Run

    def run(rows: list[dict]) -> Run:
        r = Run.__new__(Run)
        r.history = rows
        return r

    with_test = [{"step": 10, "train_acc": 0.5, "val_acc": 0.6, "test_acc": 0.7}]
    steps, train, held_out, split = _mean_curve([run(with_test)])
    assert (steps, split) == ([10], "test") and held_out == [pytest.approx(30.0)] and train == [pytest.approx(50.0)]
    without = [{"step": 10, "train_acc": 0.5, "val_acc": 0.6}]
    assert _mean_curve([run(without)])[3] == "val"
