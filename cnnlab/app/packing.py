"""launcher=packed: the jobs of a grid sweep that differ only in seed train together, up to runtime.pack at a
time, as one module (cnnlab.models.packed, trained by cnnlab.training.packed).

The first job of a pack (in launch order) trains every member into the member's own job dir (history.jsonl,
split.json, checkpoints; status `packed`) and then finishes itself; each other member's job, when it comes,
resumes from its own last.pt at the last step (cnnlab.app.resume), so every member is tested, recorded and
published as any run (metrics.json, figures, W&B run, status). A job that cannot be packed runs as usual, and the
log says why in one line. A pack killed part-way resumes as a pack (`cnnlab resume <sweep dir>`) from its members'
last.pt, which it writes together.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.app.resume import MULTIRUN_FILE, PACKED, clear, grid
from cnnlab.config.overrides import keys, values
from cnnlab.models.packed import pack, unpackable
from cnnlab.records import checkpoint
from cnnlab.records.provenance import provenance
from cnnlab.records.rundir import CHECKPOINTS
from cnnlab.records.status import read_status, write_status
from cnnlab.tasks.build import build, build_loaders, seed_everything, typed
from cnnlab.tasks.context import RunInfo
from cnnlab.training.packed import Member, PackedLoader, PackedTrainer
from cnnlab.training.state import TrainState
from cnnlab.training.stop import Interrupted
from cnnlab.training.trainer import DivergenceError

log = logging.getLogger("cnnlab")
DONE = (PACKED, "completed", "diverged")  # a member the pack need not train again


def pack_of(jobs: list[list[str]], me: int, size: int) -> list[int]:
    """The job numbers of `me`'s pack: the jobs equal to it but for the seed, `size` at a time in launch order."""
    mine = without_seed(jobs[me])
    group = [n for n, job in enumerate(jobs) if without_seed(job) == mine]
    start = group.index(me) // size * size
    return group[start : start + size]


def without_seed(job: list[str]) -> tuple[str, ...]:
    """A job's overrides but its seed (and a resume's runtime.resume): jobs equal in these pack together."""
    return tuple(sorted(line for key, line in keys(job) if key not in ("seed", "runtime.resume")))


def why_alone(cfg: DictConfig, hydra: DictConfig, members: int) -> str | None:
    """Why this job trains alone under launcher=packed, or None."""
    if members < 2:
        return "no other job of the sweep differs from it only in seed"
    if not str(hydra.launcher.get("_target_", "")).endswith("BasicLauncher"):
        return "its launcher runs jobs in parallel (launcher=packed runs them one after another)"
    if cfg.task.name != "classify":
        return f"task={cfg.task.name} trains nothing"
    if str(hydra.sweep.subdir) != str(hydra.job.num):
        return "hydra.sweep.subdir is not the job number, so its pack's job dirs are not known"
    if not cfg.runtime.checkpoint:
        return "runtime.checkpoint=false (each member's job finishes from its last.pt)"
    if cfg.runtime.compile:
        return "runtime.compile is on (packs run eagerly)"
    if str(cfg.trainer.precision) == "16":
        return "trainer.precision=16 scales every member's loss by one factor (bf16 or 32 pack)"
    return unpackable(build(cfg.model, "model"))


