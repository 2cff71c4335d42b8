"""One grid, three ways to run it: the W&B sweep YAML against Hydra's grid and wandb's own agent code,
and Hydra multiruns on joblib (with a failing job) and submitit's local executor."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from cnnlab.errors import ConfigError, UserError
from cnnlab.records.status import read_status, write_status
from cnnlab.sweeps.callbacks import JobFailed, JobStatusCallback, print_summary
from cnnlab.sweeps.wandb_yaml import hydra_grid, main, sweep_config
from tests.helpers import cli, make_config

TINY = ["trainer.max_steps=2", "runtime.threads=1", "runtime.figures=false", "runtime.checkpoint=false"]


def sweeps_engine_grid(config: dict) -> list[dict]:
    """Every run the `sweeps` engine (what the W&B server runs) proposes for a grid sweep config."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sweeps 0.2 uses pydantic v1 config names
        import sweeps
    runs: list = []
    while (run := sweeps.next_run(config, runs, validate=True)) is not None:
        run.state = sweeps.RunState.finished
        runs.append(run)
        assert len(runs) <= 1000
    return runs


def as_set(jobs) -> set[frozenset]:
    return {frozenset((k, repr(v)) for k, v in job.items()) for job in jobs}  # repr: lists are unhashable


def parsed(job: list[str]) -> dict:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    return {o.split("=", 1)[0]: parser.parse_override(o).value() for o in job}


