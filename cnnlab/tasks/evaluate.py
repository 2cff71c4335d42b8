"""task=evaluate: rebuild a model from its checkpoint (local or W&B) and test it."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from cnnlab.config.overrides import keys
from cnnlab.config.schema import RuntimeConfig, TrainerConfig
from cnnlab.records import figures
from cnnlab.records.results import class_table, confusion, per_class
from cnnlab.tasks.build import boundary, build_loaders, class_names, evaluated_dataset, restore_model
from cnnlab.tasks.context import Context, TaskResult
from cnnlab.tasks.publish import run_name, settings
from cnnlab.training.trainer import Trainer

log = logging.getLogger("cnnlab")
LAYOUT = ("channels_last", "eval_batch_size")  # runtime keys evaluate takes from training unless set here


def run(ctx: Context) -> TaskResult:
    cfg, split = ctx.cfg, ctx.cfg.task.split
    ignored = [key for key, _ in keys(ctx.info.overrides) if key == "model" or key.startswith("model.")]
    if ignored:
        log.warning("task=evaluate rebuilds the model from the checkpoint: ignored %s", ", ".join(ignored))
    model, saved, state = restore_model(cfg.checkpoint, ctx.device, ctx.run_dir)
    dataset = evaluated_dataset(saved, cfg, ctx.info)
    other = dataset.name != saved.dataset.name
    with boundary("trainer"):  # a checkpoint trained in fp16 on a GPU, evaluated on a CPU
        trainer = Trainer(
            trained_precision(ctx, saved), ctx.device, ctx.run_dir, ctx.logger, runtime=layout(ctx, saved)
        )
    with boundary("runtime.channels_last", trainer.runtime.channels_last, "runtime.channels_last=auto"):
        model = trainer.prepare(model)
    loader = getattr(build_loaders(dataset, trainer.cfg, trainer.runtime, int(saved.seed), ctx.device), split)
    result = trainer.evaluate(model, loader, predictions=True)
    matrix = confusion(loader.y.cpu(), result["preds"], int(saved.model.num_classes))  # with a background class
    scores = per_class(matrix)
    trained = state.get("metrics") or {}
    metrics = {
        f"{split}_acc": result["acc"],
        f"{split}_loss": result["loss"],
        "samples": loader.num_samples,
        **({f"trained_{split}_acc": trained[f"{split}_acc"]} if f"{split}_acc" in trained and not other else {}),
        **settings(cfg, saved),
        **scores,
    }
    trained_on = f" (trained on {saved.dataset.name})" if other else ""
    title = f"evaluate {run_name(saved.model, saved.seed)}{trained_on} on {dataset.name} ({split})"
    path = figures.confusion_matrix(
        matrix, ctx.run_dir / "figures" / "confusion_matrix.png", f"{title}: acc {result['acc']:.4f}",
        class_names=class_names(dataset),
    )  # fmt: skip
    log.debug("evaluated config:\n%s", OmegaConf.to_yaml(saved))
    return TaskResult(
        metrics,
        title,
        [f"{split}_acc", f"{split}_loss", f"trained_{split}_acc", "samples"],
        cfg.task.monitor or f"{split}_acc",
        figures={"figures/confusion_matrix": path},
        tables=[class_table(matrix, scores, class_names(dataset))],
    )


def trained_precision(ctx: Context, saved: DictConfig) -> TrainerConfig:
    """The precision of training (so test_acc reproduces), unless this command line sets it."""
    mine = ctx.info.on_command_line("trainer.precision")
    return TrainerConfig(precision=str(ctx.cfg.trainer.precision if mine else saved.trainer.precision))


def layout(ctx: Context, saved: DictConfig) -> RuntimeConfig:
    """Layout and eval batch of training, unless this command line sets them."""
    mine = {key: ctx.info.on_command_line(f"runtime.{key}") for key in LAYOUT}
    return RuntimeConfig(**{key: (ctx.cfg if mine[key] else saved).runtime[key] for key in LAYOUT})
