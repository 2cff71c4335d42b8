"""One evaluation for every class-map method.

On canvases: the class of a canvas is a pooling of the fully-convolutional score maps (the same for every method,
baselines included; with a background class, of the digit classes' probabilities per cell); the method's maps of
the chosen and the true classes become boxes and metrics. Score maps (fully-conv) are taken relative to those of an
empty canvas, upsampled to pixels and boxed there, each class's components ranked by peak; relevance maps (every
other method) are upsampled to pixels, min-max normalized per image and boxed by their largest components (Zhou et
al.). On test images: the model's class, its map, cls_acc.
Both score the first `rule.faithful` images' maps of the explained class for faithfulness (vision.faithfulness):
on canvases the class probability is that of the pooling (the canvas's class), on test images the softmax of the
logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from cnnlab.data.canvas import Canvases
from cnnlab.data.loader import DeviceLoader
from cnnlab.records.results import class_name
from cnnlab.vision.boxes import Detections, detect, peak_point, pool_scores
from cnnlab.vision.faithfulness import Faithfulness, Scorer
from cnnlab.vision.maps import ClassMapMethod, ClassMaps, normalize_per_image, upsample_cells
from cnnlab.vision.methods import FullyConv


@dataclass
class BoxRule:
    """How maps become a class and boxes."""

    threshold: float  # a box: a component above this fraction of the map's maximum
    steps: int  # faithfulness's deletion and insertion steps
    digits: int = 1  # boxes per canvas
    pooling: str = "window"
    window: int = 5
    topk: int = 16
    cell_center: str = "middle"
    iou: float = 0.5  # a box is correct at IoU >= this with a true box of its class
    class_index: int | None = None  # explain this class on every image; None: the predicted one
    faithful: int = 0  # the first images scored for faithfulness (deletion, insertion, drop); 0: none
    background: int | None = None  # the index of the model's background class (its last output), if it has one


@dataclass
class Evaluation:
    metrics: dict[str, float | int]
    overlays: list[Tensor] = field(default_factory=list)  # the first images' maps (H, W) in [0, 1]
    found: list[Detections] = field(default_factory=list)  # their boxes
    captions: list[str] = field(default_factory=list)


def batches(images: Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device, size: int) -> Iterator:
    """Normalized float batches, by the same code and statistics as in training."""
    loader = DeviceLoader(images, torch.zeros(len(images)), size, list(mean), list(std), device)
    return (x for x, _ in loader)


def explained(scores: Tensor, class_index: int | None) -> Tensor:
    """(B, K) class scores, or a one-hot of `class_index` when one class is explained on every image."""
    if class_index is None:
        return scores
    return F.one_hot(torch.full((len(scores),), class_index), scores.shape[1]).float()


def cell_scores(maps: Tensor, background: int | None) -> Tensor:
    """(B, K, h, w) score maps of every class -> the digit classes' scores per cell: the logits, or with a
    background class the probabilities of the softmax over all classes (near zero where the cell sees background)."""
    return maps if background is None else maps.float().softmax(1)[:, :background]


def heat_maps(
    full: Tensor, scores: bool, stride: int, size: tuple[int, int], where: str, blank: Tensor | None
) -> tuple[Tensor, str]:
    """(B, K, H, W) heat at pixels on CPU from a method's (B, K, h, w) maps of every class, and how its regions
    are ranked."""
    if scores:  # score maps: evidence above an empty canvas, bilinearly at pixels (boxes finer than a cell)
        return upsample_cells(full - blank, stride, size, where).clamp(min=0).cpu(), "peak"
    return normalize_per_image(upsample_cells(full, stride, size, where)).cpu(), "area"


def evaluate_canvases(
    method: ClassMapMethod, canvases: Canvases, batched: Iterable[Tensor], black: Tensor, rule: BoxRule, shown: int
) -> Evaluation:
    """Boxes and metrics of `method` on the canvases (given again as normalized batches); `black`: the (C, 1, 1)
    normalized black pixel, of which an empty canvas is made."""
    scorer = method if isinstance(method, FullyConv) else FullyConv(method.model)
    faith = Faithfulness(rule.steps)
    size, scores, out, start = tuple(canvases.images.shape[2:]), Scores(rule.iou), Evaluation({}), 0
    blank = black.expand(1, -1, *size).contiguous()  # an empty canvas
    blank_maps = scorer(blank).maps.float()[:, : rule.background] if method.scores else None  # None: all classes
    for x in batched:
        labels = canvases.labels[start : start + len(x)]
        pooled, wanted, heat, rank, stride = boxed(method, scorer, x, rule, blank_maps, torch.stack(labels))
        for i, truth in enumerate(labels):
            pred = detect(heat[i], pooled[i], rule.digits, rule.threshold, rank=rank)
            peaks = {c: peak_point(heat[i, c]) for c in truth.unique().tolist()}
            scores.add(pred, canvases.boxes[start + i], truth, peaks)
            if start + i < shown:
                out.found.append(pred)
        first = max(0, min(len(x), shown - start))
        out.overlays += list(overlay(heat[:first], pooled[:first].argmax(1)))
        if start < rule.faithful:  # the maps of the explained class, at pixels in [0, 1]
            n = min(len(x), rule.faithful - start)
            chosen = overlay(heat[:n], wanted[:n, 0]).to(x.device)
            faith.add(canvas_scorer(scorer, rule), x[:n], chosen, wanted[:n, 0].to(x.device), black)
        start += len(x)
    out.metrics = {**scores.summary(), **faith.summary(), "stride": stride}
    return out


def boxed(
    method: ClassMapMethod, scorer: FullyConv, x: Tensor, rule: BoxRule, blank_maps: Tensor | None, also: Tensor
) -> tuple[Tensor, Tensor, Tensor, str, int]:
    """One batch of canvases: the pooled class scores, the classes explained (the best rule.digits, then `also`:
    (B, m) more, e.g. the true ones), their heat at pixels, how its regions rank, and the maps' stride."""
    shared = SharedPass(method, scorer, x)
    logits = shared.scores.float()
    pooled = explained(canvas_scores(logits, rule).cpu(), rule.class_index)
    wanted = torch.cat([pooled.topk(min(rule.digits, pooled.shape[1])).indices, also.to(torch.long)], dim=1)
    maps = shared.maps(wanted)
    # score maps are boxed on the logits: a digit's evidence spreads over its ink, while its probability
    # saturates over every position the classifier was trained to accept (pad-and-crop's shifts)
    classes = rule.background  # the digit classes come first; None: every output is one
    full = logits[:, :classes] if method is scorer else maps.full(method.num_classes)[:, :classes].float()
    heat, rank = heat_maps(full, method.scores, maps.stride, tuple(x.shape[2:]), rule.cell_center, blank_maps)
    return pooled, wanted, heat, rank, maps.stride


