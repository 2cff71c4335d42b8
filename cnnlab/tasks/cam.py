"""task=cam (and task=localize): a class-map method of a trained ResNet, scored by the one canvas evaluation.

`task.method` picks the map (cnnlab's methods, baselines, pgc:<Name>), `task.layer` the layer by name. On canvases
(MNIST family) the class is a pooling of the fully-convolutional score maps, the maps become boxes and metrics
(cnnlab.vision.canvas_eval); with task.source=test, any dataset (CIFAR-10 included): overlays on test images.
Either source adds faithfulness (task.faithfulness: deletion/insertion AUC, Average Drop, Increase in Confidence)
and the model-randomization sanity check (task.sanity), for every method, baselines and pgc: included.
task=localize is the same with the fully-convolutional score maps and its own defaults (conf/task/localize.yaml).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from cnnlab.config.schema import CANVAS_METRICS
from cnnlab.data.canvas import Canvases
from cnnlab.data.files import read_images
from cnnlab.errors import ConfigError
from cnnlab.records import figures
from cnnlab.records.progress import tracked
from cnnlab.records.results import class_name
from cnnlab.tasks.build import (
    background_index,
    canvases_for,
    class_map_method,
    class_names,
    load_data,
    own_images,
    restore_model,
    trained_dataset,
)
from cnnlab.tasks.context import Context, TaskResult
from cnnlab.tasks.publish import run_name, settings
from cnnlab.vision.canvas_eval import BoxRule, Evaluation, batches, evaluate_canvases, evaluate_images, explain_files
from cnnlab.vision.faithfulness import KEYS as FAITHFUL_KEYS
from cnnlab.vision.sanity import cascade

log = logging.getLogger("cnnlab")
METRIC_KEYS = list(CANVAS_METRICS)
MAPS_FILE = "maps.pt"  # the first canvases' maps and boxes, for `cnnlab report`'s figure of every method
MAPS_SAVED = 8


def run(ctx: Context) -> TaskResult:
    cfg, task = ctx.cfg, ctx.cfg.task
    model, saved, _ = restore_model(cfg.checkpoint, ctx.device, ctx.run_dir)
    dataset = trained_dataset(saved, cfg, ctx.info)
    stats = (list(dataset.mean), list(dataset.std), ctx.device)
    black = next(batches(torch.zeros(1, len(dataset.mean), 1, 1, dtype=torch.uint8), *stats, 1))[0]  # (C, 1, 1)
    method = class_map_method(model, task, black)
    rule = box_rule(task, method.threshold, int(saved.dataset.num_classes), background_index(saved.dataset))
    shown = int(task.figure_count)
    if task.get("images"):
        return of_files(ctx, model, saved, method, rule, stats)
    on_canvas = task.get("source", "canvas") == "canvas"
    if on_canvas:
        canvases = canvases_for(task.canvas, dataset)
        images = canvases.images
        batched = tracked(batches(images, *stats, int(task.batch_size)), len(images), f"{task.method} on canvases")
        result = evaluate_canvases(method, canvases, batched, black, rule, shown)
    else:
        data = load_data(dataset)
        count = len(data.test_y) if task.count is None else min(int(task.count), len(data.test_y))
        images, labels, names = data.test_x[:count], data.test_y[:count], class_names(dataset)
        batched = tracked(batches(images, *stats, int(task.batch_size)), count, f"{task.method} on test images")
        result = evaluate_images(method, labels, batched, rule, shown, names, black)
    if task.get("sanity", False):  # the same method on copies of the model, re-initialized top-down
        sample = next(batches(images[: int(task.sanity_count)], *stats, int(task.sanity_count)))
        result.metrics.update(cascade(lambda m: class_map_method(m, task, black), model, sample, int(cfg.seed)))
    name = run_name(saved.model, saved.seed)
    where = f"{task.canvas.count} canvases" if on_canvas else f"{len(images)} {dataset.name} test images"
    path = figure(task, rule.threshold, result, images[:shown], canvases if on_canvas else None, dataset, ctx, name)
    save_maps(ctx.run_dir / MAPS_FILE, images, result, canvases if on_canvas else None)
    metrics = {**result.metrics, **settings(cfg, saved)}
    monitor = task.monitor or ("loc_acc" if on_canvas else "cls_acc")
    table = [*METRIC_KEYS] if on_canvas else ["cls_acc", "images"]
    table += [k for k in (*FAITHFUL_KEYS, "sanity_rank_corr", "sanity_pass") if k in metrics]
    at = f" at {method.layer}" if getattr(method, "layer", None) else ""
    title = f"{task.name}: {task.method}{at}, {name} on {where}"
    return TaskResult(metrics, title, table, monitor, figures={f"figures/{task.name}": path})


def box_rule(task: DictConfig, threshold: float, classes: int, background: int | None = None) -> BoxRule:
    """The task's class choice and box settings (`threshold`: the method's own, unless task.threshold is set);
    a class to explain must be one of the dataset's `classes`; `background`: the index of the model's background
    class, if it has one."""
    index = task.get("class_index")
    if index is not None and not (isinstance(index, int) and 0 <= index < classes):
        raise ConfigError("task.class_index", index, f"null (predicted) or 0..{classes - 1}", "task.class_index=null")
    keys = ("pooling", "window", "topk", "cell_center", "iou")
    faithful = int(task.faithfulness_count) if task.get("faithfulness", False) else 0
    steps = int(task.faithfulness_steps)
    return BoxRule(
        digits=int(task.canvas.digits),
        class_index=index,
        faithful=faithful,
        steps=steps,
        background=background,
        threshold=threshold if task.get("threshold") is None else float(task.threshold),
        **{k: task[k] for k in keys},
    )


def of_files(ctx: Context, model: Any, saved: DictConfig, method: Any, rule: BoxRule, stats: tuple) -> TaskResult:
    """task.images: maps of one's own image files, with each file's predicted class and its probability
    (predictions.csv, and `predictions` in metrics.json) and figures/cam.png."""
    task, names = ctx.cfg.task, class_names(saved.dataset)
    files = own_images(task)
    images, said = read_images(files, list(saved.dataset.shape))
    if said:
        log.info("task.images: %s", said)
    batched = tracked(batches(images, *stats, int(task.batch_size)), len(images), f"{task.method} on files")
    result, probabilities = explain_files(method, batched, rule)
    best, classes = probabilities.max(1)
    rows = [
        {"file": f.name, "class": int(c), "name": class_name(int(c), names), "probability": round(float(p), 4)}
        for f, c, p in zip(files, classes, best, strict=True)
    ]
    with open(ctx.run_dir / "predictions.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result.captions = [f"{r['file']}: {r['name']} {r['probability']:.2f}" for r in rows]
    shown = int(task.figure_count)
    name = run_name(saved.model, saved.seed)
    path = figures.box_grid(images[:shown], torch.stack(result.overlays[:shown]), None, result.found[:shown],
                            ctx.run_dir / "figures" / "cam.png", f"{task.method}, {name}, on {task.images}",
                            captions=result.captions[:shown], class_names=names)  # fmt: skip
    metrics = {**result.metrics, "predictions": rows, **settings(ctx.cfg, saved)}
    title = f"cam {task.method} {name} on {len(files)} images of {task.images}"
    return TaskResult(metrics, title, ["images"], "images", figures={"figures/cam": path})


def figure(
    task: DictConfig,
    threshold: float,
    result: Evaluation,
    images: torch.Tensor,
    truth: Canvases | None,
    dataset: DictConfig,
    ctx: Context,
    name: str,
) -> Path:
    """figures/<task>.png: the first images, the map of their class, true (green) and predicted (red) boxes."""
    words = f"box at {threshold} of max: green true, red predicted" if truth is not None else f"on {dataset.name} test"
    return figures.box_grid(
        images,
        torch.stack(result.overlays),
        truth,
        result.found,
        ctx.run_dir / "figures" / f"{task.name}.png",
        f"{task.method}, {name}, {words}",
        captions=result.captions or None,
        class_names=class_names(dataset),
    )


def save_maps(path: Path, images: torch.Tensor, result: Evaluation, truth: Canvases | None) -> None:
    """The first images (uint8), their maps (float16) and boxes: small, so a report can put methods side by side."""
    n = min(MAPS_SAVED, len(result.overlays))
    saved = {
        "images": images[:n].clone(),
        "overlays": torch.stack(result.overlays[:n]).half() if n else torch.zeros(0),
        "found": [(d.boxes, d.labels) for d in result.found[:n]],
        "truth": [(truth.boxes[i], truth.labels[i]) for i in range(n)] if truth is not None else None,
    }
    torch.save(saved, path)
