"""task=cam: Class Activation Maps (or Grad-CAM) of a trained ResNet, with boxes and metrics on canvases.

On canvases (MNIST family): the class is chosen as in task=localize (a pooling of the score maps above an
empty canvas), its map is upsampled to pixels, min-max normalized per image and thresholded at a fraction of
its maximum (Zhou et al.: 0.2); the largest connected component is the box. With task.source=test, any
dataset (CIFAR-10 included): overlays on test images, without boxes.
"""

from __future__ import annotations

import logging

import torch

from cnnlab import figures
from cnnlab.cam import class_activation_maps, grad_cam, normalize_per_image, upsample_cells
from cnnlab.errors import ConfigError
from cnnlab.localization import Detections, Scores, detect, peak_point, pool_scores
from cnnlab.models.fully_conv import FullyConvNet
from cnnlab.results import class_name
from cnnlab.tasks.context import Context, TaskResult
from cnnlab.tasks.localize import METRIC_KEYS, batches
from cnnlab.tasks.parts import canvases_for, load_data, restore_model, trained_dataset
from cnnlab.tasks.publish import run_name, settings

log = logging.getLogger("cnnlab")


def run(ctx: Context) -> TaskResult:
    cfg, task = ctx.cfg, ctx.cfg.task
    model, saved, _ = restore_model(cfg.checkpoint, ctx.device, ctx.run_dir)
    model.eval()
    FullyConvNet(model)  # a clear error for a model without conv features + linear layer (an MLP)
    if task.method == "grad-cam" and not -len(model.features) <= task.layer < len(model.features):
        raise ConfigError(
            "task.layer",
            task.layer,
            f"an index into model.features (-{len(model.features)} to {len(model.features) - 1})",
            "task.layer=-1",
        )
    classes = int(saved.model.num_classes)
    if task.class_index is not None and not (isinstance(task.class_index, int) and 0 <= task.class_index < classes):
        raise ConfigError(
            "task.class_index", task.class_index, f"null (predicted) or 0..{classes - 1}", "task.class_index=null"
        )
    dataset = trained_dataset(saved, cfg, ctx.info)
    names = dataset.get("classes")
    on_canvas = task.source == "canvas"
    if on_canvas:
        canvases = canvases_for(task.canvas, dataset)
        images, labels = canvases.images, canvases.labels
    else:
        data = load_data(dataset)
        images, labels = data.test_x, [t.view(1) for t in data.test_y]
    scores, found, overlays, captions, start, correct = Scores(float(task.iou)), [], [], [], 0, 0
    shown = min(int(task.figure_count), len(images))
    size = tuple(images.shape[2:])
    for x in batches(images, dataset, ctx.device, int(task.batch_size)):
        with torch.no_grad():
            cams = class_activation_maps(model, x)
        bias = model.fc.bias.detach().view(1, -1, 1, 1)
        # the predicted class: on canvases a pooling of the score maps (CAM + bias), else the model's logits
        scores_maps = cams + bias
        predicted = (
            pool_scores(scores_maps, task.pooling, task.window, task.topk) if on_canvas else scores_maps.mean((2, 3))
        )
        explained = predicted
        if task.class_index is not None:  # boxes and overlays of this class on every image
            explained = torch.nn.functional.one_hot(torch.full((len(x),), task.class_index), classes).float()
        maps = grad_cam(model, x, int(task.layer)) if task.method == "grad-cam" else cams
        stride = size[0] // maps.shape[2]
        heat = normalize_per_image(upsample_cells(maps, stride, size, task.cell_center)).float().cpu()
        predicted, explained = predicted.float().cpu(), explained.float().cpu()
        for i in range(len(x)):
            n = start + i
            if on_canvas:
                pred = detect(heat[i], explained[i], int(task.canvas.digits), float(task.threshold), rank="area")
                peaks = {c: peak_point(heat[i, c]) for c in labels[n].unique().tolist()}
                scores.add(pred, canvases.boxes[n], labels[n], peaks)
            else:
                top = int(predicted[i].argmax())
                pred = Detections(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))
                correct += int(top == labels[n])
                captions.append(f"pred {class_name(top, names)} / true {class_name(int(labels[n]), names)}")
            if n < shown:
                found.append(pred)
                overlays.append(heat[i, int(explained[i].argmax())])
        start += len(x)
    name = run_name(saved.model, saved.seed)
    metrics = {**scores.summary(), "stride": stride} if on_canvas else {"cls_acc": correct / start, "images": start}
    metrics |= settings(cfg, saved)
    path = figures.box_grid(
        images[:shown],
        torch.stack(overlays),
        canvases if on_canvas else None,
        found,
        ctx.run_dir / "figures" / "cam.png",
        f"{task.method}, {name}"
        + (f", box at {task.threshold} of max: green true, red predicted" if on_canvas else f" on {dataset.name} test"),
        captions=captions[:shown],
        class_names=names,
    )
    monitor = task.monitor or ("loc_acc" if on_canvas else "cls_acc")
    title = f"{task.method} {name} on " + (f"{task.canvas.count} canvases" if on_canvas else f"{dataset.name} test")
    table = METRIC_KEYS if on_canvas else ["cls_acc", "images"]
    return TaskResult(metrics, title, table, monitor, figures={"figures/cam": path})
