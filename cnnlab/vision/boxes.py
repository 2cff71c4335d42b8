"""From maps to boxes: pooling score maps into a canvas class, boxes of the regions of a heat map, the peak.

Coordinates are continuous pixels (x1, y1, x2, y2), pixel i spanning [i, i + 1), as torchvision.ops expects.
A heat map may be coarse (one cell per `stride` pixels, cell 0 centred at `first_center`) or per pixel
(stride 1, first_center 0.5); a cell covers stride pixels around its centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from cnnlab.errors import BadArgument

POOLINGS = ("window", "topk", "max", "mean")
RANKINGS = ("peak", "area")
INK_SHARE = 0.5  # a map-guided box takes an ink component it holds this share of (measured on val canvases)


def pool_scores(maps: torch.Tensor, pooling: str, window: int = 7, topk: int = 16) -> torch.Tensor:
    """(B, K, h, w) score maps -> (B, K) canvas scores.

    mean is what global average pooling does: on a large black canvas the background outvotes the digit.
    window averages a digit-sized window and takes the best position; topk averages the k best cells.
    """
    if pooling == "mean":
        return maps.mean(dim=(2, 3))
    if pooling == "max":
        return maps.amax(dim=(2, 3))
    if pooling == "window":
        size = min(window, maps.shape[2], maps.shape[3])
        return F.avg_pool2d(maps, size, stride=1).amax(dim=(2, 3))
    if pooling == "topk":
        k = min(topk, maps.shape[2] * maps.shape[3])
        return maps.flatten(2).topk(k, dim=2).values.mean(dim=2)
    raise BadArgument("pooling", pooling, f"one of {', '.join(POOLINGS)}", "window")


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected components of a (h, w) bool mask: labels 1..n, 0 for background, numbered in the order of
    each component's last pixel (row by row).

    Every foreground pixel starts with its own number and ends with the largest number of its component. Each
    round it takes the largest among its 8 neighbours, then the largest of its run of foreground pixels along the
    row and along the column: rounds are the turns of the longest path inside a component, not its length.
    """
    h, w = mask.shape
    keep = mask.double()  # exact integers up to 2^53
    labels = torch.arange(1, h * w + 1, dtype=torch.float64, device=mask.device).view(h, w) * keep
    while True:
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * keep
        grown = run_max(run_max(grown, mask).T, mask.T).T
        if torch.equal(grown, labels):
            break
        labels = grown
    _, compact = torch.unique(labels, return_inverse=True)  # 0 stays 0 when background is present
    return compact if not mask.all() else compact + 1


