"""SLURM for real: a throwaway single-node cluster (scripts/slurm_cluster.py) runs sweeps through `launcher=slurm`.

The cluster has no GPU, so the grid's sbatch would be refused if the preset asked for one. Its jobs: a 2x2 grid
as one sbatch array; a job pre-empted with `scancel --signal=USR2`, requeued by submitit, that resumes from its
checkpoint; a sweep whose launcher and jobs were killed, finished by `cnnlab resume`; Ctrl-C on a sweep. Every
job that stopped ends bit-identical to the grid's uninterrupted job with the same overrides.

Slow (`pytest -m slow -k slurm`, about 2 minutes on 2 cores): root on Debian, it installs slurm-wlm and munge
with apt-get if they are missing; elsewhere it is skipped (CNNLAB_SLURM_REQUIRED=1 makes that a failure, as in
.ci/run). cnnlab runs only through its command line here. The cluster's config, state and logs stay in pytest's
temp dir (slurm*/log/ after a failure); its daemons are stopped when the module ends, and the test checks that
none of them, nor any process of its jobs, is left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PARTITION = "debug"

# A tiny ResNet for 250 steps (7000 train images / 64 = 110 steps an epoch: evaluations at 110, 220 and 250),
# last.pt every 10 steps; one torch thread everywhere, so runs of one grid point are bit-identical wherever they
# ran. The tests signal or kill a job once its first last.pt is there: 240 steps (a few seconds) before its end.
STEPS = 250
TRAIN = [
    "model=resnet",
    "model.depth=8",
    "model.width=4",
    "trainer.batch_size=64",
    f"trainer.max_steps={STEPS}",
    "runtime.threads=1",
    "runtime.checkpoint_every=10",
    "runtime.log_every=10",
    "runtime.figures=false",
    "logger=none",
]
GRID = ["seed=0,1", "optimizer.lr=0.1,0.05"]  # jobs 0..3: (0, 0.1), (0, 0.05), (1, 0.1), (1, 0.05)
JOBS = [[f"seed={s}", f"optimizer.lr={lr}"] for s in (0, 1) for lr in (0.1, 0.05)]
SLURM = ["launcher=slurm", f"hydra.launcher.partition={PARTITION}"]  # the preset as shipped: no GPU override
SMALL = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]  # two jobs at once on a 2-core node


def load_script():
    spec = importlib.util.spec_from_file_location("slurm_cluster", ROOT / "scripts" / "slurm_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cannot_run(reason: str) -> None:
    if os.environ.get("CNNLAB_SLURM_REQUIRED") == "1":
        pytest.fail(f"CNNLAB_SLURM_REQUIRED=1 but the SLURM test cannot run: {reason}")
    pytest.skip(f"SLURM test cluster: {reason}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    slurm_cluster = load_script()
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra (submitit)")
    if os.geteuid() != 0:
        cannot_run("not root: its slurmd runs jobs as root, and slurm-wlm/munge are installed with apt-get")
    try:
        slurm_cluster.ensure_installed()
    except slurm_cluster.Unavailable as e:
        cannot_run(str(e))
    cluster = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm"), partition=PARTITION)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
    assert cluster.running() == [], f"daemons left running: {cluster.running()}"
    assert cluster.leftovers() == [], f"processes of the cluster's jobs left running: {cluster.leftovers()}"


def environment(cluster) -> dict[str, str]:
    env = {**os.environ, **cluster.env, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python then raises KeyboardInterrupt, even if pytest's ignored it


def launch(cluster, *args: str, log: Path) -> subprocess.Popen:
    """`python -m cnnlab <args>` in the background, in its own session (SIGKILL to its group spares pytest)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *args],
        cwd=ROOT,
        env=environment(cluster),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
        preexec_fn=_default_sigint,
    )


