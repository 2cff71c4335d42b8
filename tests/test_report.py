"""cnnlab.report on fabricated run dirs: the table, the failure list, the figures, partial and W&B-agent layouts."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from cnnlab.errors import DataError, UserError
from cnnlab.records.status import write_status
from cnnlab.report import load_runs, main, report
from cnnlab.training.stop import Interrupted
from cnnlab.training.trainer import DivergenceError
from tests.helpers import accuracy, make_run

PNG = b"\x89PNG\r\n\x1a\n"


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


PAPER_PRESET = Path(__file__).parents[1] / "conf" / "experiment" / "resnet_cifar10_paper.yaml"


def paper_config(**trainer: object) -> dict:
    """The config keys a run of experiment=resnet_cifar10_paper saves, read from the preset itself."""
    preset = yaml.safe_load(PAPER_PRESET.read_text())
    dataset = {"name": "cifar10", "shape": [3, 32, 32], **preset["dataset"]}
    return {
        **{k: preset[k] for k in ("optimizer", "scheduler")},
        "dataset": dataset,
        "trainer": preset["trainer"] | trainer,
    }


def cifar_sweep(root: Path, errors: dict[tuple[int, bool], float], **trainer: object) -> Path:
    for num, ((depth, residual), error) in enumerate(errors.items()):
        overrides = ["experiment=degradation_grid", f"model.depth={depth}", f"model.residual={str(residual).lower()}"]
        make_run(root / str(num), overrides, 1 - error / 100, dataset="cifar10", extra=paper_config(**trainer))
    return root


def test_a_cifar10_sweep_gets_the_papers_errors_and_the_differences(tmp_path: Path) -> None:
    errors = {(20, False): 9.5, (56, False): 14.0, (20, True): 8.5, (56, True): 7.25, (32, True): 7.75}
    report(cifar_sweep(tmp_path, errors), figures=False)
    results = (tmp_path / "results.md").read_text()
    assert "| paper error | vs paper |" in results and "## cifar10" in results
    rows = {(r[0], r[1]): r for r in table_rows(results)}
    assert rows[("20", "residual")][9:11] == ["8.75", "-0.25"]  # He et al. Table 6
    assert rows[("32", "residual")][9:11] == ["7.51", "+0.24"]
    assert rows[("56", "residual")][9:11] == ["6.97", "+0.28"]
    assert rows[("20", "plain")][9:11] == ["≈9.8", "-0.30"]  # reproductions: approximate
    assert rows[("56", "plain")][9:11] == ["≈13.0", "+1.00"]
    assert "differ from the paper's recipe" not in results
    assert "Verdict: plain 56 is 4.50 points worse than plain 20; residual 56 is 1.25 points better than " in results


def test_a_cifar10_sweep_off_the_recipe_says_how_it_differs(tmp_path: Path) -> None:
    report(cifar_sweep(tmp_path, {(20, True): 10.0, (110, True): 9.0}, max_steps=2000), figures=False)
    results = (tmp_path / "results.md").read_text()
    assert "These runs differ from the paper's recipe: trainer.max_steps=2000 (paper: 64000)." in results
    assert [r[9:11] for r in table_rows(results)] == [["8.75", "+1.25"], ["6.43", "+2.57"]]
    assert "Verdict" not in results  # residual nets only: nothing to compare plain ones with


def test_other_datasets_get_no_reference_column(grid: Path) -> None:
    report(grid, figures=False)
    results = (grid / "results.md").read_text()
    assert "paper error" not in results and "## mnist_sample" in results


def test_the_verdict_says_when_the_sweep_shows_the_degradation(grid: Path) -> None:
    report(grid, figures=False)  # plain 32 worse than plain 20 by 0.30 points, residual 32 better by 0.20
    results = (grid / "results.md").read_text()
    assert (
        "Verdict: plain 32 is 0.30 points worse than plain 20; residual 32 is 0.20 points better than residual 20: "
        "the sweep shows the degradation" in results
    )
    # the budget it rests on (make_run's runs take 40 steps), and the title says what the sweep was
    assert "It rests on 40 optimizer steps a run (the paper trains 64,000)" in results
    assert results.startswith(f"# Results: model.depth x model.residual on mnist_sample ({grid.name})")


def test_the_verdict_says_when_it_does_not(tmp_path: Path) -> None:
    for num, (depth, residual, acc) in enumerate(
        [(20, False, 0.9), (56, False, 0.91), (20, True, 0.9), (56, True, 0.85)]
    ):
        make_run(tmp_path / str(num), [f"model.depth={depth}", f"model.residual={str(residual).lower()}"], acc)
    report(tmp_path, figures=False)
    results = (tmp_path / "results.md").read_text()
    assert (
        "Verdict: plain 56 is 1.00 points better than plain 20; residual 56 is 5.00 points worse than residual 20: "
        "the sweep does not show the degradation" in results
    )


def test_verdict_needs_two_common_depths_of_both_kinds() -> None:
    from cnnlab.report.paper import verdict

    assert verdict({("plain", 20): 10.0, ("plain", 56): 12.0, ("residual", 20): 9.0}) is None
    assert verdict({("plain", 20): 10.0, ("residual", 56): 9.0, ("plain", 56): 9.0, ("residual", 32): 8.0}) is None
    line = verdict({("plain", 20): 10.0, ("plain", 56): 10.0, ("residual", 20): 9.0, ("residual", 56): 9.0})
    assert line is not None and line.startswith("plain 56 is as good as plain 20; residual 56 is as good as residual")
    assert "does not show" in line


def test_one_seed_shows_the_value_alone_and_no_mean_and_std_title(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnlab.report.plots as plots

    titles: list[str] = []
    save = plots.save_figure

    def recording(fig, path):  # the figure's title, read before it is saved and closed
        titles.append(fig.get_suptitle())
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", recording)
    for num, (depth, residual) in enumerate([(20, False), (56, False), (20, True), (56, True)]):
        make_run(tmp_path / str(num), [f"model.depth={depth}", f"model.residual={str(residual).lower()}"], 0.9)
    report(tmp_path)
    results = (tmp_path / "results.md").read_text()
    assert "± 0.00" not in results and "±" not in "".join(r[5] for r in table_rows(results))
    assert [r[5] for r in table_rows(results)] == ["90.00"] * 4
    assert titles[0] == "test error vs depth, mnist_sample (one seed)" and not any("±" in t for t in titles)


def test_seeds_counts_distinct_seeds_and_a_repeated_seed_counts_once(tmp_path: Path) -> None:
    for num, (seed, acc) in enumerate([(0, 0.90), (0, 0.92), (1, 0.95)]):  # seed 0 ran twice (a repeated agent run)
        make_run(tmp_path / str(num), ["model.depth=20", f"seed={seed}"], acc)
    report(tmp_path, figures=False)
    (row,) = table_rows((tmp_path / "results.md").read_text())
    assert row[6] == "2"
    assert row[5] == f"{100 * statistics.fmean([0.91, 0.95]):.2f} ± {100 * statistics.stdev([0.91, 0.95]):.2f}"


def test_report_outputs_keeps_datasets_apart_and_drops_empty_settings(tmp_path: Path) -> None:
    """`cnnlab report outputs`: runs of two datasets and an evaluate run under one output dir."""
    outputs = tmp_path / "outputs"
    runs = [
        ("mnist_sample", ["model.depth=20"]),
        ("mnist_sample", ["model.depth=20", "optimizer.lr=0.01"]),
        ("fashion_mnist", ["model.depth=20", "dataset=fashion_mnist"]),
        ("fashion_mnist", ["model.depth=56", "dataset=fashion_mnist"]),
    ]
    for i, (dataset, overrides) in enumerate(runs):
        make_run(outputs / "2026-01-01" / f"12-00-0{i}", overrides, 0.9, dataset=dataset)
    evaluate = make_run(outputs / "2026-01-02" / "09-00-00", ["task=evaluate", "checkpoint=best.pt"], 0.5)
    config = yaml.safe_load((evaluate / ".hydra" / "config.yaml").read_text())
    (evaluate / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "task": {"name": "evaluate"}}))
    report(outputs)
    results = (outputs / "results.md").read_text()
    mnist, fashion = results.split("## mnist_sample")[1].split("## fashion_mnist")
    assert [r[-1] for r in table_rows(mnist)] == ["defaults", "optimizer.lr=0.01"]
    assert [r[0] for r in table_rows(fashion)] == ["20", "56"] and "| setting |" not in fashion
    assert "=|" not in results.replace(" ", "") and "= " not in results and "task" not in results
    assert "(figures/training_curves-mnist_sample.png)" in mnist
    assert "(figures/error_vs_depth-fashion_mnist.png)" in fashion


def test_runs_of_another_task_make_their_own_table(grid: Path) -> None:
    from cnnlab.report.table import tables

    runs = load_runs(grid)
    runs[-1].config.task = {"name": "evaluate"}  # as a task that reports test_acc would leave it
    titles = [(t.title, len(t.rows)) for t in tables(runs)]
    assert titles == [("mnist_sample", 4), ("mnist_sample, task evaluate", 1)]


def test_figures_stay_bounded_with_many_settings(tmp_path: Path) -> None:
    from PIL import Image

    lrs = [f"0.{n:02d}" for n in range(1, 13)]  # 12 settings x 2 depths x plain/residual
    num = 0
    for lr in lrs:
        for depth in (20, 56):
            for residual in ("true", "false"):
                make_run(
                    tmp_path / str(num),
                    [f"model.depth={depth}", f"model.residual={residual}", f"optimizer.lr={lr}"],
                    0.9,
                )
                num += 1
    report(tmp_path)
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    names = [p.name for p in pngs]
    assert "error_vs_depth-2.png" in names and "training_curves-4.png" in names  # 9 and 3 settings a page
    for png in pngs:
        width, height = Image.open(png).size
        assert width <= 1700 and height <= 1400, (png.name, width, height)
    assert all(f"(figures/{name})" in (tmp_path / "results.md").read_text() for name in names)


def test_the_results_preset_is_the_readme_grid() -> None:
    """experiment=degradation_mnist (README, Results): depth 20/56 x plain/residual, 4 jobs."""
    from cnnlab.sweeps.wandb_yaml import hydra_grid

    jobs, _ = hydra_grid(["experiment=degradation_mnist"])
    assert sorted(sorted(job) for job in jobs) == sorted(
        sorted([f"model.depth={d}", f"model.residual={r}"]) for d in (20, 56) for r in ("True", "False")
    )
