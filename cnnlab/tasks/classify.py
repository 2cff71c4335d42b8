"""task=classify: train on the train split, pick the best val checkpoint, test it."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab import figures
from cnnlab.data.build import build_loaders
from cnnlab.results import confusion, print_table, write_json
from cnnlab.run import Context, config_dict, run_name
from cnnlab.training import checkpoint
from cnnlab.training.trainer import DivergenceError, Trainer, TrainerConfig

log = logging.getLogger("cnnlab")
SUMMARY_KEYS = [
    "test_acc",
    "test_loss",
    "val_acc",
    "best_val_acc",
    "params",
    "epochs",
    "steps",
    "seconds",
    "train_img_per_s",
]


def run(ctx: Context) -> float:
    cfg, run_dir = ctx.cfg, ctx.run_dir
    tic = time.perf_counter()
    model = instantiate(cfg.model)  # a bad model config fails here, before any data is read
    trainer = Trainer(
        TrainerConfig.from_config(cfg.trainer), ctx.device, run_dir, ctx.logger, state={"config": config_dict(cfg)}
    )
    model = trainer.prepare(model)
    loaders = build_loaders(cfg.dataset, trainer.cfg, cfg.seed, ctx.device, run_dir)
    params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s: %s parameters, %d train / %d val / %d test images",
        run_name(cfg),
        f"{params:,}",
        loaders.train.num_samples,
        loaders.val.num_samples,
        loaders.test.num_samples,
    )
    ctx.logger.summary({"params": params})

    optimizer = instantiate(cfg.optimizer)(model.parameters())
    if ctx.resume is not None:
        checkpoint.check_fits(model, ctx.resume["model"], run_dir / "checkpoints" / "last.pt")
    schedule = instantiate(cfg.scheduler)
    try:
        curves = loaders.test if trainer.cfg.eval_test else None  # test-error curves only
        fit = trainer.fit(model, optimizer, schedule, loaders.train, loaders.val, cfg.task.monitor, ctx.resume, curves)
    except DivergenceError as e:  # a result too: record it, so a sweep shows which settings diverged
        diverged = {
            "status": "diverged",
            "error": str(e),
            "steps": e.progress["step"],
            "best_step": e.progress["best_step"],
            f"best_{cfg.task.monitor}": e.progress["best"],
            "params": params,
            "optimizer.lr": cfg.optimizer.lr,
            **describe(cfg),
        }
        write_json(run_dir / "metrics.json", diverged)
        ctx.logger.summary(diverged)
        raise
    val = trainer.evaluate(model, loaders.val)
    test = trainer.evaluate(model, loaders.test, predictions=True)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    metrics = {
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "val_acc": val["acc"],
        "val_loss": val["loss"],
        "best_val_acc": max(r["val_acc"] for r in history),
        "params": params,
        "epochs": fit["epochs"],
        "steps": fit["steps"],
        "best_step": fit["best_step"],
        "seconds": time.perf_counter() - tic,
        "train_seconds": fit["train_seconds"],
        "train_img_per_s": fit["train_img_per_s"],
        "precision": trainer.cfg.precision,
        "channels_last": trainer.cfg.channels_last,
        "device": str(ctx.device),
        **describe(cfg),
    }
    write_json(run_dir / "metrics.json", metrics)
    if cfg.trainer.checkpoint:  # best.pt carries the final metrics, so evaluate can compare
        best = checkpoint.load(run_dir / "checkpoints" / "best.pt")
        checkpoint.save({**best, "metrics": metrics}, run_dir / "checkpoints" / "best.pt")
    ctx.logger.summary(metrics)
    if cfg.trainer.figures:
        matrix = confusion(loaders.test.y.cpu(), test["preds"], int(cfg.dataset.num_classes))
        paths = {
            "figures/training_curves": figures.training_curves(history, run_dir / "figures" / "training_curves.png"),
            "figures/confusion_matrix": figures.confusion_matrix(
                matrix, run_dir / "figures" / "confusion_matrix.png", f"test, acc {test['acc']:.4f}"
            ),
        }
        ctx.logger.images(paths)
    if cfg.trainer.checkpoint:
        ctx.logger.checkpoint(run_dir / "checkpoints" / "best.pt", ["best"])
        ctx.logger.checkpoint(run_dir / "checkpoints" / "last.pt", ["latest"])
    print_table(f"{run_name(cfg)} on {cfg.dataset.name}  ({run_dir})", metrics, SUMMARY_KEYS)
    return float(metrics[cfg.task.monitor] if cfg.task.monitor in metrics else fit[f"best_{cfg.task.monitor}"])


def describe(cfg: DictConfig) -> dict[str, Any]:
    """The keys that tell runs of a sweep apart, flat as in metrics.json."""
    return {
        "run_name": run_name(cfg),
        "dataset": cfg.dataset.name,
        **{f"model.{k}": v for k, v in config_dict(cfg)["model"].items() if k not in ("_target_", "in_shape")},
        "model": str(cfg.model._target_).rsplit(".", 1)[-1].lower(),
        "seed": cfg.seed,
    }
