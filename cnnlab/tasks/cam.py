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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.table import Table

from cnnlab.config.schema import CANVAS_METRICS
from cnnlab.data.canvas import Canvases
from cnnlab.data.files import read_images
from cnnlab.errors import ConfigError
from cnnlab.records import figures
from cnnlab.records.progress import tracked
from cnnlab.records.results import class_name, with_interval
from cnnlab.tasks.build import (
    background_index,
    canvas_kinds,
    canvases_for,
    class_map_method,
    class_names,
    load_data,
    one_kind,
    own_images,
    restore_model,
    trained_dataset,
)
from cnnlab.tasks.context import Context, TaskResult
from cnnlab.tasks.publish import run_name, settings
from cnnlab.vision.canvas_eval import BoxRule, Evaluation, batches, evaluate_canvases, evaluate_images, explain_files
from cnnlab.vision.faithfulness import KEYS as FAITHFUL_KEYS
from cnnlab.vision.sanity import cascade
from cnnlab.vision.scores import localization, summarize

log = logging.getLogger("cnnlab")
METRIC_KEYS = list(CANVAS_METRICS)
KIND_COLUMNS = ("loc_acc", "pointing_acc", "cls_acc", "deletion_auc", "insertion_auc")
UNITS_FILE = "units.csv"  # per canvas: what the metrics sum, for the report's paired comparisons
MAPS_SAVED = 8


def run(ctx: Context) -> TaskResult:
    cfg, task = ctx.cfg, ctx.cfg.task
    model, saved, _ = restore_model(cfg.checkpoint, ctx.device, ctx.run_dir)
    dataset = trained_dataset(saved, cfg, ctx.info)
    stats = (list(dataset.mean), list(dataset.std), ctx.device)
    black = next(batches(torch.zeros(1, len(dataset.mean), 1, 1, dtype=torch.uint8), *stats, 1))[0]  # (C, 1, 1)
    method = class_map_method(model, task, black)
    classes, side = int(saved.dataset.num_classes), saved.dataset.shape[1:]
    rule = box_rule(task, method.threshold, classes, background_index(saved.dataset), side)
    shown = int(task.figure_count)
    if task.get("images"):
        return of_files(ctx, model, saved, method, rule, stats)
    on_canvas = task.get("source", "canvas") == "canvas"
    if on_canvas:
        kinds = evaluate_kinds(method, task, dataset, int(saved.seed), stats, black, rule, one_kind(ctx.info))
        result, canvases = kinds[0][1], kinds[0][2]
        images = canvases.images
        if len(kinds) > 1:  # a run's own metrics: every kind together, then each kind's under its name
            result = Evaluation({**pooled([k[1] for k in kinds]), **prefixed(kinds)})
    else:
        data = load_data(dataset)
        count = len(data.test_y) if task.count is None else min(int(task.count), len(data.test_y))
        images, labels, names = data.test_x[:count], data.test_y[:count], class_names(dataset)
        batched = tracked(batches(images, *stats, int(task.batch_size)), count, f"{task.method} on test images")
        result = evaluate_images(method, labels, batched, rule, shown, names, black)
        kinds = [("test", result, None)]
    if task.get("sanity", False):  # the same method on copies of the model, re-initialized top-down
        sample = next(batches(images[: int(task.sanity_count)], *stats, int(task.sanity_count)))
        result.metrics.update(cascade(lambda m: class_map_method(m, task, black), model, sample, int(cfg.seed)))
    name = run_name(saved.model, saved.seed)
    write_units(ctx.run_dir / UNITS_FILE, [(kind, r.table) for kind, r, _ in kinds])
    paths = {}
    for kind, one, truth in kinds:
        suffix = "" if len(kinds) == 1 else f"-{kind}"
        where = f"{len(truth)} {kind} canvases" if truth is not None else f"{len(images)} {dataset.name} test images"
        shown_images = (truth.images if truth is not None else images)[:shown]
        paths[f"figures/{task.name}{suffix}"] = figure(task, rule.threshold, one, shown_images, truth, dataset, ctx,
                                                       f"{name} on {where}", suffix)  # fmt: skip
        save_maps(ctx.run_dir / f"maps{suffix}.pt", shown_images, one, truth)
    metrics = {**result.metrics, **settings(cfg, saved)}
    if len(kinds) > 1:
        metrics["kinds"] = [kind for kind, _, _ in kinds]
    monitor = task.monitor or ("loc_acc" if on_canvas else "cls_acc")
    table = [*METRIC_KEYS] if on_canvas else ["cls_acc", "images"]
    table += [k for k in (*FAITHFUL_KEYS, "sanity_rank_corr", "sanity_pass") if k in metrics]
    at = f" at {method.layer}" if getattr(method, "layer", None) else ""
    where = ", ".join(kind for kind, _, _ in kinds) if on_canvas else f"{dataset.name} test images"
    title = f"{task.name}: {task.method}{at}, {name} on {where}"
    tables = [kinds_table(kinds)] if len(kinds) > 1 else []
    return TaskResult(metrics, title, table, monitor, figures=paths, tables=tables)


