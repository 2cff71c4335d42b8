"""Optuna searches: the hparams_search preset end to end (continued in its sweep dir, with a failing trial), the
report's search section, job dirs named by trial, the preflight of the preset and the missing-plugin error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cnnlab.records.status import write_status
from cnnlab.report import report
from cnnlab.report.runs import load_runs
from cnnlab.report.search import command, load_search
from tests.helpers import ROOT, cli

TINY = ["model.depth=8", "model.width=2", "runtime.threads=1", "runtime.figures=false", "runtime.checkpoint=false"]
OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
SEARCHED = ["optimizer.lr", "optimizer.weight_decay", "trainer.batch_size"]


def make_trial(sweep: Path, number: int, val_acc: float | None, lr: float, direction: str = "maximize") -> Path:
    """A job dir as a trial of `-m hparams_search=resnet_lr` leaves it (val_acc None: the trial failed)."""
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"optimizer.lr={lr}", "optimizer.weight_decay=0.0001", "trainer.batch_size=128", "model=resnet",
                 "model.depth=20", "hparams_search=resnet_lr", "trainer.max_steps=20"]  # fmt: skip
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    model = {"_target_": "cnnlab.models.resnet.ResNet", "depth": 20, "residual": True, "shortcut": "A"}
    config = {"seed": 0, "task": {"name": "classify", "monitor": "val_acc"}, "dataset": {"name": "mnist_sample"}}
    config["model"] = model
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    params = {
        "model": "resnet",
        "optimizer.lr": "tag(log, interval(0.01, 0.5))",
        "trainer.batch_size": "choice(64,128)",
    }
    sweeper = {"_target_": OPTUNA, "direction": direction, "study_name": "resnet_lr", "params": params}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": sweeper}}))
    if val_acc is None:
        write_status(job, "failed", overrides, RuntimeError("val_size too large"))
        return job
    metrics = {"status": "completed", "test_acc": val_acc - 0.01, "val_acc": val_acc, "best_val_acc": val_acc}
    metrics |= {"params": 1000, "steps": 20}
    (job / "metrics.json").write_text(json.dumps({**metrics, "epochs": 0.1, "seconds": 2.0}))
    write_status(job, "completed", overrides)
    return job


@pytest.fixture
def search(tmp_path: Path) -> Path:
    sweep = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    for number, (acc, lr) in enumerate([(0.61, 0.05), (0.83, 0.2), (None, 0.45), (0.72, 0.1)]):
        make_trial(sweep, number, acc, lr)
    return sweep


def test_the_report_lists_trials_best_first_with_the_best_command_and_a_plot(
    search: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report(search)
    text = (search / "results.md").read_text()
    section = text[text.index("## Search: resnet_lr") :]
    rows = [line.split(" | ")[:2] for line in section.splitlines() if line.startswith("| ") and "trial" not in line]
    assert rows == [["| 1", "0.8300"], ["| 3", "0.7200"], ["| 0", "0.6100"], ["| 2", ""]]  # failed last
    assert "failed: RuntimeError: val_size too large" in section
    best = ("python -m cnnlab optimizer.lr=0.2 optimizer.weight_decay=0.0001 trainer.batch_size=128 model=resnet "
            "model.depth=20 trainer.max_steps=20")  # fmt: skip
    assert "Best: trial 1, val_acc 0.8300" in section and best in section  # no hparams_search: one run
    assert "| trial | val_acc | test_acc | optimizer.lr | trainer.batch_size | status |" in section
    assert (search / "figures" / "search.png").read_bytes().startswith(b"\x89PNG")
    assert "![val_acc over trials](figures/search.png)" in section
    out = capsys.readouterr().out
    assert f"best: trial 1 (val_acc 0.8300): {best}" in out


def test_a_minimizing_study_puts_the_lowest_value_first(tmp_path: Path) -> None:
    for number, (value, lr) in enumerate([(0.5, 0.05), (0.2, 0.1), (0.9, 0.2)]):
        make_trial(tmp_path, number, value, lr, direction="minimize")
    search = load_search(load_runs(tmp_path))
    assert search is not None and not search.maximize
    assert [t.number for t in search.trials] == [1, 0, 2]


def test_a_grid_sweep_has_no_search_section(tmp_path: Path) -> None:
    make_trial(tmp_path, 0, 0.6, 0.1)
    hydra_yaml = tmp_path / "0" / ".hydra" / "hydra.yaml"
    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    hydra_yaml.write_text(yaml.safe_dump({"hydra": {"sweeper": {"_target_": basic, "params": None}}}))
    assert load_search(load_runs(tmp_path)) is None
    report(tmp_path, figures=False)
    assert "## Search" not in (tmp_path / "results.md").read_text()


def test_the_best_command_quotes_what_a_shell_would_split(search: Path) -> None:
    (search / "1" / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["model.hidden=[32,16]", "optimizer.lr=0.2"])
    )
    best = load_search(load_runs(search)).best  # type: ignore[union-attr]
    assert best is not None and command(best) == "python -m cnnlab 'model.hidden=[32,16]' optimizer.lr=0.2"


def test_job_dirs_are_numbered_by_trial_so_a_continued_study_adds_dirs() -> None:
    """TrialDirs makes the sweeper launch each batch as jobs numbered by their Optuna trials."""
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    from optuna.distributions import UniformDistribution

    from cnnlab.sweeps.search import TrialDirs

    TrialDirs().on_multirun_start(OmegaConf.create())
    TrialDirs().on_multirun_start(OmegaConf.create())  # patches once
    study = optuna.create_study(direction="maximize")
    for _ in range(3):  # an earlier session's trials
        study.tell(study.ask(), 0.5)
    sweeper = OptunaSweeperImpl(
        optuna.samplers.RandomSampler(seed=0), "maximize", None, None, 2, 2, 0.0, None, None, None
    )
    sweeper.job_idx = 0  # as setup() leaves it in every new process
    overrides = sweeper._configure_trials(
        [study.ask(), study.ask()], {"optimizer.lr": UniformDistribution(0.1, 0.2)}, {}
    )
    assert sweeper.job_idx == 3  # the jobs of trials 3 and 4 go into <sweep dir>/3 and /4, not /0 and /1
    assert [o[0].split("=")[0] for o in overrides] == ["optimizer.lr", "optimizer.lr"]


def test_preflight_checks_the_presets_choices_and_intervals_pass(tmp_path: Path) -> None:
    """Optuna's interval(...) and tag(log, ...) pass the multirun's preflight; a bad choice(...) value stops it."""
    done = cli("-m", "hparams_search=resnet_lr", "trainer.batch_size=choice(64,-1)", *TINY, "logger=none",
               f"paths.output_dir={tmp_path}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "cnnlab: error: trainer.batch_size=-1 is not allowed" in done.stderr
    assert not (tmp_path / "multirun").exists()


def test_without_the_plugin_the_preset_says_how_to_install_it(tmp_path: Path) -> None:
    """Hydra finds no hydra/sweeper=optuna when hydra-optuna-sweeper is missing: simulated by hiding it from
    Hydra's plugin scan (pkgutil.walk_packages over the hydra_plugins package)."""
    hide = (
        "import pkgutil, sys; walk = pkgutil.walk_packages; "
        "pkgutil.walk_packages = lambda *a, **k: (m for m in walk(*a, **k) if 'optuna' not in m.name); "
        "from cnnlab.__main__ import main; sys.argv[0] = 'cnnlab'; main()"
    )
    args = ["-m", "hparams_search=resnet_lr", "logger=none", f"paths.output_dir={tmp_path}"]
    done = subprocess.run([sys.executable, "-c", hide, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cnnlab: error: hydra/sweeper=optuna is not allowed: it needs the Hydra plugin hydra-optuna-sweeper, which is "
        'not installed. Fix it with `pip install -e ".[search]"`'
    ]
    assert not list(tmp_path.iterdir())


def optuna_search(sweep: Path, *overrides: str):
    return cli("-m", "hparams_search=resnet_lr", *TINY, "logger=none", f"hydra.sweep.dir={sweep}",
               f"paths.output_dir={sweep.parent}", *overrides, cwd=sweep.parent)  # fmt: skip


@pytest.mark.slow
def test_an_optuna_search_runs_its_trials_continues_in_its_sweep_dir_and_the_report_names_the_best(
    tmp_path: Path,
) -> None:
    sweep = tmp_path / "search"
    done = optuna_search(sweep, "hydra.sweeper.n_trials=4", "trainer.max_steps=20")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3"]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = {n: json.loads((sweep / n / "metrics.json").read_text())["val_acc"] for n in "0123"}
    best = max(values, key=values.get)  # type: ignore[arg-type]
    assert result["best_value"] == values[best]  # Optuna maximized what the jobs returned: val_acc
    first = (sweep / "0" / "metrics.json").read_text()

    # continued in the same sweep dir, with a trial that fails (a val split larger than the data): the study goes on
    done = optuna_search(sweep, "hydra.sweeper.n_trials=1", "trainer.max_steps=20", "dataset.val_size=9000")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 of 5 jobs completed, 1 failed" in done.stderr
    assert (sweep / "0" / "metrics.json").read_text() == first  # trial 4 got its own dir
    assert json.loads((sweep / "4" / "status.json").read_text())["status"] == "failed"
    lrs = [yaml.safe_load((sweep / n / ".hydra" / "overrides.yaml").read_text())[0] for n in "04"]
    assert lrs[0] != lrs[1] and all(lr.startswith("optimizer.lr=") for lr in lrs)  # not the first session's draw

    search = load_search(load_runs(sweep))
    assert search is not None and search.best is not None and search.best.number == int(best)
    assert [t.number for t in search.trials][-1] == 4  # the failed trial, last
    report(sweep)
    assert f"Best: trial {best}, val_acc {values[best]:.4f}" in (sweep / "results.md").read_text()
    assert (sweep / "figures" / "search.png").exists()
