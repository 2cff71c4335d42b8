"""task=classify: train on the train split, pick the best val checkpoint, test it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from cnnlab.records import checkpoint, figures
from cnnlab.records.results import confusion
from cnnlab.records.rundir import CHECKPOINTS, TRAIN_LOG, read_rows
from cnnlab.tasks.build import boundary, build, build_loaders, class_names, history, typed
from cnnlab.tasks.context import Context, TaskResult
from cnnlab.tasks.publish import run_name, run_provenance, settings
from cnnlab.training.trainer import DivergenceError, Trainer

log = logging.getLogger("cnnlab")
TABLE = ["test_acc", "test_loss", "val_acc", "last_val_acc", "params", "epochs", "steps", "best_step", "seconds"]
TABLE += ["train_img_per_s"]


def run(ctx: Context) -> TaskResult:
    cfg, run_dir = ctx.cfg, ctx.run_dir
    tic = time.perf_counter()
    model = build(cfg.model, "model")  # a bad model config fails here, before any data is read
    extra = {"config": ctx.resolved(), "provenance": run_provenance(ctx)}  # provenance: resume never compares it
    trainer = Trainer(typed(cfg.trainer), ctx.device, run_dir, ctx.logger, extra, typed(cfg.runtime))
    with boundary("runtime.channels_last", cfg.runtime.channels_last, "runtime.channels_last=auto"):
        model = trainer.prepare(model)
    loaders = build_loaders(cfg.dataset, trainer.cfg, trainer.runtime, cfg.seed, ctx.device, run_dir)
    params = sum(p.numel() for p in model.parameters())
    name = run_name(cfg.model, cfg.seed)
    log.info("%s: %s parameters, %d train / %d val / %d test images", name, f"{params:,}",
             loaders.train.num_samples, loaders.val.num_samples, loaders.test.num_samples)  # fmt: skip
    ctx.logger.summary({"params": params})
    optimizer = build(cfg.optimizer, "optimizer")(model.parameters())
    if ctx.resume is not None:
        checkpoint.check_fits(model, ctx.resume["model"], run_dir / CHECKPOINTS / "last.pt")
    monitor = cfg.task.monitor
    packed = (ctx.resume or {}).get("packed")  # a pack of seeds trained it (launcher=packed), up to this step:
    if packed:  # its W&B run gets what the pack logged and evaluated for it, as a lone run's Trainer logs them
        replay_pack(ctx, run_dir, ctx.resume["train_state"]["step"])
    try:
        curves = loaders.test if trainer.cfg.eval_test else None  # test-error curves only
        fit = trainer.fit(model, optimizer, build(cfg.scheduler, "scheduler"), loaders.train, loaders.val,
                          monitor, ctx.resume, curves)  # fmt: skip
    except DivergenceError as e:  # a result too: recorded, so a sweep shows which settings diverged
        state = e.state
        metrics = {"status": "diverged", "error": str(e), "steps": state.step, "best_step": state.best_step,
                   f"best_{monitor}": state.best, "params": params, **settings(cfg)}  # fmt: skip
        return TaskResult(metrics, f"{name} diverged", ["steps", "best_step"], monitor, error=e)
    best = trainer.evaluate(model, loaders.val)  # the model now holds best.pt's weights
    test = trainer.evaluate(model, loaders.test, predictions=True)
    records = history(run_dir)
    metrics = {
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "val_acc": best["acc"],  # of best.pt, the checkpoint the test metrics are of
        "val_loss": best["loss"],
        "last_val_acc": records[-1]["val_acc"],  # of the final evaluation
        "best_val_acc": max(r["val_acc"] for r in records),
        "params": params,
        "epochs": fit["epochs"],
        "steps": fit["steps"],
        "best_step": fit["best_step"],
        "seconds": time.perf_counter() - tic,
        "train_seconds": fit["train_seconds"],
        "train_img_per_s": fit["train_img_per_s"],  # steady state: under compile the first step is left out
        **{k: fit[k] for k in ("compile_seconds", "compiled_graphs") if k in fit},
        "precision": trainer.cfg.precision,
        "channels_last": trainer.runtime.channels_last,
        "device": str(ctx.device),
        **({"packed": packed} if packed else {}),  # train_seconds: the pack's; train_img_per_s: per member
        **settings(cfg),
    }
    result = TaskResult(metrics, f"{name} on {cfg.dataset.name}", TABLE, monitor)
    if trainer.runtime.checkpoint:  # best.pt carries the final metrics, so evaluate can compare
        best_pt = run_dir / CHECKPOINTS / "best.pt"
        checkpoint.save({**checkpoint.load(best_pt), "metrics": metrics}, best_pt)
        result.artifacts = [(best_pt, ["best"]), (run_dir / CHECKPOINTS / "last.pt", ["latest"])]
    if trainer.runtime.figures:
        result.figures = draw(ctx, records, test["preds"], loaders.test.y.cpu(), f"{name} on {cfg.dataset.name}")
    return result


def replay_pack(ctx: Context, run_dir: Path, done: int) -> None:
    """A packed member's logger gets, in step order, the train/loss and lr the pack logged for it and its
    evaluations up to step `done`: the series a lone run's Trainer logs as it goes."""
    rows = [(r["step"], 0, {k: v for k, v in r.items() if k != "step"}) for r in read_rows(run_dir / TRAIN_LOG)]
    rows += [(r["step"], 1, {f"eval/{k}": v for k, v in r.items() if k != "step"}) for r in history(run_dir)]
    for step, _, metrics in sorted(rows, key=lambda r: r[:2]):  # at one step: the train log, then the evaluation
        if step <= done:
            ctx.logger.log(metrics, step=step)


def draw(ctx: Context, records: list[dict[str, Any]], preds: Any, targets: Any, title: str) -> dict[str, Any]:
    matrix = confusion(targets, preds, int(ctx.cfg.model.num_classes))  # the background class too, if any
    acc = float(matrix.diag().sum() / matrix.sum())
    folder = ctx.run_dir / "figures"
    names = class_names(ctx.cfg.dataset)
    return {
        "figures/training_curves": figures.training_curves(records, folder / "training_curves.png", title),
        "figures/confusion_matrix": figures.confusion_matrix(
            matrix, folder / "confusion_matrix.png", f"{title}: test, acc {acc:.4f}", class_names=names
        ),
    }