def evaluate_kinds(
    method: Any,
    task: DictConfig,
    dataset: DictConfig,
    seed: int,
    stats: tuple,
    black: torch.Tensor,
    rule: BoxRule,
    alone: bool,
) -> list[tuple[str, Evaluation, Canvases]]:
    """Each canvas kind of task.kinds (or, `alone`, task.canvas's): its canvases and their evaluation."""
    out = []
    kinds = canvas_kinds(task, dataset, alone)
    if alone and task.get("kinds"):
        log.info("one canvas kind, %s: the command line sets task.canvas (task.kinds=... for several)", kinds[0][0])
    data = load_data(dataset)  # once: every kind draws its digits from it
    for kind, canvas in kinds:
        canvases = canvases_for(canvas, data, dataset, seed)
        batched = tracked(batches(canvases.images, *stats, int(task.batch_size)), len(canvases),
                          f"{task.method} on {kind} canvases")  # fmt: skip
        one = replace(rule, digits=int(canvas.digits))
        out.append((kind, evaluate_canvases(method, canvases, batched, black, one, int(task.figure_count)), canvases))
    return out


def pooled(results: list[Evaluation]) -> dict[str, Any]:
    """The metrics of every canvas of every kind together (what task.monitor reads in a run of several kinds)."""
    columns = {k for r in results for k in r.table}
    table = {k: torch.cat([r.table.get(k, torch.full((len(r.table["digits"]),), float("nan"))) for r in results])
             for k in sorted(columns)}  # fmt: skip
    faithful = [k for k in FAITHFUL_KEYS if k in table]
    return {**localization(table), **summarize(table, faithful), "stride": results[0].metrics["stride"]}


def prefixed(kinds: list[tuple[str, Evaluation, Canvases]]) -> dict[str, Any]:
    return {f"{kind}/{key}": value for kind, result, _ in kinds for key, value in result.metrics.items()}


def kinds_table(kinds: list[tuple[str, Evaluation, Any]]) -> Table:
    """The terminal's table of a run of several kinds: a row per kind, the headline metrics with intervals."""
    table = Table(title="per canvas kind (95% intervals over canvases)", show_header=True)
    shown = [k for k in KIND_COLUMNS if k in kinds[0][1].metrics]
    table.add_column("kind")
    for key in shown:
        table.add_column(key, justify="right")
    for kind, result, _ in kinds:
        table.add_row(kind, *(with_interval(result.metrics, k) for k in shown))
    return table


def write_units(path: Path, kinds: list[tuple[str, dict[str, torch.Tensor]]]) -> None:
    """units.csv: per canvas (test image) of each kind the counts and values its metrics sum: what `cnnlab
    report` pairs canvas by canvas to compare two methods on the same canvases."""
    keys = sorted({k for _, table in kinds for k in table})
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["kind", "unit", *keys])
        for kind, table in kinds:
            units = len(next(iter(table.values()))) if table else 0
            for i in range(units):
                row = [float(table[k][i]) if k in table else float("nan") for k in keys]
                writer.writerow([kind, i, *("" if v != v else f"{v:.6g}" for v in row)])


def box_rule(
    task: DictConfig, threshold: float, classes: int, background: int | None = None, side: Any = None
) -> BoxRule:
    """The task's class choice and box settings (`threshold`: the method's own, unless task.threshold is set);
    a class to explain must be one of the dataset's `classes`; `background`: the index of the model's background
    class, if it has one; `side`: the classifier's input (h, w), the crop that labels a box (task.box_labels)."""
    index = task.get("class_index")
    if index is not None and not (isinstance(index, int) and 0 <= index < classes):
        raise ConfigError("task.class_index", index, f"null (predicted) or 0..{classes - 1}", "task.class_index=null")
    keys = ("pooling", "window", "topk", "cell_center", "iou", "boxes")
    faithful = int(task.faithfulness_count) if task.get("faithfulness", False) else 0
    steps = int(task.faithfulness_steps)
    return BoxRule(
        digits=int(task.canvas.digits),
        class_index=index,
        faithful=faithful,
        steps=steps,
        background=background,
        threshold=threshold if task.get("threshold") is None else float(task.threshold),
        crop=tuple(side) if side is not None and task.box_labels == "crop" else None,
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
    suffix: str = "",
) -> Path:
    """figures/<task><suffix>.png: the first images, the map of their class, true (green) and predicted (red)
    boxes."""
    words = f"box at {threshold} of max: green true, red predicted" if truth is not None else f"on {dataset.name} test"
    return figures.box_grid(
        images,
        torch.stack(result.overlays),
        truth,
        result.found,
        ctx.run_dir / "figures" / f"{task.name}{suffix}.png",
        f"{task.method}, {name}, {words}",
        captions=result.captions or None,
        class_names=class_names(dataset),
    )


def save_maps(path: Path, images: torch.Tensor, result: Evaluation, truth: Canvases | None) -> None:
    """The first images (uint8), their maps (float16) and boxes: small, so a report can put methods side by side."""
    n = min(MAPS_SAVED, len(result.overlays), len(images))
    saved = {
        "images": images[:n].clone(),
        "overlays": torch.stack(result.overlays[:n]).half() if n else torch.zeros(0),
        "found": [(d.boxes, d.labels) for d in result.found[:n]],
        "truth": [(truth.boxes[i], truth.labels[i]) for i in range(n)] if truth is not None else None,
    }
    torch.save(saved, path)