def run_max(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(h, w) labels -> the largest label of each run of foreground pixels along a row, at every pixel of the run."""
    return torch.maximum(run_max_so_far(labels, mask), run_max_so_far(labels.flip(1), mask.flip(1)).flip(1))


def run_max_so_far(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The largest label from the start of each pixel's run along the row to the pixel: a running maximum of
    run number x big + label, where the runs before have smaller numbers and so never win."""
    starts = mask.clone()
    starts[:, 1:] &= ~mask[:, :-1]
    run = starts.cumsum(1).to(labels.dtype) * (labels.numel() + 1)
    return ((run + labels).cummax(1).values - run) * mask


@dataclass
class Regions:
    """Boxes of the connected regions of one heat map, best first."""

    boxes: torch.Tensor  # (m, 4)
    peaks: torch.Tensor  # (m,) the heat maximum inside each region
    areas: torch.Tensor  # (m,) cells per region


def regions(
    heat: torch.Tensor,
    threshold: float,
    stride: float = 1.0,
    first_center: float = 0.5,
    rank: str = "peak",
) -> Regions:
    """Threshold a (h, w) heat map at `threshold` x its maximum; one box per connected component.

    The heat map must be zero (or below) on background: subtract a baseline or min-max normalize first.
    A map with nothing above zero has no regions.
    """
    if rank not in RANKINGS:
        raise BadArgument("rank", rank, f"one of {', '.join(RANKINGS)}", "peak")
    if heat.max() <= 0:  # nothing above background
        return Regions(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    found = components(heat >= threshold * heat.max())
    # cell j covers [stride*j + first_center - stride/2, stride*j + first_center + stride/2)
    low = found.cells[:, :2] * stride + first_center - stride / 2
    high = found.cells[:, 2:] * stride + first_center + stride / 2
    values = heat[found.rows, found.cols].float()
    peaks = torch.full((len(found.sizes),), -torch.inf).scatter_reduce(0, found.which, values, "amax")
    order = (peaks if rank == "peak" else found.sizes.float()).argsort(descending=True)
    return Regions(torch.cat([low, high], 1)[order], peaks[order], found.sizes[order])


@dataclass
class Components:
    """The 8-connected components of a (h, w) mask, numbered as connected_components numbers them."""

    cells: torch.Tensor  # (n, 4) float: first column, first row, last column, last row of each
    sizes: torch.Tensor  # (n,) long: cells per component
    rows: torch.Tensor  # (p,) the mask's cells
    cols: torch.Tensor
    which: torch.Tensor  # (p,) the component of each (0-based)
    labels: torch.Tensor  # (h, w) long: 0 off the mask, k + 1 on component k


def components(mask: torch.Tensor) -> Components:
    """Each component's extent and size at once (a scatter per bound, not a pass per component)."""
    rows, cols = torch.nonzero(mask, as_tuple=True)
    if not len(rows):
        empty = torch.zeros(0, dtype=torch.long)
        return Components(torch.zeros(0, 4), empty, empty, empty, empty, torch.zeros(mask.shape, dtype=torch.long))
    labels = connected_components(mask)
    which = labels[rows, cols] - 1
    n = int(which.max()) + 1
    at = torch.stack([cols, rows], 1).float()
    index = which[:, None].expand(-1, 2)
    low = torch.full((n, 2), torch.inf).scatter_reduce(0, index, at, "amin")
    high = torch.full((n, 2), -torch.inf).scatter_reduce(0, index, at, "amax")
    return Components(torch.cat([low, high], 1), torch.bincount(which, minlength=n), rows, cols, which, labels)


@dataclass
class Detections:
    boxes: torch.Tensor  # (n, 4)
    labels: torch.Tensor  # (n,)
    scores: torch.Tensor  # (n,)


def detect(
    heat: torch.Tensor,
    canvas_scores: torch.Tensor,
    digits: int,
    threshold: float,
    stride: float = 1.0,
    first_center: float = 0.5,
    rank: str = "peak",
    overlap: float = 0.3,
) -> Detections:
    """Up to `digits` boxes on one canvas from the components of the class heat maps (K, h, w).

    The `digits` best classes by canvas score each give their best component (by `rank`), then the other
    components fill the remaining places (a class may appear twice), best first. A box overlapping a kept
    box by IoU > `overlap` is dropped: digits do not overlap, so it is the same digit seen by another class.
    """
    classes = canvas_scores.topk(min(digits, len(canvas_scores))).indices.tolist()
    firsts, rest = [], []
    for c in classes:
        found = regions(heat[c], threshold, stride, first_center, rank)
        key = found.peaks if rank == "peak" else found.areas.float()
        for j in range(len(found.boxes)):
            (firsts if j == 0 else rest).append((found.boxes[j], c, float(key[j])))
    rest.sort(key=lambda item: -item[2])
    kept: list[tuple[torch.Tensor, int, float]] = []
    for box, c, key in firsts + rest:
        if len(kept) == digits:
            break
        if not kept or box_iou(box[None], torch.stack([k[0] for k in kept])).max() <= overlap:
            kept.append((box, c, key))
    if not kept:
        return Detections(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    return Detections(
        torch.stack([k[0] for k in kept]), torch.tensor([k[1] for k in kept]), torch.tensor([k[2] for k in kept])
    )


def peak_point(heat: torch.Tensor, stride: float = 1.0, first_center: float = 0.5) -> tuple[float, float]:
    """(x, y) pixel position of the maximum of a (h, w) heat map."""
    index = int(heat.argmax())
    row, col = divmod(index, heat.shape[1])
    return col * stride + first_center, row * stride + first_center


def ink_components(ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8-connected ink components of a (H, W) bool mask: their tight boxes (n, 4), pixel counts (n,) and the
    (H, W) labels (0: no ink, k: component k - 1)."""
    found = components(ink)
    return torch.cat([found.cells[:, :2], found.cells[:, 2:] + 1], 1), found.sizes.float(), found.labels


def snap_to_ink(found: Detections, ink: torch.Tensor, share: float = 0.5) -> Detections:
    """Map-guided boxes: each box becomes the tight box of the ink components it holds at least `share` of
    (their ink pixels inside it); a box that holds none stays as the map drew it. The map chooses which ink is
    its class's, the ink draws the box: exact where the map found the digit, class-discriminative where ink
    alone is not (several digits)."""
    if not len(found.boxes):
        return found
    parts, sizes, labels = ink_components(ink)
    if not len(parts):
        return found
    rows, cols = torch.nonzero(labels, as_tuple=True)
    which, x, y = labels[rows, cols] - 1, cols.float() + 0.5, rows.float() + 0.5
    boxes = []
    for box in found.boxes:
        inside = (box[0] <= x) & (x < box[2]) & (box[1] <= y) & (y < box[3])
        held = torch.bincount(which[inside], minlength=len(parts)).float() >= share * sizes
        chosen = parts[held]
        boxes.append(torch.cat([chosen[:, :2].amin(0), chosen[:, 2:].amax(0)]) if len(chosen) else box)
    return Detections(torch.stack(boxes), found.labels, found.scores)
