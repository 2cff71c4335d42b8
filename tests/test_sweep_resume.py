"""Resuming whole sweeps: `cnnlab resume <sweep dir>` after a SIGKILL, the grid's jobs that never started, and a
submitit job pre-empted and requeued, which resumes by itself. Resumed jobs end bit-identical to jobs that never
stopped; completed jobs are left as they are."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cnnlab.app import resume as run_resume
from cnnlab.errors import UserError
from cnnlab.records.status import read_status, write_status
from cnnlab.report import load_runs, report
from cnnlab.sweeps import resume as sweep_resume
from cnnlab.sweeps.callbacks import print_summary
from tests.helpers import RESUME_RUN, assert_same_run, cli, run_app, sweep

# test_resume's run (RESUME_RUN) for one epoch: 28 steps, last.pt every 10 steps; dropout draws from the torch RNG
RUN = [o for o in RESUME_RUN if not o.startswith(("trainer.epochs=", "runtime.log_every="))] + ["trainer.epochs=1"]
GRID = ["seed=0,1", "optimizer.lr=0.1,0.05"]  # jobs 0..3: (0, 0.1), (0, 0.05), (1, 0.1), (1, 0.05)
JOBS = [[f"seed={s}", f"optimizer.lr={lr}"] for s in (0, 1) for lr in (0.1, 0.05)]


def snapshot(job: Path) -> dict[str, tuple[int, bytes]]:
    files = [job / "metrics.json", job / "history.jsonl", *sorted((job / "checkpoints").glob("*.pt"))]
    return {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}


@pytest.mark.slow
def test_joblib_grid_killed_then_resumed_with_one_command(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    killed = sweep(tmp_path, "-m", "launcher=joblib", *GRID, *RUN, f"paths.output_dir={out}", signal_at="SIGKILL:2:17")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    [sweep_dir] = (out / "multirun").glob("*/*")
    jobs = {n: sweep_dir / str(n) for n in range(4)}
    done = {n for n, job in jobs.items() if (read_status(job) or {}).get("status") == "completed"}
    assert done and 2 not in done  # joblib starts job 2 once job 0 or 1 completed
    assert (jobs[2] / "checkpoints" / "last.pt").is_file() and read_status(jobs[2])["status"] == "running"
    runs = load_runs(sweep_dir)  # the whole grid, the jobs that never started too
    assert len(runs) == 4 and sum(r.status == "completed" for r in runs) == len(done)
    untouched = {n: snapshot(jobs[n]) for n in done}

    resumed = cli("resume", str(sweep_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(done)} completed (skipped)" in resumed.stderr and "skipped: completed" in resumed.stderr
    assert f"sweep {sweep_dir}: 4 of 4 jobs completed, 0 failed" in resumed.stderr
    for n, job in jobs.items():
        assert read_status(job)["status"] == "completed"
        if n in done:
            assert snapshot(job) == untouched[n], f"job {n} was completed and must stay as it was"
        else:
            reference = tmp_path / "reference" / str(n)
            run_app(reference, *RUN, *JOBS[n])
            assert_same_run(job, reference)
        assert "runtime.resume" not in (job / ".hydra" / "overrides.yaml").read_text()
    assert len(list(sweep_dir.glob("*/.hydra/overrides.yaml"))) == 4


@pytest.mark.slow
def test_submitit_local_job_preempted_is_requeued_and_resumes_by_itself(tmp_path: Path) -> None:
    """submitit's pre-emption signal mid-epoch: last.pt at that step, submitit requeues the job, the job resumes
    from its own job dir and ends bit-identical to a run that never stopped."""
    out = tmp_path / "outputs"
    args = ["-m", "launcher=submitit_local", "seed=0", *RUN, f"paths.output_dir={out}"]
    done = sweep(tmp_path, *args, signal_at="SIGUSR2:0:17")
    assert done.returncode == 0, done.stderr[-3000:]
    [sweep_dir] = (out / "multirun").glob("*/*")
    job = sweep_dir / "0"
    [folder] = (sweep_dir / ".submitit").glob("*/*_0_log.err")
    text = folder.read_text() + folder.with_suffix(".out").read_text()  # the job's stderr and stdout
    assert "interrupted by SIGUSR2 at step 17" in text and "Requeued job" in text
    assert text.count(f"resuming {job} from step 17") == 1  # the requeued job continued from its checkpoint
    assert read_status(job)["status"] == "completed"
    run_app(tmp_path / "reference", *RUN, "seed=0")
    assert_same_run(job, tmp_path / "reference")


def fake_sweep(root: Path, statuses: dict[int, str]) -> Path:
    """A sweep dir as a killed 2x2 sweep leaves it: multirun.yaml and the job dirs that started."""
    root.mkdir(parents=True)
    multirun = {
        "hydra": {
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
            "overrides": {"hydra": ["hydra.mode=MULTIRUN", "hydra.launcher.n_jobs=2"], "task": [*GRID, *RUN]},
        }
    }
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    for n, status in statuses.items():
        job = root / str(n)
        (job / ".hydra").mkdir(parents=True)
        overrides = [*JOBS[n], *RUN]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        write_status(job, status, overrides)
    return root


def test_the_report_and_the_summary_count_the_jobs_that_never_started(tmp_path: Path, capsys) -> None:
    sweep_dir = fake_sweep(tmp_path / "sweep", {0: "running", 1: "running"})
    runs = load_runs(sweep_dir)
    assert [r.status for r in runs] == ["unfinished", "unfinished", "not started", "not started"]
    assert [r.dir.name for r in runs[2:]] == ["2", "3"] and runs[2].overrides[:2] == JOBS[2]
    assert f"cnnlab resume {sweep_dir}" in str(runs[3].note)
    report(sweep_dir, figures=False)
    text = (sweep_dir / "results.md").read_text()
    assert "4 runs: 0 completed, 0 failed, 2 unfinished, 2 not started." in text
    assert "## Not started" in text and "seed=1 optimizer.lr=0.05" in text
    print_summary(sweep_dir)
    err = capsys.readouterr().err
    assert "0 of 4 jobs completed, 0 failed, 2 unfinished, 2 not started" in err
    assert f"resume: cnnlab resume {sweep_dir}" in err


def test_a_sweep_without_multirun_yaml_has_no_not_started_jobs(tmp_path: Path) -> None:
    sweep_dir = fake_sweep(tmp_path / "sweep", {0: "running"})
    (sweep_dir / "multirun.yaml").unlink()
    assert sweep_resume.not_started(sweep_dir) == []
    assert [r.status for r in load_runs(sweep_dir)] == ["unfinished"]


@pytest.mark.parametrize(
    ("status", "files", "expected"),
    [
        ("completed", ["metrics.json", "checkpoints/last.pt"], "skip"),
        ("running", ["checkpoints/last.pt"], "resume"),  # killed (SIGKILL, out of memory, node lost)
        ("interrupted", ["checkpoints/last.pt"], "resume"),  # SIGTERM, Ctrl-C, pre-emption
        ("running", [], "start"),  # killed before its first checkpoint
        ("failed", ["checkpoints/last.pt"], "start"),
        ("diverged", ["checkpoints/last.pt", "metrics.json"], "start"),
        ("rejected", [], "start"),
    ],
)
def test_what_each_job_of_a_resumed_sweep_does(tmp_path: Path, status: str, files: list[str], expected: str):
    job = fake_sweep(tmp_path / "sweep", {0: status}) / "0"
    for name in files:
        (job / name).parent.mkdir(parents=True, exist_ok=True)
        (job / name).write_text("x")
    assert run_resume.action(job, [*JOBS[0], *RUN, "runtime.resume=auto"], read_status(job)) == expected
    assert run_resume.action(job, [*JOBS[1], *RUN], read_status(job)) == "mismatch"
    assert run_resume.action(tmp_path / "sweep" / "1", [*JOBS[1], *RUN], None) == "start"  # never started


def test_a_job_started_again_drops_what_the_failed_attempt_left(tmp_path: Path) -> None:
    job = fake_sweep(tmp_path / "sweep", {0: "failed"}) / "0"
    for name in ("metrics.json", "history.jsonl", "checkpoints/last.pt"):
        (job / name).parent.mkdir(parents=True, exist_ok=True)
        (job / name).write_text("x")
    run_resume.clear(job)
    assert not (job / "metrics.json").exists() and not (job / "history.jsonl").exists()
    assert not (job / "checkpoints").exists() and (job / ".hydra" / "overrides.yaml").is_file()
    # a job that never started: the config Hydra wrote to .hydra/resume/ is how it started
    fresh = tmp_path / "sweep" / "3" / ".hydra" / "resume"
    fresh.mkdir(parents=True)
    (fresh / "overrides.yaml").write_text(yaml.safe_dump([*JOBS[3], "runtime.resume=auto"]))
    (fresh / "config.yaml").write_text("seed: 1\n")
    run_resume.clear(fresh.parent.parent)
    assert OmegaConf.to_container(OmegaConf.load(fresh.parent / "overrides.yaml")) == JOBS[3]
    assert (fresh.parent / "config.yaml").is_file() and not fresh.exists()


def test_cnnlab_resume_relaunches_the_recorded_sweep_in_its_dir(tmp_path: Path, capsys) -> None:
    sweep_dir = fake_sweep(tmp_path / "sweep, 1", {})
    args = sweep_resume.command(sweep_dir, ["hydra.launcher.n_jobs=4"])
    assert args == [
        "-m",
        "hydra.launcher.n_jobs=2",
        *GRID,
        *RUN,
        "hydra.launcher.n_jobs=4",
        f"hydra.sweep.dir='{sweep_dir.absolute()}'",  # quoted: a comma would make a sweep of it
        "runtime.resume=auto",
    ]
    with pytest.raises(SystemExit) as exit_code:
        sweep_resume.main([str(tmp_path)])
    assert exit_code.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cnnlab resume: error: {tmp_path} is not a sweep dir: it holds no multirun.yaml "
        "(pass outputs/multirun/<date>/<time>)"
    ]


def test_a_multirun_resume_is_auto(tmp_path: Path) -> None:
    """-m with runtime.resume=<dir>: one line, exit 2, nothing written (auto without a sweep: the test below)."""
    fake_sweep(tmp_path / "outputs" / "multirun" / "a" / "b", {0: "running"})
    base = ["-m", *GRID, *RUN, f"paths.output_dir={tmp_path / 'outputs'}"]
    wrong = cli(*base, f"runtime.resume={tmp_path}")
    assert wrong.returncode == 2, wrong.stderr
    assert wrong.stderr.strip().splitlines()[-1].startswith(f"cnnlab: error: runtime.resume={tmp_path} is not allowed")
    assert sorted(p.name for p in (tmp_path / "outputs" / "multirun").glob("*/*")) == ["b"]  # no new sweep dir


def test_the_same_grid_is_found_for_auto(tmp_path: Path) -> None:
    """auto picks the newest sweep whose grid has the same results; how it runs (threads, launcher) may change."""
    older = fake_sweep(tmp_path / "multirun" / "d" / "1", {})
    newer = fake_sweep(tmp_path / "multirun" / "d" / "2", {})
    other = fake_sweep(tmp_path / "multirun" / "d" / "3", {})
    (other / "multirun.yaml").write_text((other / "multirun.yaml").read_text().replace("seed=0,1", "seed=1,0"))
    os.utime(older / "multirun.yaml", (1, 1))
    config = OmegaConf.load(newer / "multirun.yaml")
    config.hydra.overrides.task += ["runtime.threads=2", "launcher=joblib", "runtime.resume=auto"]
    config.paths = {"output_dir": str(tmp_path)}
    assert sweep_resume.find_sweep(config) == newer
    expected = [run_resume.comparable([*job, *RUN]) for job in JOBS]
    assert [run_resume.comparable(job) for job in sweep_resume.grid(config)] == expected
    config.hydra.overrides.task[0] = "seed=0,1,2"
    with pytest.raises(UserError, match="no sweep under"):
        sweep_resume.find_sweep(config)


def test_in_a_submitit_job_the_preemption_signal_checkpoints_then_goes_to_submitit(monkeypatch) -> None:
    """SIGUSR2 only sets the flag while stepping (the Trainer checkpoints and stops); SIGTERM stays with submitit;
    `hand_over` then calls submitit's own handler, which requeues the job."""
    from cnnlab.training.stop import Interrupted, stop

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    calls = []

    def submitit_handler(signum, frame):
        calls.append(signum)

    previous = {s: signal.signal(s, submitit_handler) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        with stop.handling(), stop.stepping():
            assert signal.getsignal(signal.SIGTERM) is submitit_handler
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.signal_name == "SIGUSR2" and calls == []
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # restored
        stop.hand_over(Interrupted("SIGINT", 5))
        assert calls == []  # Ctrl-C is not a pre-emption
        stop.hand_over(Interrupted("SIGUSR2", 5))
        assert calls == [signal.SIGUSR2]
    finally:
        stop.signal_name = None  # the flag is process-wide: leave none for the next test
        for s, handler in previous.items():
            signal.signal(s, handler)
