#!/usr/bin/env python3
"""A throwaway single-node SLURM cluster on this machine (root, Debian): for tests/test_slurm.py, and for trying
`launcher=slurm` by hand.

    dir=$(mktemp -d)
    python scripts/slurm_cluster.py start "$dir"      # installs slurm-wlm and munge if missing
    export SLURM_CONF=$dir/slurm.conf                 # then sinfo, sbatch, python -m cnnlab -m launcher=slurm ...
    python scripts/slurm_cluster.py stop "$dir"       # cancels its jobs, stops the daemons it started

or, from Python (tests/test_slurm.py):

    with Cluster(tmp_dir) as cluster:                 # the node is idle when this returns
        subprocess.run(["sbatch", ...], env={**os.environ, **cluster.env})

Everything lives in the cluster's directory: slurm.conf, the munge key and socket, slurmctld's state, slurmd's
spool, the logs (log/) and the pids of the daemons it started (pids.json). It runs its own munged on its own
socket and picks free ports, so it leaves a site's munge and SLURM alone. `stop` cancels the cluster's jobs,
waits for them to end, then stops exactly the daemons `start` started, by pid (checked against their command
line first); a daemon that ignores SIGTERM gets SIGKILL. Last, it kills what a job may have left behind: the
processes that carry this cluster's SLURM_CONF in their environment.

The cluster: one node (this host, its CPUs and memory as `slurmd -C` reports them, on 127.0.0.1), one
partition (`debug`), select/cons_tres with CR_CPU_Memory, proctrack/linuxproc, task/none, no accounting
(slurmdbd), batch jobs requeueable (JobRequeue=1). Made for tests, it schedules every 2 s, and a requeued job
waits `cred_expire` (10 s here, SLURM's default 120 s) before it may start again; KillWait is 5 s (default 30).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "squeue", "sbatch", "scancel", "scontrol")
PACKAGES = ("slurm-wlm", "munge")
SBIN = ("/usr/sbin", "/sbin")  # the daemons; a non-login PATH may lack them
PIDS = "pids.json"


class Unavailable(RuntimeError):
    """This machine cannot run the cluster (not root, no apt-get, the packages would not install)."""


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if which(name) is None]


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get if a daemon or client is missing; Unavailable if that can't be."""
    absent = missing()
    if not absent:
        return
    why = f"the SLURM and munge binaries are missing ({', '.join(absent)})"
    if os.geteuid() != 0:
        raise Unavailable(f"{why} and this is not root, so they cannot be installed (apt-get install slurm-wlm munge)")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{why} and there is no apt-get to install slurm-wlm and munge with")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    policy = Path("/usr/sbin/policy-rc.d")  # Debian's switch: the packages' scripts start no system daemons
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
            done = subprocess.run(install, env=env, capture_output=True, text=True)
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    if done.returncode != 0 or missing():
        tail = " ".join((done.stdout + done.stderr).split()[-40:])
        raise Unavailable(f"{why} and `{' '.join(install)}` failed: {tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hardware() -> str:
    """This host's node line as slurmd sees it (CPUs, sockets, cores, threads, RealMemory), without its name."""
    out = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    return " ".join(field for field in line.split() if not field.startswith(("NodeName=", "UpTime=")))


class Cluster:
    """One node, one partition; `start()` brings it up and waits for the node to be idle, `stop()` tears it down."""

    def __init__(self, root: str | Path, partition: str = "debug") -> None:
        self.root = Path(root).absolute()
        self.partition = partition
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket.2"
        self.log = self.root / "log"
        self._children: dict[str, subprocess.Popen] = {}  # the daemons this process started

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, submitit, cnnlab) needs to talk to this cluster; jobs inherit it."""
        return {"SLURM_CONF": str(self.conf)}

    # -- setup

    def write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o600)
        r = self.root
        self.conf.write_text(
            f"""# A throwaway single-node cluster written by scripts/slurm_cluster.py
