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
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.app.resume import MULTIRUN_FILE, PACKED, comparable, grid
from cnnlab.config.overrides import keys, values
from cnnlab.models.packed import pack, unpackable
from cnnlab.records import checkpoint
from cnnlab.records.provenance import provenance
from cnnlab.records.status import read_status, write_status
from cnnlab.tasks.build import build, build_loaders, typed
from cnnlab.tasks.context import RunInfo
from cnnlab.training.packed import Member, PackedLoader, PackedTrainer
from cnnlab.training.state import TrainState
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
    return tuple(line for key, line in keys(comparable(job)) if key != "seed")


def why_alone(cfg: DictConfig, hydra: DictConfig, members: int) -> str | None:
    """Why this job trains alone under launcher=packed, or None."""
    if members < 2:
        return "no other job of the sweep differs from it only in seed"
    if cfg.task.name != "classify":
        return f"task={cfg.task.name} trains nothing"
    if str(hydra.sweep.subdir) != str(hydra.job.num):
        return "hydra.sweep.subdir is not the job number, so its pack's job dirs are not known"
    if cfg.runtime.compile:
        return "runtime.compile is on (packs run eagerly)"
    if str(cfg.trainer.precision) == "16":
        return "trainer.precision=16 scales every member's loss by one factor (bf16 or 32 pack)"
    return unpackable(build(cfg.model, "model"))


def train_pack(cfg: DictConfig, info: RunInfo, device: torch.device) -> Path | None:
    """When this job is the first of a pack whose members are not trained yet: train them, and return this
    job's last.pt to finish from; else None (the job runs as usual)."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    earlier = (read_status(info.run_dir) or {}).get("previous") or {}
    if earlier.get("status") == "diverged" and earlier.get("packed") and not cfg.runtime.get("resume"):
        said = str(earlier.get("error", "")).removeprefix("DivergenceError: ")
        raise DivergenceError(said, TrainState(step=int(earlier.get("step", 0))))  # in its pack: it ends so
    record = info.sweep_dir / MULTIRUN_FILE if info.sweep_dir else None
    jobs = grid(OmegaConf.load(record)) if record and record.is_file() else None
    me = int(hydra.job.num)
    if jobs is None or me >= len(jobs):
        log.info("launcher=packed: job %d trains alone: the sweep is not a grid", me)
        return None
    numbers = pack_of(jobs, me, int(cfg.runtime.pack))
    if numbers[0] != me:
        return None  # the first job of its pack trained it, or it trains alone
    why = why_alone(cfg, hydra, len(numbers))
    if why:
        log.info("launcher=packed: job %d trains alone: %s", me, why)
        return None
    dirs = [info.sweep_dir / str(n) for n in numbers]
    if all((read_status(d) or {}).get("status") in DONE for d in dirs[1:]):
        return dirs[0] / "checkpoints" / "last.pt" if (dirs[0] / "checkpoints" / "last.pt").is_file() else None
    cfgs = [seed_of(cfg, jobs[n]) for n in numbers]
    members = [member(c, jobs[n], d, device) for c, n, d in zip(cfgs, numbers, dirs, strict=True)]
    log.info("launcher=packed: jobs %s train together (seeds %s)", " ".join(map(str, numbers)),
             " ".join(str(c.seed) for c in cfgs))  # fmt: skip
    fit(cfgs, members, device)
    for m in members:
        if m.diverged is None:
            write_status(m.run_dir, PACKED, m.overrides, step=(m.best_step or 0), pack=numbers)
    return None if members[0].diverged else dirs[0] / "checkpoints" / "last.pt"


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
    previous = read_status(run_dir)
    if (previous or {}).get("status") not in ("running", "interrupted"):  # fresh: nothing an attempt left
        for name in ("history.jsonl", "metrics.json"):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    started = run_dir / ".hydra" / "overrides.yaml"  # as Hydra writes it when the job starts: a sweep resumed
    if not started.is_file():  # before this job started knows it as this job of the grid (cnnlab.app.resume.action)
        started.parent.mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(list(overrides)), started)
    write_status(run_dir, "running", overrides, packed=True)
    return Member(run_dir, {"config": resolved, "provenance": provenance(device)}, tuple(overrides))


def seeded(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(cfgs: list[DictConfig], members: list[Member], device: torch.device) -> None:
    """Build each member as its lone run would (seeded model and splits), pack them, train them together."""
    trainer = PackedTrainer(members, typed(cfgs[0].trainer), device, runtime=typed(cfgs[0].runtime))
    models, loaders = [], []
    for cfg, m in zip(cfgs, members, strict=True):
        seeded(int(cfg.seed))
        models.append(trainer.prepare(build(cfg.model, "model")))
        loaders.append(build_loaders(cfg.dataset, trainer.cfg, trainer.runtime, int(cfg.seed), device, m.run_dir))
    packed = pack(models)
    packed = packed.to(memory_format=torch.channels_last) if trainer.runtime.channels_last else packed
    optimizer = build(cfgs[0].optimizer, "optimizer")(packed.parameters())
    test = PackedLoader([x.test for x in loaders]) if trainer.cfg.eval_test else None
    trainer.fit(packed, optimizer, build(cfgs[0].scheduler, "scheduler"), PackedLoader([x.train for x in loaders]),
                PackedLoader([x.val for x in loaders]), cfgs[0].task.monitor, resumed(members), test)  # fmt: skip


def resumed(members: list[Member]) -> list[dict[str, Any]] | None:
    """The members' last.pt to continue the pack from (a killed pack wrote them together), or None: start."""
    paths = [m.run_dir / "checkpoints" / "last.pt" for m in members]
    if not all(p.is_file() for p in paths):
        return None
    states = [checkpoint.load(p) for p in paths]
    steps = {s["train_state"]["step"] for s in states}
    if len(steps) != 1:  # killed between two members' writes: the pack starts again
        log.warning("launcher=packed: the members' last.pt are at steps %s: the pack starts again", sorted(steps))
        return None
    log.info("launcher=packed: the pack resumes from step %d", steps.pop())
    return states
