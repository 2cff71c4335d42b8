"""One run: check the config, seed, pick the device and threads, start the logger, run the task, publish.

`main_job` is the Hydra job: it records how the run ended in status.json (completed, failed, interrupted,
diverged, or rejected: stopped by an error before any work) and says it in one line. The logger is always
finished here, also when the task raises, so jobs of a multirun never share a run.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, read_write

from cnnlab import tasks
from cnnlab.app import packing, resume
from cnnlab.app.preflight import checkpoint_config
from cnnlab.config.checks import validate
from cnnlab.errors import Refused, UserError
from cnnlab.records.rundir import HISTORY
from cnnlab.records.status import read_status, write_status
from cnnlab.records.tracking import NullLogger
from cnnlab.tasks.build import boundary, build, seed_everything
from cnnlab.tasks.context import Context, RunInfo
from cnnlab.tasks.publish import publish, run_name, run_provenance
from cnnlab.training.hardware import gpu_lease, resolve_device, resolve_precision
from cnnlab.training.state import TrainState
from cnnlab.training.stop import Interrupted, stop
from cnnlab.training.trainer import DivergenceError

log = logging.getLogger("cnnlab")


def main_job(cfg: DictConfig) -> float:
    """Run and record how it ended in status.json. Errors a user can fix leave as exceptions (the CLI prints them
    in one line); a signal ends the process with its exit code after the checkpoint and the resume command."""
    from hydra.core.hydra_config import HydraConfig

    info = run_info(cfg)
    try:
        plan = resume.plan_job(HydraConfig.get(), cfg.runtime.get("resume"), info.run_dir) if info.multirun else None
    except UserError as e:  # its job dir was started as another job of the grid: this job fails, the sweep goes on
        write_status(info.run_dir, "failed", info.overrides, e)
        raise
    if plan is not None and plan.action == resume.SKIP:  # a completed job of a resumed sweep: left as it is
        print(f"cnnlab: skipped: completed ({info.run_dir})", file=sys.stderr)
        return resume.recorded(info.run_dir, cfg.task.get("monitor"))
    if plan is not None and plan.action is not None:
        with read_write(cfg.runtime):
            cfg.runtime.resume = str(plan.checkpoint) if plan.checkpoint else None
        info = replace(info, resumed=plan.checkpoint is not None)
    previous = read_status(info.run_dir)  # a resumed run's record: kept, in case the resume is refused
    kept = {"previous": previous} if previous and previous.get("status") != "running" else {}
    fields = {"action": plan and plan.action, "job_id": plan and plan.job_id}
    write_status(info.run_dir, "running", info.overrides, **{k: v for k, v in fields.items() if v}, **kept)
    try:
        if info.multirun:  # the sweep's preflight checked each swept value; this is the job's combination
            validate(cfg)
        value = execute(cfg, info)  # a single run: the Preflight callback validated it
    except Interrupted as e:  # SIGTERM or Ctrl-C: a checkpoint is written; say how to continue
        write_status(info.run_dir, "interrupted", info.overrides, e, step=e.step, resume_command=e.resume_command)
        print(f"cnnlab: {e}", file=sys.stderr)
        stop.hand_over(e)  # submitit's pre-emption signal: submitit requeues the job, which resumes from last.pt
        if e.resume_command:
            print(f"cnnlab: resume with: {e.resume_command}", file=sys.stderr)
        sys.exit(e.exit_code)
    except DivergenceError as e:  # one line from the CLI (exit 2); a sweep lists it and goes on
        write_status(info.run_dir, "diverged", info.overrides, e, step=e.state.step)
        raise e if info.multirun else Refused(e) from None
    except UserError as e:  # one line from the CLI (exit 2); Python gets the exception
        record_refusal(info, e, previous)
        raise e if info.multirun else Refused(e) from None
    except Exception as e:
        write_status(info.run_dir, "failed", info.overrides, e)
        raise
    write_status(info.run_dir, "completed", info.overrides)
    return value


def record_refusal(info: RunInfo, error: UserError, previous: dict | None) -> None:
    """A UserError's record: a refused resume keeps the original run's; else failed (training had begun) or
    rejected (nothing ran: the report skips the dir)."""
    if info.multirun and not info.resumed:  # the sweep's summary lists it with the jobs that failed
        write_status(info.run_dir, "failed", info.overrides, error)
    elif info.resumed and previous and previous.get("status") != "running":
        restored = dict(previous)
        write_status(info.run_dir, restored.pop("status"), restored.pop("overrides", []), **restored)
    elif (info.run_dir / HISTORY).exists():
        write_status(info.run_dir, "failed", info.overrides, error)
    else:
        write_status(info.run_dir, "rejected", info.overrides, error)


def run_info(cfg: DictConfig) -> RunInfo:
    """What Hydra knows about this run: read here, once."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    n_jobs = hc.launcher.get("n_jobs") if multirun else None
    cpus = hc.launcher.get("cpus_per_task") if multirun else None
    return RunInfo(
        run_dir=Path(hc.runtime.output_dir).absolute(),  # whole paths in what the run prints
        overrides=tuple(hc.overrides.task),
        multirun=multirun,
        sweep_dir=Path(hc.sweep.dir) if multirun else None,
        parallel_jobs=cores() if n_jobs is not None and n_jobs < 0 else int(n_jobs or 1),
        cpus_per_task=int(cpus) if cpus else None,
        resumed=bool(cfg.runtime.get("resume")),
    )