def agent_command(config: dict, run) -> list[str]:
    """The command line wandb's agent builds for one proposed run (wandb/wandb_agent.py, Agent._command_run)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(config["command"]))
    proposed = json.loads(json.dumps(run.config, default=lambda o: o.item()))  # numpy numbers, as the server's JSON
    sweep_vars = sweep_utils.create_sweep_command_args({"args": proposed})
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for chunk in map(str, command):
        if chunk.startswith("${") and chunk.endswith("}"):
            out += sweep_vars.get(chunk[2:-1]) or []
        else:
            out.append(chunk)
    return out


def test_the_sweeps_engine_enumerates_the_hydra_grid() -> None:
    config = sweep_config(["experiment=degradation_grid"])
    engine = [{k: v["value"] for k, v in run.config.items()} for run in sweeps_engine_grid(config)]
    expected = [
        {"model.depth": d, "model.residual": r, "seed": s}
        for d in (20, 32, 44, 56)
        for r in (True, False)
        for s in (0, 1, 2)
    ]
    jobs, fixed = hydra_grid(["experiment=degradation_grid"])
    assert len(engine) == len(jobs) == 24
    assert as_set(engine) == as_set(expected) == as_set(parsed(job) for job in jobs)
    assert fixed == ["experiment=degradation_grid"]


def test_a_command_line_sweep_replaces_the_experiments_key_and_fixed_ones_stay_fixed() -> None:
    overrides = ["experiment=degradation_grid", "model.depth=20,32", "trainer.max_steps=100", "model.shortcut=B"]
    config = sweep_config(overrides)
    assert config["parameters"] == {
        "model.depth": {"values": [20, 32]},
        "model.residual": {"values": [True, False]},
        "seed": {"values": [0, 1, 2]},
    }
    assert config["method"] == "grid" and config["name"] == "degradation_grid"
    command = config["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "cnnlab"]  # the agent machine's python
    assert command[4:] == [
        "experiment=degradation_grid",
        "trainer.max_steps=100",
        "model.shortcut=B",
        "logger.mode=online",  # an agent's run must report to the sweep
        "${args_no_hyphens}",
    ]
    assert "--multirun" not in command and command.count("-m") == 1


def test_an_explicit_logger_choice_is_kept() -> None:
    assert "logger.mode=online" not in sweep_config(["seed=0,1", "logger=none"])["command"]
    assert sweep_config(["seed=0,1", "logger.mode=disabled"])["command"][-2] == "logger.mode=disabled"


def test_values_that_are_not_numbers_keep_hydra_text() -> None:
    overrides = ["optimizer=sgd,adam", "model.hidden=[16],[32,16]", "optimizer.lr=0.1,1e-3"]
    config = sweep_config(overrides)
    assert config["parameters"]["optimizer"] == {"values": ["sgd", "adam"]}
    assert config["parameters"]["model.hidden"] == {"values": ["[16]", "[32,16]"]}
    assert config["parameters"]["optimizer.lr"] == {"values": [0.1, 0.001]}
    fixed = len(config["command"]) - 1
    rendered = [agent_command(config, run)[fixed:] for run in sweeps_engine_grid(config)]
    jobs, _ = hydra_grid(overrides)
    assert len(rendered) == len(jobs) == 8
    assert as_set(parsed(r) for r in rendered) == as_set(parsed(job) for job in jobs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trainer.max_steps=2"], "no grid"),
        (["optimizer.lr=interval(0.01,0.1)"], "a W&B grid needs lists of values"),
    ],
)
def test_main_refuses_what_is_not_a_grid(args, message, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "-o", str(tmp_path / "s.yaml")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.yaml").exists()


@pytest.mark.parametrize("flag", ["-m", "--multirun"])
def test_main_refuses_the_multirun_flag(
    flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past `--` argparse hands the flag over as an override: the check of main itself refuses it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--", "seed=0,1", flag])
    assert exit_info.value.code == 2
    assert "pass overrides only: each agent run is one job, so the command has no -m" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no sweep-*.yaml written
    with pytest.raises(SystemExit) as exit_info:  # as a user types it: the flag first
        main([flag, "seed=0,1"])
    assert exit_info.value.code == 2 and "the command has no -m" in capsys.readouterr().err


def test_git_ignores_the_sweep_yaml_written_into_the_repo_root() -> None:
    """`cnnlab sweep` run in a checkout writes sweep-<name>.yaml there; it is output, not source."""
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    inside = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    if inside.returncode != 0 or Path(inside.stdout.strip()).resolve() != root:
        pytest.skip("not a git checkout of cnnlab")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0

    assert ignored("sweep-degradation_grid.yaml") and ignored("sweep.yaml")
    assert not ignored("conf/experiment/sweep_lr.yaml")  # configs that happen to be named sweep* stay tracked


def test_wandb_agent_command_runs_one_job_and_joins_the_agents_run(tmp_path: Path) -> None:
    """Offline proof: the YAML's command, expanded by wandb's agent code for a run the sweeps engine proposes."""
    out = tmp_path / "sweep.yaml"
    overrides = ["model=resnet", "model.depth=8", "model.width=4", "model.residual=true,false", *TINY]
    main([*overrides, "logger.mode=offline", f"paths.output_dir={tmp_path / 'outputs'}", "-o", str(out)])
    config = yaml.safe_load(out.read_text())
    runs = sweeps_engine_grid(config)
    assert [run.config["model.residual"]["value"] for run in runs] == [True, False]
    command = agent_command(config, runs[1])
    assert command[-1] == "model.residual=False" and command[:2] == ["/usr/bin/env", "python"]

    env = {**os.environ, "WANDB_RUN_ID": "agentrun01", "WANDB_SWEEP_ID": "sweep01", "WANDB_SILENT": "true"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the agent's venv, active
    env.pop("WANDB_MODE", None)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [metrics_path] = (tmp_path / "outputs").glob("**/metrics.json")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["model.residual"] is False and metrics["model.depth"] == 8 and metrics["steps"] == 2
    assert metrics["run_name"] == "resnet8-plain-s0"
    # wandb.init picked up the agent's run id: the run joins the agent's sweep run instead of starting its own
    assert [p.name.rsplit("-", 1)[-1] for p in (metrics_path.parent / "wandb").glob("offline-run-*")] == ["agentrun01"]


def test_job_status_callback_sends_failures_back_in_a_form_a_worker_can_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The job writes its own status.json; the callback only makes its exception safe to send to the sweep."""
    callback = JobStatusCallback()

    class Unpicklable(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a} and {b}")

    errors = [RuntimeError("kernel died"), Unpicklable(1, 2), ConfigError("optimizer.lr", -1, "a positive number")]
    returns = []
    for num, error in enumerate(errors):
        config = OmegaConf.create(
            {"hydra": {"mode": RunMode.MULTIRUN, "runtime": {"output_dir": str(tmp_path / str(num))}}}
        )
        (tmp_path / str(num) / ".hydra").mkdir(parents=True)
        (tmp_path / str(num) / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n")
        write_status(tmp_path / str(num), "failed", [f"seed={num}"], error)
        job_return = JobReturn(status=JobStatus.FAILED)
        job_return.return_value = error
        callback.on_job_end(config, job_return=job_return)
        returns.append(job_return._return_value)
        assert read_status(tmp_path / str(num))["error"] == f"{type(error).__name__}: {error}"  # untouched
    assert returns[0] is errors[0]  # picklable and unexpected: Hydra reports it with its traceback
    assert isinstance(returns[1], JobFailed) and str(pickle.loads(pickle.dumps(returns[1]))) == "Unpicklable: 1 and 2"
    assert isinstance(returns[2], JobFailed) and "optimizer.lr=-1" in str(returns[2])  # a UserError: one line
    print_summary(tmp_path)
    err = capsys.readouterr().err
    assert "0 of 3 jobs completed, 3 failed" in err and "RuntimeError: kernel died" in err


def test_jobs_of_a_multirun_share_a_wandb_group_and_get_readable_names_and_tags(tmp_path: Path) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from cnnlab.app.run import run_info
    from cnnlab.tasks.publish import run_name

    overrides = ["model=resnet", "model.depth=56", "model.residual=false", "seed=1", f"paths.output_dir={tmp_path}"]
    cfg = make_config(tmp_path / "3", overrides)
    assert run_name(cfg.model, cfg.seed) == "resnet56-plain-s1"
    info = run_info(cfg)
    assert info.tags() == ["model=resnet", "model.depth=56", "model.residual=false", "seed=1"]
    assert info.sweep_group() is None and not info.multirun  # a single run has no group
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.mode = RunMode.MULTIRUN
        hydra_cfg.sweep.dir = str(tmp_path / "multirun" / "2026-01-01" / "12-00-00-000001")
    assert run_info(cfg).sweep_group() == "2026-01-01/12-00-00-000001"


def test_a_failing_job_does_not_stop_the_others(tmp_path: Path) -> None:
    """joblib, 2 parallel jobs, one with a val split larger than the data (found only once the data is read):
    the other finishes, the failure is recorded and listed."""
    done = cli(
        "-m",
        "launcher=joblib",
        "model=mlp",
        "model.hidden=[16]",
        "dataset.val_size=100,9000",
        *[o for o in TINY if not o.startswith("runtime.threads")],
        "logger=none",
        f"paths.output_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert done.returncode != 0
    [sweep] = (tmp_path / "multirun").glob("*/*")
    good, bad = sweep / "0", sweep / "1"
    assert json.loads((good / "metrics.json").read_text())["steps"] == 2
    assert json.loads((good / "status.json").read_text())["status"] == "completed"
    status = json.loads((bad / "status.json").read_text())
    assert status["status"] == "failed" and "dataset.val_size=9000" in status["error"]
    assert not (bad / "metrics.json").exists()
    assert "1 of 2 jobs completed, 1 failed" in done.stderr
    assert "dataset.val_size=9000" in done.stderr.split("jobs completed")[1]
    # cores / n_jobs torch threads in each loky worker (runtime.threads=null)
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // 2)
    assert f"{threads} torch thread{'s' if threads > 1 else ''}\n" in next(good.glob("*.log")).read_text()


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_grid(tmp_path: Path) -> None:
    done = cli(
        "-m",
        "launcher=submitit_local",
        "model=mlp",
        "model.hidden=[16]",
        "seed=0,1",
        *[o for o in TINY if not o.startswith("runtime.threads")],
        "logger=none",
        f"paths.output_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [sweep] = (tmp_path / "multirun").glob("*/*")
    seeds = sorted(json.loads((sweep / str(n) / "metrics.json").read_text())["seed"] for n in (0, 1))
    assert seeds == [0, 1]
    assert "2 of 2 jobs completed, 0 failed" in done.stderr
    assert "1 torch thread\n" in next((sweep / "0").glob("*.log")).read_text()  # cpus_per_task: 1


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["model.depth=20,32"], "model=mlp has no key 'depth'; it is a key of model=resnet"),
        (["model=resnet", "model.depth=20,21"], "model.depth=21 is not allowed"),
        (["model=resnet", "optimizer.lr=0.1,-1"], "optimizer.lr=-1.0 is not allowed"),
        (["model=vgg", "seed=0,1"], "model='vgg' is not allowed: one of mlp, resnet"),
    ],
)
def test_the_wandb_grid_is_checked_as_the_multirun_checks_it(overrides, says):
    """A W&B sweep YAML whose agent runs would all fail is refused with the app's one-line message."""
    with pytest.raises(ConfigError, match=says):
        sweep_config(overrides)


def sweeps_engine_search(config: dict, n: int = 12) -> list:
    """n runs the `sweeps` engine proposes for a random or bayes config, each finished with a made-up metric."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    runs: list = []
    for i in range(n):
        run = sweeps.next_run(config, runs, validate=True)
        run.state = sweeps.RunState.finished
        run.summary_metrics = {config["metric"]["name"]: (i * 7 % 10) / 10}  # bayes fits its model to these
        runs.append(run)
    return runs


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_an_optuna_preset_exports_a_wandb_search_whose_runs_lie_in_its_distributions(method: str) -> None:
    config = sweep_config(["hparams_search=resnet_lr"], method=method)
    assert config["method"] == method and config["name"] == "resnet_lr"
    assert config["metric"] == {"name": "val_acc", "goal": "maximize"}  # the task's monitor, the study's direction
    assert config["parameters"] == {
        "optimizer.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.5},
        "optimizer.weight_decay": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
        "trainer.batch_size": {"values": [64, 128, 256]},
    }
    # one job per agent run: the preset's fixed params instead of the preset (which would start a study)
    fixed = ["model=resnet", "model.depth=20", "logger.mode=online"]
    assert config["command"] == ["${env}", "${interpreter}", "-m", "cnnlab", *fixed, "${args_no_hyphens}"]
    runs = sweeps_engine_search(config)
    jobs = [parsed(agent_command(config, run)[len(fixed) + 4 :]) for run in runs]  # what Hydra reads back
    assert all(0.01 <= job["optimizer.lr"] <= 0.5 and 1e-5 <= job["optimizer.weight_decay"] <= 1e-3 for job in jobs)
    assert {job["trainer.batch_size"] for job in jobs} <= {64, 128, 256}
    assert len({job["optimizer.lr"] for job in jobs}) == len(jobs)  # drawn, not a grid


def test_hydra_sweep_syntax_maps_to_wandb_distributions() -> None:
    overrides = [
        "optimizer.lr=interval(0.01,0.1)",
        "trainer.batch_size=int(interval(16,256))",
        "trainer.epochs=tag(log,int(interval(1,8)))",
        "seed=0,1",
        "optimizer=choice(sgd,adam)",
        "task.monitor=val_loss",
    ]
    config = sweep_config(overrides, method="random")
    assert config["parameters"] == {
        "optimizer.lr": {"distribution": "uniform", "min": 0.01, "max": 0.1},
        "trainer.batch_size": {"distribution": "int_uniform", "min": 16, "max": 256},
        "trainer.epochs": {"distribution": "q_log_uniform_values", "min": 1, "max": 8, "q": 1},
        "seed": {"values": [0, 1]},
        "optimizer": {"values": ["sgd", "adam"]},
    }
    assert config["metric"] == {"name": "val_loss", "goal": "minimize"}
    for run in sweeps_engine_search(config):
        job = parsed(agent_command(config, run)[6:])
        assert isinstance(job["trainer.batch_size"], int) and 16 <= job["trainer.batch_size"] <= 256
        assert isinstance(job["trainer.epochs"], int) and 1 <= job["trainer.epochs"] <= 8
        assert 0.01 <= job["optimizer.lr"] <= 0.1 and job["optimizer"] in ("sgd", "adam")


def test_the_presets_direction_sets_the_goal() -> None:
    config = sweep_config(["hparams_search=resnet_lr", "hydra.sweeper.direction=minimize"], method="bayes")
    assert config["metric"]["goal"] == "minimize"


@pytest.mark.parametrize(
    ("overrides", "method", "says"),
    [
        (["hparams_search=resnet_lr", "optimizer.lr=interval(-1,0.1)"], "random", "optimizer.lr=-1.0 is not allowed"),
        (["task=cam", "checkpoint=x.pt", "seed=0,1"], "bayes", "task.monitor=null is not allowed"),
        (["trainer.max_steps=2"], "random", "nothing to search"),
    ],
)
def test_a_search_that_cannot_run_is_refused(overrides, method: str, says: str) -> None:
    with pytest.raises(UserError, match=says):
        sweep_config(overrides, method=method)


def test_the_agents_python_by_default_and_python_pins_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep.yaml"
    main(["hparams_search=resnet_lr", "--method", "bayes", "-o", str(out)])
    assert yaml.safe_load(out.read_text())["command"][:2] == ["${env}", "${interpreter}"]
    assert "bayes search over optimizer.lr, optimizer.weight_decay, trainer.batch_size" in capsys.readouterr().out
    main(["seed=0,1", "--python", "/opt/lab/venv/bin/python", "-o", str(out)])
    assert yaml.safe_load(out.read_text())["command"][:3] == ["/opt/lab/venv/bin/python", "-m", "cnnlab"]