def finish(process: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"cnnlab did not end within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
    return log.read_text()


def cnnlab(cluster, *args: str, log: Path, timeout: float = 600) -> tuple[int, str]:
    process = launch(cluster, *args, log=log)
    err = finish(process, log, timeout)
    return process.returncode, err


def wait_for(condition: Callable[[], bool], what: str, process: subprocess.Popen | None, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"cnnlab ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def status(job: Path) -> dict:
    try:
        return json.loads((job / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def queued(cluster, job_id: str) -> list[str]:
    """The states of the job's (or array's) entries that have not ended."""
    done = cluster.client("squeue", "-h", "-j", job_id, "-o", "%T")
    return done.stdout.split() if done.returncode == 0 else []


def show_ended(cluster, job_id: str) -> str:
    """`scontrol show job` once the job (or array) has left the queue: submitit's launcher returns when a job
    wrote its result, which can be before SLURM calls it completed. Ended jobs stay listed for MinJobAge."""
    wait_for(lambda: not queued(cluster, job_id), f"job {job_id} to end", None, timeout=60)
    return cluster.client("scontrol", "show", "job", job_id).stdout


def job_logs(sweep_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((sweep_dir / ".submitit").glob("*/*_log.*")))


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_run(job: Path, reference: Path) -> None:
    """Same weights in last.pt and best.pt, same metrics and the same history as the run that never stopped."""
    for name in ("last.pt", "best.pt"):
        ours, theirs = (load_checkpoint(d / "checkpoints" / name) for d in (job, reference))
        assert ours["model"].keys() == theirs["model"].keys()
        for key, tensor in ours["model"].items():
            assert torch.equal(tensor, theirs["model"][key]), f"{job}: {name}: {key} differs from {reference}"
        assert ours["train_state"]["step"] == theirs["train_state"]["step"]
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (job, reference))
    for key in ("test_acc", "test_loss", "val_acc", "val_loss", "best_val_acc", "steps", "best_step"):
        assert ours[key] == theirs[key], key
    assert (job / "history.jsonl").read_text() == (reference / "history.jsonl").read_text()


def snapshot(job: Path) -> dict[str, tuple[int, bytes]]:
    files = [job / "metrics.json", job / "history.jsonl", *sorted((job / "checkpoints").glob("*.pt"))]
    return {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}


@pytest.fixture(scope="module")
def grid(cluster, tmp_path_factory) -> tuple[Path, str]:
    """The 2x2 grid through launcher=slurm with the preset's resources (2 CPUs, 4 GB, no GPU): the sweep dir and
    its launcher's stderr. Its jobs are the uninterrupted references of the tests below."""
    sweep_dir = tmp_path_factory.mktemp("grid") / "sweep"
    code, err = cnnlab(
        cluster, "-m", *SLURM, *GRID, *TRAIN, f"hydra.sweep.dir={sweep_dir}", log=sweep_dir.with_suffix(".log")
    )
    assert code == 0, err[-3000:]
    return sweep_dir, err


@pytest.mark.slow
@pytest.mark.ci
def test_a_grid_runs_as_one_sbatch_array_on_a_cluster_without_gpus(cluster, grid) -> None:
    sweep_dir, err = grid
    assert f"sweep {sweep_dir}: 4 of 4 jobs completed, 0 failed" in err
    ids = []
    for n, overrides in enumerate(JOBS):
        job = sweep_dir / str(n)
        assert (job / "metrics.json").is_file() and status(job)["status"] == "completed"
        assert set(overrides) <= set(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        ids.append(status(job)["job_id"])  # submitit's id: <array job id>_<task>
    [array] = {i.split("_")[0] for i in ids}
    assert ids == [f"{array}_{n}" for n in range(4)]
    shown = show_ended(cluster, array)
    assert shown.count("JobState=COMPLETED") == 4 and "gres/gpu" not in shown


@pytest.mark.slow
@pytest.mark.ci
def test_a_job_preempted_with_usr2_is_requeued_and_resumes_bit_identical(cluster, grid, tmp_path) -> None:
    """scancel --signal=USR2 mid-training: cnnlab writes last.pt at that step, submitit requeues the job (a
    pre-emption, not a time-out: timeout_min is 240), and SLURM runs it again; it resumes from last.pt in its own
    job dir, with no command typed, and ends bit-identical to the grid's job 0."""
    sweep_dir, log = tmp_path / "preempted", tmp_path / "preempted.log"
    launcher = launch(cluster, "-m", *SLURM, *SMALL, *JOBS[0], *TRAIN, f"hydra.sweep.dir={sweep_dir}", log=log)
    job = sweep_dir / "0"
    wait_for(lambda: (job / "checkpoints" / "last.pt").is_file(), "the job's first checkpoint", launcher)
    job_id = status(job)["job_id"]
    signalled = cluster.client("scancel", "--signal=USR2", job_id)
    assert signalled.returncode == 0, signalled.stderr
    err = finish(launcher, log)
    assert launcher.returncode == 0, err[-3000:]
    assert f"sweep {sweep_dir}: 1 of 1 jobs completed, 0 failed" in err

    text = job_logs(sweep_dir)  # both runs of the job append to its submitit logs
    found = re.search(r"interrupted by SIGUSR2 at step (\d+)", text)
    assert found, text[-3000:]
    step = int(found.group(1))
    assert 10 <= step < STEPS
    assert "this job is preempted" in text and f"Requeued job {job_id} (3 remaining timeouts)" in text
    assert text.count(f"resuming {job} from step {step}") == 1
    shown = show_ended(cluster, job_id)
    assert "Restarts=1" in shown and "JobState=COMPLETED" in shown  # SLURM ran it twice, under one id
    assert status(job)["status"] == "completed" and status(job)["job_id"] == job_id
    assert_same_run(job, grid[0] / "0")


@pytest.mark.slow
@pytest.mark.ci
def test_a_killed_slurm_sweep_finishes_with_cnnlab_resume(cluster, grid, tmp_path) -> None:
    """The launcher SIGKILLed while its grid runs one job at a time, then its jobs killed (the pending ones
    cancelled, the running one's processes SIGKILLed, as the OOM killer or a lost node would): `cnnlab resume`
    skips job 0, resumes job 1 from its last.pt, starts 2 and 3, each on SLURM again; all end as the grid's jobs
    did."""
    sweep_dir, log = tmp_path / "killed", tmp_path / "killed.log"
    one_at_a_time = [*SMALL, "hydra.launcher.array_parallelism=1"]
    launcher = launch(cluster, "-m", *SLURM, *one_at_a_time, *GRID, *TRAIN, f"hydra.sweep.dir={sweep_dir}", log=log)
    jobs = [sweep_dir / str(n) for n in range(4)]
    wait_for(
        lambda: status(jobs[0]).get("status") == "completed" and (jobs[1] / "checkpoints" / "last.pt").is_file(),
        "job 0 to complete and job 1 to write a checkpoint",
        launcher,
    )
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    task = status(jobs[1])["job_id"]
    array = task.split("_")[0]
    cluster.client("scancel", "--state=PENDING", array)  # first, so task 2 does not start when task 1 dies
    assert cluster.kill_job(task), f"no process of job {task} on the node"
    show_ended(cluster, array)
    assert status(jobs[1])["status"] == "running", "job 1 completed before it was killed: make TRAIN longer"
    assert not (jobs[1] / "metrics.json").exists() and not jobs[2].exists() and not jobs[3].exists()
    untouched = snapshot(jobs[0])

    code, err = cnnlab(
        cluster, "resume", str(sweep_dir), "hydra.launcher.array_parallelism=2", log=tmp_path / "resume.log"
    )
    assert code == 0, err[-3000:]
    assert "4 jobs: 1 completed (skipped), 1 resumed from their checkpoint, 2 started (2 never started before)" in err
    assert f"sweep {sweep_dir}: 4 of 4 jobs completed, 0 failed" in err
    assert snapshot(jobs[0]) == untouched, "job 0 was completed and must stay as it was"
    assert len(re.findall(f"resuming {jobs[1]} from step ", job_logs(sweep_dir))) == 1
    for n in (1, 2, 3):
        assert status(jobs[n])["status"] == "completed"
        assert_same_run(jobs[n], grid[0] / str(n))
    assert {status(job)["job_id"].split("_")[0] for job in jobs[1:]} != {array}  # a new sbatch array


@pytest.mark.slow
@pytest.mark.ci
def test_ctrl_c_on_a_slurm_sweep_stops_its_jobs(cluster, tmp_path) -> None:
    """Ctrl-C while a sweep's job runs and the next one waits: the launcher says in one line that it cancelled
    them and exits 130; the running job checkpoints its step and records `interrupted`, the pending one never
    starts, and nothing of the sweep is left in the queue."""
    sweep_dir, log = tmp_path / "ctrl-c", tmp_path / "ctrl-c.log"
    args = [*SLURM, *SMALL, "hydra.launcher.array_parallelism=1", "seed=0,1", *TRAIN, f"hydra.sweep.dir={sweep_dir}"]
    launcher = launch(cluster, "-m", *args, log=log)
    job = sweep_dir / "0"
    wait_for(lambda: (job / "checkpoints" / "last.pt").is_file(), "job 0's first checkpoint", launcher)
    array = status(job)["job_id"].split("_")[0]
    try:
        os.kill(launcher.pid, signal.SIGINT)
        err = finish(launcher, log, timeout=60)
        assert launcher.returncode == 130, err[-3000:]
        assert f"cnnlab: Ctrl-C: cancelled the sweep's SLURM jobs {array}" in err
        wait_for(lambda: not queued(cluster, array), f"array {array} to end", None, timeout=60)
        assert status(job)["status"] == "interrupted" and "SIGINT" in status(job)["error"]
        assert not (sweep_dir / "1").exists()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        cluster.client("scancel", array)  # as things are now, the jobs run on: leave the cluster free
        wait_for(lambda: not queued(cluster, array), f"array {array} to end", None, timeout=60)


def test_launcher_slurm_asks_for_no_gpu_as_shipped() -> None:
    """sbatch refuses a GPU request on a cluster without GPUs ("Invalid generic resource (gres) specification"):
    the preset runs anywhere, a GPU is the user's override."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra (submitit)")
    shown = subprocess.run(
        [sys.executable, "-m", "cnnlab", "launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher"],
        cwd=ROOT,
        env={**os.environ, "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    launcher = yaml.safe_load(shown.stdout)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert {key: launcher[key] for key in ("gpus_per_node", "gpus_per_task", "gres")} == dict.fromkeys(
        ("gpus_per_node", "gpus_per_task", "gres")
    )
    assert launcher["max_num_timeout"] > 0 and launcher["additional_parameters"] == {"requeue": True}