def locate(method: ClassMapMethod, x: Tensor, black: Tensor, rule: BoxRule) -> list[Detections]:
    """Boxes, classes and scores of canvases without truth (normalized (B, C, H, W)), as task=localize finds them."""
    scorer = method if isinstance(method, FullyConv) else FullyConv(method.model)
    blank = black.expand(1, -1, *x.shape[2:]).contiguous()
    blank_maps = scorer(blank).maps.float()[:, : rule.background] if method.scores else None
    pooled, _, heat, rank, _ = boxed(method, scorer, x, rule, blank_maps, torch.zeros(len(x), 0))
    return [detect(heat[i], pooled[i], rule.digits, rule.threshold, rank=rank) for i in range(len(x))]


class SharedPass:
    """One forward pass of the model for the score maps of every class (the scorer's hook, on the last maps) and
    for a method's maps (its own hook, at its layer): the classes a method explains are chosen from the scores,
    but its forward pass does not depend on them. fully-conv and methods with passes of their own (pgc:) are
    simply called."""

    def __init__(self, method: ClassMapMethod, scorer: FullyConv, x: Tensor) -> None:
        self.method, self.scorer, self.x = method, scorer, x
        self.own = method is scorer or type(method).__call__ is not ClassMapMethod.__call__
        if self.own:
            self.every = scorer(x)
            self.scores = self.every.maps
            return
        self.run, last = method.forward(x, scorer)
        self.scores = scorer.explain(last).maps

    def maps(self, classes: Tensor) -> ClassMaps:
        """The method's maps of the (B, m) classes (fully-conv: of every class)."""
        if self.method is self.scorer:
            return self.every
        if self.own:
            return self.method(self.x, classes)
        return self.method.explain(self.run, classes)


def canvas_scores(maps: Tensor, rule: BoxRule) -> Tensor:
    """(B, K, h, w) score maps -> (B, digit classes) canvas scores, pooled as rule says: of the logits, or with a
    background class of the cells' probabilities. The canvas's class is their argmax."""
    return pool_scores(cell_scores(maps, rule.background), rule.pooling, rule.window, rule.topk)


def canvas_scorer(scorer: FullyConv, rule: BoxRule) -> Scorer:
    """Class probabilities of canvases, pooled as the canvas's class is chosen: the softmax of the pooled logits,
    or with a background class the pooled probabilities themselves."""
    if rule.background is not None:
        return lambda x: canvas_scores(scorer(x).maps.float(), rule)
    return lambda x: canvas_scores(scorer(x).maps.float(), rule).softmax(1)


def overlay(heat: Tensor, classes: Tensor) -> Tensor:
    """(n, H, W) maps of `classes` in [0, 1] from (n, K, H, W) heat at pixels, for figures and faithfulness."""
    return normalize_per_image(heat[torch.arange(len(heat)), classes][:, None])[:, 0]


