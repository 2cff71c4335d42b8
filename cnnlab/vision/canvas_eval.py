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

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlab.data.canvas import Canvases
from cnnlab.data.loader import DeviceLoader
from cnnlab.records.results import class_name
from cnnlab.vision.boxes import INK_SHARE, Detections, detect, peak_point, pool_scores, snap_to_ink
from cnnlab.vision.faithfulness import Faithfulness, Scorer
from cnnlab.vision.maps import ClassMapMethod, ClassMaps, normalize_per_image, upsample_cells
from cnnlab.vision.methods import FullyConv
from cnnlab.vision.scores import Scores, Table, localization, summarize


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
    boxes: str = "ink"  # ink: the map's regions snapped to the ink they hold (snap_to_ink); map: as drawn
    faithful: int = 0  # the first images scored for faithfulness (deletion, insertion, drop); 0: none
    background: int | None = None  # the index of the model's background class (its last output), if it has one
    crop: tuple[int, int] | None = None  # the classifier's input (h, w): each box labelled on a crop; None: by its map


@dataclass
class Evaluation:
    metrics: dict[str, float | int]
    overlays: list[Tensor] = field(default_factory=list)  # the first images' maps (H, W) in [0, 1]
    found: list[Detections] = field(default_factory=list)  # their boxes
    captions: list[str] = field(default_factory=list)
    table: Table = field(default_factory=dict)  # per canvas (image): the counts and values the metrics sum


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
    """Boxes and metrics (with intervals over canvases) of `method` on the canvases, given again as normalized
    batches; `black`: the (C, 1, 1) normalized black pixel, of which an empty canvas is made."""
    scorer = method if isinstance(method, FullyConv) else FullyConv(method.model)
    faith = Faithfulness(rule.steps)
    size, scores, out, start = tuple(canvases.images.shape[2:]), Scores(rule.iou), Evaluation({}), 0
    blank = black.expand(1, -1, *size).contiguous()  # an empty canvas
    blank_maps = scorer(blank).maps.float()[:, : rule.background] if method.scores else None  # None: all classes
    for x in batched:
        labels = canvases.labels[start : start + len(x)]
        pooled, wanted, heat, rank, stride = boxed(method, scorer, x, rule, blank_maps, torch.stack(labels))
        ink = canvases.images[start : start + len(x)].amax(1) > 0
        found = batch_boxes(scorer, x, heat, pooled, ink, black, rule, rank)
        for i, (truth, pred) in enumerate(zip(labels, found, strict=True)):
            peaks = {c: peak_point(heat[i, c]) for c in truth.unique().tolist()}
            scores.add(pred, canvases.boxes[start + i], truth, peaks)
            if start + i < shown:
                out.found.append(pred)
        first = max(0, min(len(x), shown - start))
        out.overlays += list(overlay(heat[:first], pooled[:first].argmax(1)))
        if start < rule.faithful:  # the maps of the explained class, at pixels in [0, 1]
            n = min(len(x), rule.faithful - start)
            chosen = overlay(heat[:n], wanted[:n, 0]).to(x.device)

            def remap(v: Tensor, classes: Tensor) -> Tensor:  # the same map of the masked canvases (ADCC)
                again = boxed(method, scorer, v, rule, blank_maps, classes[:, None].cpu())[2]
                return overlay(again, classes.cpu()).to(v.device)

            faith.add(canvas_scorer(scorer, rule), x[:n], chosen, wanted[:n, 0].to(x.device), black, remap=remap)
        start += len(x)
    faithful = faith.per_image()
    out.table = {**scores.table(), **padded(faithful, start)}
    out.metrics = {**localization(out.table), **summarize(out.table, list(faithful)), "stride": stride}
    return out


def boxes_of(heat: Tensor, pooled: Tensor, ink: Tensor, rule: BoxRule, rank: str) -> Detections:
    """One canvas's boxes: the map's regions of its best classes, snapped to the ink they hold (rule.boxes=ink)."""
    found = detect(heat, pooled, rule.digits, rule.threshold, rank=rank)
    return snap_to_ink(found, ink, INK_SHARE) if rule.boxes == "ink" else found


