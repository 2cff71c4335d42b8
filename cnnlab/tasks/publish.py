"""One ending for every task: metrics.json, the W&B summary, figures, artifacts and the table, then the run dir."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from cnnlab.records.provenance import provenance
from cnnlab.records.results import flat, print_table, write_json
from cnnlab.records.rundir import METRICS
from cnnlab.tasks.context import Context, TaskResult


def publish(result: TaskResult, ctx: Context) -> float:
    """Write and show `result`; return its monitored value (what a Hydra sweeper optimizes)."""
    result.metrics = {"status": "completed", **result.metrics}  # a diverged result says so itself
    result.metrics["provenance"] = run_provenance(ctx)
    write_json(ctx.run_dir / METRICS, result.metrics)
    ctx.logger.summary(result.metrics)
    if result.figures:
        ctx.logger.images(result.figures)
    for path, aliases in result.artifacts:
        ctx.logger.checkpoint(path, aliases)
    console = Console(stderr=True, soft_wrap=True)  # soft_wrap: paths are never broken mid-name
    for table in result.tables:
        console.print(table)
    print_table(result.title, result.metrics, result.table)
    for path in result.figures.values():
        console.print(f"figure: {path}", highlight=False, markup=False)
    console.print(f"run dir: {ctx.run_dir}", highlight=False, markup=False)
    value = result.metrics.get(result.monitor)
    return float(value) if isinstance(value, (int, float)) else float("nan")


def run_provenance(ctx: Context) -> dict[str, Any]:
    """The code, versions, host and device of this run; a resumed run keeps the code it began with if it differs."""
    return provenance(ctx.device, (ctx.resume or {}).get("provenance"))


def model_kind(model: DictConfig) -> str:
    return str(model._target_).rsplit(".", 1)[-1].lower()


def run_name(model: DictConfig, seed: int) -> str:
    """A readable name from the config, e.g. resnet56-plain-s1 or mlp-s0."""
    if "depth" in model:
        return f"resnet{model.depth}-{'res' if model.residual else 'plain'}-s{seed}"
    return f"{model_kind(model)}-s{seed}"


def settings(cfg: DictConfig, trained: DictConfig | None = None) -> dict[str, Any]:
    """The run's settings, flat, beside its metrics: the same keys for every task.

    `trained` is the config stored in a checkpoint (evaluate, localize, cam): the model and data are its own.
    """
    source = trained if trained is not None else cfg
    model = OmegaConf.to_container(source.model, resolve=True)
    out: dict[str, Any] = {
        "task": cfg.task.name,
        "run_name": run_name(source.model, source.seed),
        "dataset": source.dataset.name,
        "model": model_kind(source.model),
        **{f"model.{k}": v for k, v in model.items() if k not in ("_target_", "in_shape")},  # type: ignore[union-attr]
        "seed": cfg.seed,
    }
    if trained is None:
        out["optimizer.lr"] = cfg.optimizer.lr
    else:
        task = OmegaConf.to_container(cfg.task, resolve=True)
        out |= {"checkpoint": str(cfg.checkpoint), **flat(task, "task.")}  # type: ignore[arg-type]
    return out