ClusterName=cnnlab-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/state/slurmctld.pid
SlurmdPidFile={r}/spool/slurmd.pid
SlurmctldLogFile={self.log}/slurmctld.log
SlurmdLogFile={self.log}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=600
MpiDefault=none
SwitchType=switch/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
NodeName={self.node} NodeAddr=127.0.0.1 {hardware()} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _spawn(self, name: str, *args: str) -> int:
        out = open(self.log / f"{name}.out", "ab")  # noqa: SIM115 (the daemon keeps it)
        process = subprocess.Popen(
            [which(name), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the caller's process group: a Ctrl-C there leaves it to stop()
            cwd=self.root,
            env={**os.environ, **self.env},  # and so the job steps slurmd starts, which leftovers() finds by it
        )
        out.close()
        self._children[name] = process
        pids = self.pids()
        pids[name] = process.pid
        (self.root / PIDS).write_text(json.dumps(pids))
        return process.pid

    def pids(self) -> dict[str, int]:
        try:
            return json.loads((self.root / PIDS).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _alive(self, name: str) -> bool:
        if name in self._children:  # started here (also before its exec, when /proc still shows python)
            return self._children[name].poll() is None
        pid = self.pids().get(name)
        if pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        # the pid is still ours: its program, with this cluster's config or socket on its command line
        ours = cmdline and Path(cmdline[0].decode()).name == name and str(self.root).encode() in b" ".join(cmdline)
        return bool(ours) and state != "Z"

    def _fail(self, what: str) -> None:
        tails = []
        for path in sorted(self.log.glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            tails.append(f"--- {path.name}\n" + "\n".join(lines))
        self.stop()
        raise RuntimeError(f"slurm_cluster: {what}\n" + "\n".join(tails))

    def _wait(self, what: str, ready, daemons: tuple[str, ...], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [d for d in daemons if not self._alive(d)]
            if dead:
                self._fail(f"{', '.join(dead)} exited while waiting for {what}")
            if time.monotonic() > deadline:
                self._fail(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.2)

    def client(self, *args: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), env={**os.environ, **self.env}, capture_output=True, text=True, check=check, timeout=timeout
        )

    def node_state(self) -> str:
        try:
            done = self.client("sinfo", "-h", "-n", self.node, "-o", "%T", timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    def start(self) -> Cluster:
        """Install if needed, write the config, start munged, slurmctld and slurmd; return once the node is idle."""
        ensure_installed()
        if any(self._alive(d) for d in DAEMONS):
            raise RuntimeError(f"slurm_cluster: a cluster is already running in {self.root} (stop it first)")
        self.write_config()
        munge = self.root / "munge"
        self._spawn(
            "munged",
            "--foreground",
            "--force",  # root, and a socket under a world-writable temp dir
            f"--socket={self.socket}",
            f"--key-file={munge / 'munge.key'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={self.log / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        )
        self._wait("munged's socket", self.socket.exists, ("munged",))
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._wait("slurmctld", lambda: self.client("scontrol", "ping", timeout=10).stdout.count("UP") > 0,
                   ("munged", "slurmctld"))  # fmt: skip
        self._spawn("slurmd", "-D", "-f", str(self.conf), "-N", self.node)
        self._wait(f"node {self.node} to be idle", lambda: self.node_state() == "idle", DAEMONS, timeout=90)
        return self

    # -- teardown

    def jobs(self) -> list[str]:
        done = self.client("squeue", "-h", "-o", "%A", "-t", "all", timeout=15) if self._alive("slurmctld") else None
        return done.stdout.split() if done is not None and done.returncode == 0 else []

    def active_jobs(self) -> list[str]:
        if not self._alive("slurmctld"):
            return []
        done = self.client("squeue", "-h", "-o", "%A", timeout=15)
        return done.stdout.split() if done.returncode == 0 else []

    def job_pids(self, job_id: str | None = None) -> list[int]:
        """The processes of the jobs on the node, or of one job (`scontrol listpids`: slurmd's steps)."""
        if not self._alive("slurmd"):
            return []
        wanted = None
        if job_id is not None:  # squeue's %A: the job's own id, also for a task of an array (<array id>_<task>)
            wanted = set(self.client("squeue", "-h", "-j", job_id, "-o", "%A", timeout=15).stdout.split())
        listed = self.client("scontrol", "listpids", timeout=15).stdout.splitlines()[1:]
        rows = [line.split() for line in listed]
        return [int(r[0]) for r in rows if len(r) > 1 and r[0].isdigit() and (wanted is None or r[1] in wanted)]

    def kill_job(self, job_id: str) -> list[int]:
        """SIGKILL every process of a running job, as the OOM killer or a crash would: it ends at once, without
        the SIGTERM and KillWait of `scancel` (even `scancel --signal=KILL` goes that way). Returns the pids."""
        pids = self.job_pids(job_id)
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        return pids

    def leftovers(self) -> list[int]:
        """Processes other than the daemons that carry this cluster's SLURM_CONF: job steps and what they run
        (jobs inherit it from sbatch and slurmd), and clients still talking to the cluster."""
        mark = f"SLURM_CONF={self.conf}".encode()
        daemons = set(self.pids().values()) if any(self._alive(d) for d in DAEMONS) else set()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in daemons | {os.getpid()}:
                continue
            try:
                if mark in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:  # gone, or another user's
                pass
        return found

    def stop(self, timeout: float = 30) -> None:
        """Cancel the cluster's jobs and wait for them to end, stop the daemons it started (by pid), then kill
        what its jobs left (processes that carry its SLURM_CONF)."""
        try:
            if self.active_jobs():
                self.client("scancel", "--full", "--signal=KILL", *self.active_jobs(), timeout=15)
                self.client("scancel", *self.active_jobs(), timeout=15)
                deadline = time.monotonic() + timeout
                while (self.active_jobs() or self.job_pids()) and time.monotonic() < deadline:
                    time.sleep(0.5)
            for pid in self.job_pids():  # a step slurmd could not end
                _kill(pid, signal.SIGKILL)
        except (subprocess.SubprocessError, OSError):
            pass  # the daemons below are stopped whatever the clients said
        for name in reversed(DAEMONS):  # slurmd, slurmctld, then munged, which they authenticate with
            if not self._alive(name):
                continue
            pid = self.pids()[name]
            _kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._alive(name):
                _kill(pid, signal.SIGKILL)
            _reap(pid)
        (self.root / PIDS).unlink(missing_ok=True)
        self._children.clear()
        for pid in self.leftovers():
            _kill(pid, signal.SIGKILL)

    def running(self) -> list[str]:
        """The daemons this cluster started that are still running."""
        return [name for name in DAEMONS if self._alive(name)]

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect a daemon that is our own child (the context manager's), so it leaves no zombie behind."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("dir", type=Path, help="the cluster's directory (config, state, logs, pids)")
    parser.add_argument("--partition", default="debug")
    args = parser.parse_args(argv)
    cluster = Cluster(args.dir, args.partition)
    if args.command == "start":
        try:
            cluster.start()
        except Unavailable as e:
            print(f"slurm_cluster: cannot run here: {e}", file=sys.stderr)
            return 2
        print(f"node {cluster.node} idle in partition {cluster.partition}; use it with:")
        print(f"export SLURM_CONF={cluster.conf}")
    elif args.command == "stop":
        cluster.stop()
        print(f"stopped the cluster in {cluster.root}")
    else:
        print(json.dumps({"daemons": cluster.running(), "node": cluster.node_state(), "jobs": cluster.jobs()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
