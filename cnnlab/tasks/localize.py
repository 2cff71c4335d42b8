"""task=localize: a trained ResNet made fully convolutional finds digits on large canvases.

The 1x1-conv classifier gives one score map per class. The canvas class is a pooling of the maps that the
black background cannot win; for boxes the maps are taken relative to those of an empty (black) canvas, so
background is zero, and each chosen class gives the connected components above a fraction of its maximum.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from cnnlab import figures
from cnnlab.cam import normalize_per_image, upsample_cells
from cnnlab.config import CANVAS_METRICS
from cnnlab.data.loader import DeviceLoader
from cnnlab.localization import Scores, detect, peak_point, pool_scores
from cnnlab.models.fully_conv import FullyConvNet, first_cell_center
from cnnlab.tasks.context import Context, TaskResult
from cnnlab.tasks.parts import canvases_for, restore_model, trained_dataset
from cnnlab.tasks.publish import run_name, settings

log = logging.getLogger("cnnlab")
METRIC_KEYS = list(CANVAS_METRICS)


def run(ctx: Context) -> TaskResult:
    cfg, task = ctx.cfg, ctx.cfg.task
    model, saved, _ = restore_model(cfg.checkpoint, ctx.device, ctx.run_dir)
    dataset = trained_dataset(saved, cfg, ctx.info)
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
        pred = detect(heat[i], canvas_scores[i], int(task.canvas.digits), float(task.threshold), net.stride, center)
        peaks = {c: peak_point(heat[i, c], net.stride, center) for c in canvases.labels[i].unique().tolist()}
        scores.add(pred, canvases.boxes[i], canvases.labels[i], peaks)
        found.append(pred)
    metrics = {**scores.summary(), "stride": net.stride, **settings(cfg, saved)}
    shown = min(int(task.figure_count), len(canvases))
    classes = canvas_scores[:shown].argmax(dim=1)
    overlay = upsample_cells(heat[:shown], net.stride, tuple(canvases.images.shape[2:]), task.cell_center)
    overlay = normalize_per_image(overlay[torch.arange(shown), classes].clamp(min=0))
    name = run_name(saved.model, saved.seed)
    path = figures.box_grid(
        canvases.images[:shown],
        overlay,
        canvases,
        found[:shown],
        ctx.run_dir / "figures" / "localize.png",
        f"localize, {name} made fully convolutional: green true, red predicted",
        class_names=dataset.get("classes"),
    )
    title = f"localize {name} on {task.canvas.count} canvases"
    return TaskResult(metrics, title, METRIC_KEYS, task.monitor, figures={"figures/localize": path})


def batches(images: torch.Tensor, dataset: DictConfig, device: torch.device, size: int) -> Any:
    """Normalized float batches, by the same code and statistics as in training."""
    loader = DeviceLoader(images, torch.zeros(len(images)), size, list(dataset.mean), list(dataset.std), device)
    return (x for x, _ in loader)


def normalized(images: torch.Tensor, dataset: DictConfig, device: torch.device) -> torch.Tensor:
    return next(iter(batches(images, dataset, device, len(images))))
