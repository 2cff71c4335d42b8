"""task=evaluate: rebuild a model from its checkpoint (local or W&B) and test it."""

from __future__ import annotations

import logging

from omegaconf import OmegaConf

from cnnlab import figures
from cnnlab.data.build import build_loaders, trained_dataset
from cnnlab.errors import ConfigError
from cnnlab.results import class_table, confusion, per_class, print_table, write_json
from cnnlab.run import Context, on_command_line
from cnnlab.training.checkpoint import restore_model
from cnnlab.training.trainer import Trainer, TrainerConfig

log = logging.getLogger("cnnlab")


def run(ctx: Context) -> float:
    cfg = ctx.cfg
    if cfg.task.split not in ("test", "val"):
        raise ConfigError("task.split", cfg.task.split, "test or val", "task.split=test")
    model, saved, state = restore_model(cfg.checkpoint, ctx.device, ctx.run_dir)
    dataset = trained_dataset(saved, cfg)
    # the precision and layout of training (so test_acc reproduces), unless this command line says otherwise
    mine = {
        k: cfg.trainer[k] for k in ("precision", "channels_last", "eval_batch_size") if on_command_line(f"trainer.{k}")
    }
    trainer_cfg = TrainerConfig.from_config(OmegaConf.merge(saved.trainer, mine))
    trainer = Trainer(trainer_cfg, ctx.device, ctx.run_dir, ctx.logger)
    model = trainer.prepare(model)
    loader = getattr(build_loaders(dataset, trainer.cfg, saved.seed, ctx.device), cfg.task.split)
    result = trainer.evaluate(model, loader, predictions=True)
    matrix = confusion(loader.y.cpu(), result["preds"], int(dataset.num_classes))
    scores = per_class(matrix)
    split = cfg.task.split
    trained = state.get("metrics") or {}
    metrics = {
        f"{split}_acc": result["acc"],
        f"{split}_loss": result["loss"],
        "checkpoint": str(cfg.checkpoint),
        "dataset": dataset.name,
        "samples": loader.num_samples,
        **({f"trained_{split}_acc": trained[f"{split}_acc"]} if f"{split}_acc" in trained else {}),
        **scores,
    }
    write_json(ctx.run_dir / "metrics.json", metrics)
    ctx.logger.summary(metrics)
    path = figures.confusion_matrix(
        matrix, ctx.run_dir / "figures" / "confusion_matrix.png", f"{split}, acc {result['acc']:.4f}"
    )
    ctx.logger.images({"figures/confusion_matrix": path})
    class_table(matrix, scores)
    print_table(
        f"evaluate {cfg.checkpoint}",
        metrics,
        [f"{split}_acc", f"{split}_loss", f"trained_{split}_acc", "samples"],
    )
    log.debug("evaluated config:\n%s", OmegaConf.to_yaml(saved))
    return float(result["acc"])