def explain_files(method: ClassMapMethod, batched: Iterable[Tensor], rule: BoxRule) -> tuple[Evaluation, Tensor]:
    """Images without labels (one's own files): the maps of the class explained, and the (n, K) probabilities."""
    out, probabilities = Evaluation({}), []
    for x in batched:
        with torch.no_grad():
            p = method.model(x).float().softmax(1).cpu()
        wanted = explained(p, rule.class_index).argmax(1, keepdim=True)
        maps = method(x, wanted.to(x.device))
        heat = normalize_per_image(upsample_cells(maps.maps.float(), maps.stride, tuple(x.shape[2:]), rule.cell_center))
        out.overlays += list(heat[:, 0].cpu())
        out.found += [Detections(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))] * len(x)
        probabilities.append(p)
    out.metrics = {"images": len(out.overlays)}
    return out, torch.cat(probabilities)


def evaluate_images(
    method: ClassMapMethod,
    labels: Tensor,
    batched: Iterable[Tensor],
    rule: BoxRule,
    shown: int,
    names: Sequence | None,
    black: Tensor | None = None,
) -> Evaluation:
    """The model's class on test images (any dataset), and the map of the class explained, without boxes;
    `black`: the (C, 1, 1) normalized black pixel, what deletion puts in (needed when rule.faithful > 0)."""
    out, correct, start, faith = Evaluation({}), 0, 0, Faithfulness(rule.steps)
    for x in batched:
        with torch.no_grad():
            predicted = method.model(x).float().cpu()
        wanted = explained(predicted, rule.class_index).argmax(1, keepdim=True)
        maps = method(x, wanted)
        heat = normalize_per_image(upsample_cells(maps.maps.float(), maps.stride, tuple(x.shape[2:]), rule.cell_center))
        truth = labels[start : start + len(x)]
        correct += int((predicted.argmax(1) == truth).sum())
        first = max(0, min(len(x), shown - start))
        out.overlays += list(heat[:first, 0].cpu())
        out.found += [Detections(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))] * first
        out.captions += [
            f"pred {class_name(int(p), names)} / true {class_name(int(t), names)}"
            for p, t in zip(predicted[:first].argmax(1), truth[:first], strict=True)
        ]
        if start < rule.faithful and black is not None:
            n = min(len(x), rule.faithful - start)
            faith.add(
                lambda v: method.model(v).float().softmax(1), x[:n], heat[:n, 0], wanted[:n, 0].to(x.device), black
            )
        start += len(x)
    out.metrics = {"cls_acc": correct / max(1, start), "images": start, **faith.summary()}
    return out


@dataclass
class Scores:
    """Accumulates per-digit localization results over canvases; `summary()` gives the metrics."""

    iou_threshold: float = 0.5
    ious: list[float] = field(default_factory=list)
    center_errors: list[float] = field(default_factory=list)
    correct_classes: int = 0
    digits: int = 0
    canvases: int = 0
    predicted: int = 0
    predicted_correct: int = 0
    pointing_hits: int = 0
    pointing_total: int = 0

    def add(
        self,
        pred: Detections,
        true_boxes: torch.Tensor,
        true_labels: torch.Tensor,
        peaks: dict[int, tuple[float, float]],
    ) -> None:
        """One canvas: its detections, true boxes and labels, and the heat maximum of each true class."""
        self.canvases += 1
        self.digits += len(true_labels)
        for c in true_labels.unique().tolist():
            self.correct_classes += min(int((true_labels == c).sum()), int((pred.labels == c).sum()))
        same = true_labels[:, None] == pred.labels[None, :]
        iou = box_iou(true_boxes, pred.boxes) * same if len(pred.boxes) else torch.zeros(len(true_labels), 0)
        for t in range(len(true_labels)):
            best = int(iou[t].argmax()) if iou.shape[1] and same[t].any() else None
            self.ious.append(float(iou[t, best]) if best is not None else 0.0)
            if best is not None:
                self.center_errors.append(float(torch.dist(_center(true_boxes[t]), _center(pred.boxes[best]))))
        self.predicted += len(pred.labels)
        self.predicted_correct += int((iou >= self.iou_threshold).any(dim=0).sum()) if iou.numel() else 0
        for c, (x, y) in peaks.items():
            mine = true_boxes[true_labels == c]
            inside = (mine[:, 0] <= x) & (x < mine[:, 2]) & (mine[:, 1] <= y) & (y < mine[:, 3])
            self.pointing_hits += int(inside.any())
            self.pointing_total += 1

    def summary(self) -> dict[str, float | int]:
        ious = torch.tensor(self.ious)
        return {
            "cls_acc": self.correct_classes / max(1, self.digits),
            "loc_acc": float((ious >= self.iou_threshold).float().mean()) if len(ious) else 0.0,
            "mean_iou": float(ious.mean()) if len(ious) else 0.0,
            "center_err_px": float(torch.tensor(self.center_errors).mean()) if self.center_errors else float("nan"),
            "pointing_acc": self.pointing_hits / max(1, self.pointing_total),
            "box_precision": self.predicted_correct / max(1, self.predicted),
            "canvases": self.canvases,
            "digits": self.digits,
        }


def _center(box: torch.Tensor) -> torch.Tensor:
    return (box[:2] + box[2:]) / 2