def run(cfg: DictConfig, info: RunInfo | None = None) -> float:
    """Validate and run a composed config (the tests' way in, without Hydra's callbacks)."""
    validate(cfg)
    return execute(cfg, info or run_info(cfg))


def execute(cfg: DictConfig, info: RunInfo) -> float:
    with job_device(str(cfg.runtime.device), info) as device:
        return _run(cfg, info, device)


def _run(cfg: DictConfig, info: RunInfo, device: torch.device) -> float:
    with boundary("trainer"):
        precision, why = resolve_precision(str(cfg.trainer.precision), device)
    cfg.trainer.precision = precision  # what ran: the config in checkpoints, W&B and metrics says bf16 or 32
    torch.set_num_threads(thread_count(cfg.runtime.threads, info))
    threads = torch.get_num_threads()
    log.info("device %s, precision %s (%s), %d torch thread%s", device, precision, why, threads,
             "" if threads == 1 else "s")  # fmt: skip
    seed_everything(int(cfg.seed))
    state = None
    if info.multirun and int(cfg.runtime.pack) > 1:  # launcher=packed
        with stop.handling():  # SIGTERM or Ctrl-C between two steps of the pack: its members' last.pt
            finish = packing.train_pack(cfg, info, device)
        if finish is not None:  # this job's pack trained it: it finishes from its last.pt
            with read_write(cfg.runtime):
                cfg.runtime.resume = str(finish)
    if cfg.runtime.resume:
        info, state = load_resume(cfg, info)
    print_config(cfg)
    logger: NullLogger = build(cfg.logger, "logger")
    task = tasks.get(cfg.task.name)
    ctx = Context(cfg, info, device, logger, resume=state)
    resume_id = state.get("wandb_id") if state else None
    name = run_name(cfg.model, cfg.seed)
    config = {**ctx.resolved(), "provenance": run_provenance(ctx)}  # W&B shows which code ran
    logger.start(config, info.run_dir, name, group=info.sweep_group(), resume_id=resume_id, tags=info.tags())
    exit_code = 1
    try:
        with stop.handling():
            result = task(ctx)
            value = publish(result, ctx)
        if result.error is not None:
            raise result.error
        exit_code = 0
        return value
    except Interrupted as e:
        exit_code = e.exit_code
        logger.summary({"status": "interrupted", "interrupted_by": e.signal_name, "interrupted_at_step": e.step})
        if e.checkpoint:  # runtime.checkpoint=false leaves nothing to resume from
            e.resume_command = resume.resume_command(info.overrides, info.run_dir)
        raise
    finally:
        logger.finish(exit_code)