def train_pack(cfg: DictConfig, info: RunInfo, device: torch.device) -> Path | None:
    """When this job is the first of a pack whose members are not trained yet: train them, and return this
    job's last.pt to finish from; else None (the job runs as usual, or finishes from the pack's last.pt)."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    earlier = (read_status(info.run_dir) or {}).get("previous") or {}
    resuming = bool(cfg.runtime.get("resume"))
    if earlier.get("status") == "diverged" and earlier.get("packed") and not resuming:
        said = str(earlier.get("error", "")).removeprefix("DivergenceError: ")
        raise DivergenceError(said, TrainState(step=int(earlier.get("step", 0))))  # in its pack: it ends so
    record = info.sweep_dir / MULTIRUN_FILE if info.sweep_dir else None
    jobs = grid(OmegaConf.load(record)) if record and record.is_file() else None
    me = int(hydra.job.num)
    if jobs is None or me >= len(jobs):
        log.info("launcher=packed: job %d trains alone: the sweep is not a grid", me)
        return None
    numbers = pack_of(jobs, me, int(cfg.runtime.pack))
    why = why_alone(cfg, hydra, len(numbers))
    if numbers[0] != me:
        if earlier.get("status") == PACKED:
            log.info("launcher=packed: job %d was trained in the pack of job %d", me, numbers[0])
        elif not why:  # its pack's first job stopped before training it (failed, killed): it trains alone
            if earlier.get("packed") and not resuming:
                clear(info.run_dir)
            log.info("launcher=packed: job %d trains alone: the pack of job %d did not train it", me, numbers[0])
        return None
    if why:
        log.info("launcher=packed: job %d trains alone: %s", me, why)
        return None
    dirs = {n: info.run_dir.parent / str(n) for n in numbers}  # the job number is the subdir (why_alone)
    todo = [n for n in numbers if n == me or (read_status(dirs[n]) or {}).get("status") not in DONE]
    if len(todo) < 2:
        log.info("launcher=packed: job %d trains alone: the other jobs of its pack are done", me)
        return None
    cfgs = [seed_of(cfg, jobs[n]) for n in todo]
    members = [member(c, jobs[n], dirs[n], device) for c, n in zip(cfgs, todo, strict=True)]
    log.info("launcher=packed: jobs %s train together (seeds %s)", " ".join(map(str, todo)),
             " ".join(str(c.seed) for c in cfgs))  # fmt: skip
    try:
        steps = fit(cfgs, members, device, resuming)
    except Interrupted as e:  # every living member holds its last.pt of this step: the sweep resumes the pack
        for m in members:
            if m.diverged is None:
                write_status(m.run_dir, "interrupted", m.overrides, e, step=e.step, packed=True)
        e.resume_command = f"cnnlab resume {info.run_dir.parent}"
        raise
    for m in members:
        if m.diverged is None:
            write_status(m.run_dir, PACKED, m.overrides, step=steps, pack=todo)
    if members[0].diverged:
        raise DivergenceError(members[0].diverged, TrainState(step=steps))
    return dirs[me] / CHECKPOINTS / "last.pt"


def seed_of(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A member's config: this job's but for its seed."""
    own = copy.deepcopy(cfg)
    with open_dict(own):
        own.seed = int(values(overrides).get("seed", cfg.seed))
    return own


def member(cfg: DictConfig, overrides: list[str], run_dir: Path, device: torch.device) -> Member:
    """A member in its job dir, with the record it is started with."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = run_dir / ".hydra" / "overrides.yaml"  # as Hydra writes it when the job starts: a sweep resumed
    if not started.is_file():  # before this job started knows it as this job of the grid (cnnlab.app.resume.action)
        started.parent.mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(list(overrides)), started)
    write_status(run_dir, "running", overrides, packed=True)
    return Member(run_dir, {"config": resolved, "provenance": provenance(device)}, tuple(overrides))


def fit(cfgs: list[DictConfig], members: list[Member], device: torch.device, resuming: bool) -> int:
    """Build each member as its lone run would (seeded model and splits), pack them, train them together
    (continuing a killed pack when the sweep is resumed); the steps trained."""
    resume = resumed(members) if resuming else None
    if resume is None:  # a fresh pack: nothing an earlier attempt left in the members' dirs
        for m in members:
            clear(m.run_dir)
    trainer = PackedTrainer(members, typed(cfgs[0].trainer), device, runtime=typed(cfgs[0].runtime))
    models, loaders = [], []
    for cfg, m in zip(cfgs, members, strict=True):
        seed_everything(int(cfg.seed))
        models.append(trainer.prepare(build(cfg.model, "model")))
        loaders.append(build_loaders(cfg.dataset, trainer.cfg, trainer.runtime, int(cfg.seed), device, m.run_dir))
    packed = pack(models, exact=trainer.runtime.pack_exact)
    packed = packed.to(memory_format=torch.channels_last) if trainer.runtime.channels_last else packed
    optimizer = build(cfgs[0].optimizer, "optimizer")(packed.parameters())
    test = PackedLoader([x.test for x in loaders]) if trainer.cfg.eval_test else None
    summary = trainer.fit(packed, optimizer, build(cfgs[0].scheduler, "scheduler"),
                          PackedLoader([x.train for x in loaders]), PackedLoader([x.val for x in loaders]),
                          cfgs[0].task.monitor, resume, test)  # fmt: skip
    return int(summary["steps"])


def resumed(members: list[Member]) -> list[dict[str, Any]] | None:
    """The members' last.pt to continue the pack from (a killed pack wrote them together), or None: start."""
    paths = [m.run_dir / CHECKPOINTS / "last.pt" for m in members]
    if not all(p.is_file() for p in paths):
        return None
    states = [checkpoint.load(p) for p in paths]
    steps = {s["train_state"]["step"] for s in states}
    if len(steps) != 1:  # killed between two members' writes: the pack starts again
        log.warning("launcher=packed: the members' last.pt are at steps %s: the pack starts again", sorted(steps))
        return None
    log.info("launcher=packed: the pack resumes from step %d", steps.pop())
    return states