def batch_boxes(
    scorer: FullyConv, x: Tensor, heat: Tensor, pooled: Tensor, ink: Tensor, black: Tensor, rule: BoxRule, rank: str
) -> list[Detections]:
    """A batch's boxes (boxes_of each canvas), labelled by their crops when rule.crop says so."""
    found = [boxes_of(heat[i], pooled[i], ink[i], rule, rank) for i in range(len(x))]
    return crop_labels(scorer.model, x, found, black, rule) if rule.crop else found


def crop_labels(
    model: Callable[[Tensor], Tensor], x: Tensor, found: list[Detections], black: Tensor, rule: BoxRule
) -> list[Detections]:
    """Each box labelled by the classifier on the crop of its input size centred on the box (a second look, as
    R-CNN's): the canvas's pooled class averages windows on the maps' grid of cells, the crop is a digit as the
    classifier was trained on it, wherever on the canvas it lies. Outside the canvas is black. (Blacking out what
    lies outside the box as well labels worse on validation canvases: 3 digits 0.967 against 0.979.)"""
    if not any(len(d.boxes) for d in found):
        return found
    h, w = rule.crop or (0, 0)
    padded = F.pad(x - black, (w, w, h, h))  # zero: black, once the black pixel is added back
    boxes = torch.cat([d.boxes for d in found])
    corners = ((boxes[:, :2] + boxes[:, 2:]) / 2 - torch.tensor([w / 2, h / 2])).round().long().tolist()
    at = zip([i for i, d in enumerate(found) for _ in range(len(d.boxes))], corners, strict=True)
    crops = torch.stack([padded[i, :, y + h : y + 2 * h, c + w : c + 2 * w] for i, (c, y) in at])
    with torch.no_grad():
        labels = model(crops + black).float()[:, : rule.background].argmax(1).cpu()
    parts = labels.split([len(d.boxes) for d in found])
    return [Detections(d.boxes, own, d.scores) for d, own in zip(found, parts, strict=True)]


def padded(values: dict[str, Tensor], units: int) -> Table:
    """Per-image values of the first images as columns over all `units` (NaN after them)."""
    out = {}
    for key, value in values.items():
        column = torch.full((units,), float("nan"), dtype=torch.float64)
        column[: len(value)] = value.double()
        out[key] = column
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
    return batch_boxes(scorer, x, heat, pooled, (x != black).any(1).cpu(), black, rule, rank)


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
        heat = image_maps(method, x, wanted.to(x.device), rule)
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
    out, hits, start, faith = Evaluation({}), [], 0, Faithfulness(rule.steps)
    for x in batched:
        with torch.no_grad():
            predicted = method.model(x).float().cpu()
        wanted = explained(predicted, rule.class_index).argmax(1, keepdim=True)
        heat = image_maps(method, x, wanted, rule)
        truth = labels[start : start + len(x)]
        hits.append((predicted.argmax(1) == truth).double())
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
                lambda v: method.model(v).float().softmax(1),
                x[:n],
                heat[:n, 0],
                wanted[:n, 0].to(x.device),
                black,
                remap=lambda v, classes: image_maps(method, v, classes[:, None], rule)[:, 0],
            )
        start += len(x)
    correct, faithful = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.float64), faith.per_image()
    out.table = {"classes_correct": correct, "digits": torch.ones_like(correct), **padded(faithful, start)}
    out.metrics = {**summarize(out.table, ["cls_acc", *faithful]), "images": start}
    return out


def image_maps(method: ClassMapMethod, x: Tensor, classes: Tensor, rule: BoxRule) -> Tensor:
    """(B, m, H, W) maps of the (B, m) classes at pixels, each in [0, 1]."""
    maps = method(x, classes)
    return normalize_per_image(upsample_cells(maps.maps.float(), maps.stride, tuple(x.shape[2:]), rule.cell_center))