def load_resume(cfg: DictConfig, info: RunInfo) -> tuple[RunInfo, dict[str, Any]]:
    """The run and checkpoint state runtime.resume continues (the Preflight callback or the job's plan chose it)."""
    path = resume.find_checkpoint(str(cfg.runtime.resume), Path(cfg.paths.output_dir), info.overrides)
    state = resume.load(path, cfg)
    log.info(
        "resuming %s from step %d", resume.run_dir_of(path), TrainState.from_checkpoint(state, torch.device("cpu")).step
    )
    return replace(info, run_dir=resume.run_dir_of(path), resumed=True), state


@contextmanager
def job_device(spec: str, info: RunInfo) -> Iterator[torch.device]:
    """runtime.device; `auto` in a sweep of parallel local jobs (joblib) on several GPUs leases the least-used
    GPU for the job's lifetime. A SLURM job sees only the GPUs it was given, as cuda:0..."""
    gpus = torch.cuda.device_count() if spec == "auto" and torch.cuda.is_available() else 0
    if gpus < 2 or info.parallel_jobs < 2 or info.sweep_dir is None:
        with boundary("runtime"):
            device = resolve_device(spec)
        yield device
        return
    with gpu_lease(info.sweep_dir, gpus, info.parallel_jobs) as gpu:
        yield resolve_device(spec, gpu)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_count(threads: int | None, info: RunInfo) -> int:
    """runtime.threads, or the cores divided by the jobs running in parallel (joblib launcher)."""
    if threads is not None:
        return int(threads)
    if info.cpus_per_task:  # submitit: the cores each job was given
        return info.cpus_per_task
    return max(1, cores() // max(1, info.parallel_jobs))


def print_config(cfg: DictConfig) -> None:
    """One line of what runs (the group choices and the model's shape) or, with runtime.print_config, the tree."""
    from rich.console import Console

    console = Console(stderr=True)
    if not cfg.runtime.get("print_config"):
        console.print(f"cnnlab: {choices_line(cfg)}", highlight=False, markup=False, soft_wrap=True)
        return
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    console.print(tree)


def model_text(model: DictConfig, option: str | None = None) -> str:
    """mlp, or resnet(depth=20, width=16) and `, plain` for the plain twin."""
    name = option or ("resnet" if "depth" in model else "mlp")
    if "depth" not in model:
        return name
    plain = "" if model.residual else ", plain"
    return f"{name}(depth={model.depth}, width={model.width}{plain})"


def choices_line(cfg: DictConfig) -> str:
    """e.g. `task=classify model=resnet(depth=20, width=16, residual) dataset=mnist optimizer=sgd(lr=0.1) ...`;
    a task that restores a checkpoint names it (its model and data are the checkpoint's)."""
    from hydra.core.hydra_config import HydraConfig

    chosen = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    task = cfg.task.name
    if task != "classify":
        method = f" method={cfg.task.method}" if "method" in cfg.task else ""
        saved = None if str(cfg.checkpoint).startswith("wandb:") else checkpoint_config(cfg)
        trained = f" ({model_text(saved.model)} on {saved.dataset.name})" if saved is not None else ""
        return f"task={task}{method} checkpoint={cfg.checkpoint}{trained}"
    model = model_text(cfg.model, chosen.get("model", "?"))
    steps = f"max_steps={cfg.trainer.max_steps}" if cfg.trainer.max_steps else f"epochs={cfg.trainer.epochs}"
    optimizer, scheduler = chosen.get("optimizer", "?"), chosen.get("scheduler", "?")
    parts = [f"task={task}", f"model={model}", f"dataset={cfg.dataset.name}"]
    parts += [f"optimizer={optimizer}(lr={cfg.optimizer.lr})", f"scheduler={scheduler}", f"trainer.{steps}"]
    parts.append(f"seed={cfg.seed}")
    extra = [f"{group}={chosen[group]}" for group in ("experiment", "debug") if chosen.get(group)]
    return " ".join(parts + extra)
