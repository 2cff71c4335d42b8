"""task=localize: a trained ResNet made fully convolutional finds digits on large canvases.

The 1x1-conv classifier gives one score map per class. The canvas class is a pooling of the maps that the
black background cannot win; for boxes the maps are taken relative to those of an empty (black) canvas, so
background is zero, and each chosen class gives the connected components above a fraction of its maximum.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab import CONF_DIR, figures
from cnnlab.cam import normalize_per_image, upsample_cells
from cnnlab.data.build import trained_dataset
from cnnlab.data.canvas import canvases_for
from cnnlab.data.loader import DeviceLoader
from cnnlab.errors import ConfigError
from cnnlab.localization import POOLINGS, Scores, detect, peak_point, pool_scores
from cnnlab.models.fully_conv import CELL_CENTERS, FullyConvNet, first_cell_center
from cnnlab.results import print_table, write_json
from cnnlab.run import Context
from cnnlab.training.checkpoint import restore_model

log = logging.getLogger("cnnlab")
METRIC_KEYS = ["cls_acc", "loc_acc", "mean_iou", "center_err_px", "pointing_acc", "box_precision", "canvases"]


def run(ctx: Context) -> float:
    cfg, task = ctx.cfg, ctx.cfg.task
    check_task(task, METRIC_KEYS)
    model, saved, _ = restore_model(cfg.checkpoint, ctx.device, ctx.run_dir)
    dataset = trained_dataset(saved, cfg)
    canvases = canvases_for(task.canvas, dataset)
    net = FullyConvNet(model).eval()
    with torch.no_grad():
        blank = net(normalized(torch.zeros_like(canvases.images[:1]), dataset, ctx.device)).float().cpu()
        maps = torch.cat([net(x).float().cpu() for x in batches(canvases.images, dataset, ctx.device, task.batch_size)])
    canvas_scores = pool_scores(maps, task.pooling, task.window, task.topk)
    heat = maps - blank  # evidence above an empty canvas: zero on background, so boxes can threshold it
    center = first_cell_center(net.stride, task.cell_center)
    scores, found = Scores(float(task.iou)), []
    for i in range(len(canvases)):
        pred = detect(
            heat[i],
            canvas_scores[i],
            int(task.canvas.digits),
            float(task.threshold),
            net.stride,
            center,
            "peak",
        )
        peaks = {c: peak_point(heat[i, c], net.stride, center) for c in canvases.labels[i].unique().tolist()}
        scores.add(pred, canvases.boxes[i], canvases.labels[i], peaks)
        found.append(pred)
    metrics = {**scores.summary(), **settings(cfg, dataset, net.stride)}
    write_json(ctx.run_dir / "metrics.json", metrics)
    ctx.logger.summary(metrics)
    shown = min(int(task.figure_count), len(canvases))
    classes = canvas_scores[:shown].argmax(dim=1)
    overlay = upsample_cells(heat[:shown], net.stride, tuple(canvases.images.shape[2:]), task.cell_center)
    overlay = normalize_per_image(overlay[torch.arange(shown), classes].clamp(min=0))
    path = figures.box_grid(
        canvases.images[:shown],
        overlay,
        canvases,
        found[:shown],
        ctx.run_dir / "figures" / "localize.png",
        f"fully convolutional ResNet-{saved.model.get('depth', '')}: green true, red predicted",
    )
    ctx.logger.images({"figures/localize": path})
    print_table(f"localize {cfg.checkpoint}", metrics, METRIC_KEYS)
    return float(metrics[task.monitor])


def check_task(task: DictConfig, monitors: list[str]) -> None:
    """Options shared by task=localize and task=cam, checked before any work."""
    if task.cell_center not in CELL_CENTERS:
        raise ConfigError("task.cell_center", task.cell_center, "middle or field", "task.cell_center=middle")
    if task.pooling not in POOLINGS:
        raise ConfigError("task.pooling", task.pooling, f"one of {', '.join(POOLINGS)}", "task.pooling=window")
    for key in ("window", "topk", "batch_size", "figure_count"):
        if not isinstance(task[key], int) or task[key] <= 0:
            raise ConfigError(f"task.{key}", task[key], "a positive integer", f"task.{key}={_default(task, key)}")
    for key in ("threshold", "iou"):
        if not isinstance(task[key], (int, float)) or not 0 < task[key] <= 1:
            raise ConfigError(f"task.{key}", task[key], "a fraction in (0, 1]", f"task.{key}={_default(task, key)}")
    if task.monitor not in monitors:
        fix = "loc_acc" if "loc_acc" in monitors else monitors[0]
        raise ConfigError("task.monitor", task.monitor, f"one of {', '.join(monitors)}", f"task.monitor={fix}")


def _default(task: DictConfig, key: str) -> Any:
    """The value conf/task/<name>.yaml ships, to name in an error's fix."""
    return OmegaConf.load(CONF_DIR / "task" / f"{task.name}.yaml")[key]


def batches(images: torch.Tensor, dataset: DictConfig, device: torch.device, size: int) -> Any:
    """Normalized float batches, by the same code and statistics as in training."""
    loader = DeviceLoader(images, torch.zeros(len(images)), size, list(dataset.mean), list(dataset.std), device)
    return (x for x, _ in loader)


def normalized(images: torch.Tensor, dataset: DictConfig, device: torch.device) -> torch.Tensor:
    return next(iter(batches(images, dataset, device, len(images))))


def settings(cfg: DictConfig, dataset: DictConfig, stride: int) -> dict[str, Any]:
    """The run's settings, flat, next to its metrics (for tables across runs)."""
    task = cfg.task
    return {
        "checkpoint": str(cfg.checkpoint),
        "dataset": dataset.name,
        **{f"canvas.{k}": v for k, v in task.canvas.items()},
        "pooling": task.pooling,
        "threshold": task.threshold,
        "cell_center": task.cell_center,
        "stride": stride,
        "seed": cfg.seed,
    }
