"""Faithfulness of a map: does the model's score follow the pixels the map ranks first?

Deletion and insertion (Petsiuk et al. 2018, RISE): pixels are removed (deletion: replaced by black, the empty
canvas) or revealed (insertion: restored onto a blurred copy of the image, RISE's start) in the map's order, most
relevant first; the area under the explained class's probability is the AUC (deletion: lower is better, insertion:
higher). The x-axis is the fraction of the change a full deletion (insertion) makes, not of the pixels: a pixel
weighs sum over channels |x - replacement|, its ink on a black canvas, and the N steps are uniform in that
fraction (each step's x is the fraction actually taken, for the trapezoid). Counted in pixels, deleting black from a
black canvas costs a step and changes nothing, so the image itself (a class-agnostic ink mask) wins by packing all
the ink first; counted in ink, black pixels are free and a mask that takes every digit's ink at once pays for all of
them: on a canvas of 3 digits it spends 3 units per unit of the explained digit, and it can at best tie a map that
takes that digit's ink first.
Average Drop and Increase in Confidence (Chattopadhay et al. 2018): with y the probability on the image and o on
the image times its map (in [0, 1], in pixels: black where it is 0), Average Drop = mean(max(0, y - o) / y) x 100
(lower is better) and Increase in Confidence = mean(o > y) x 100 (higher is better). A map of ones keeps the whole
image and has no drop, so Average Drop is reported beside map_size, the map's mean (its L1 norm per pixel), and
folded with it into ADCC (Poppi et al. 2021): the harmonic mean of coherency ((Pearson correlation of the map of
x and the map of x times its map, which needs the method run again: `remap`) + 1) / 2, 1 - map_size and 1 - drop,
0 where any is 0 (a map of ones scores 0).
Each distinct image of a batch is scored once, in forward passes of CHUNK images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

Scorer = Callable[[Tensor], Tensor]  # (n, C, H, W) normalized images -> (n, K) class probabilities
Remap = Callable[[Tensor, Tensor], Tensor]  # (n, C, H, W) normalized images, (n,) classes -> (n, H, W) maps in [0, 1]
KEYS = (
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "increase_in_confidence",
    "map_size",
    "adcc",
    "coherency",
)
CHUNK = 64  # images per forward pass
REMAPPED = ("adcc", "coherency")  # the keys that need `remap`


class Schedule(NamedTuple):
    """Where the N+1 steps of deletion or insertion stand, per image (B, N+1): `taken` pixels in the map's order,
    `changed` of them of nonzero weight (which decides the image: the others change nothing) and `at`, the fraction
    of the total weight taken, the x-axis (0 and 1 at the ends; k/N where there is nothing to change)."""

    taken: Tensor
    changed: Tensor
    at: Tensor


class Probe(NamedTuple):
    """(B, N+1) deletion and insertion curves (the probability of the class explained at each step) and their x,
    (B,) y on the image and o on the image times its map."""

    deletion: Tensor
    insertion: Tensor
    deletion_at: Tensor
    insertion_at: Tensor
    y: Tensor
    o: Tensor


def order_of(heat: Tensor) -> Tensor:
    """(B, H, W) -> (B, H*W): the pixels in their map's order, most relevant first (ties: first pixel first)."""
    return heat.flatten(1).argsort(dim=1, descending=True, stable=True)


def ranks(heat: Tensor, order: Tensor | None = None) -> Tensor:
    """(B, H, W) -> (B, H*W): each pixel's place in its map's order (`order`, order_of(heat) when not given)."""
    order = order_of(heat) if order is None else order
    place = torch.empty_like(order)
    place.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return place


def weights(x: Tensor, replacement: Tensor) -> Tensor:
    """(B, H, W): what replacing each pixel changes, sum over channels of |x - replacement|."""
    return (x - replacement).abs().sum(1)


def schedule(heat: Tensor, weight: Tensor, steps: int, order: Tensor | None = None) -> Schedule:
    """Steps uniform in the fraction of the total weight: step k takes the pixels, in the map's order (`order`,
    order_of(heat) when not given), whose cumulative weight before them is < k/N of the total; step 0 none, step
    N all."""
    b, n = heat.shape[0], heat[0].numel()
    order = order_of(heat) if order is None else order
    exact = torch.float32 if weight.device.type == "mps" else torch.float64
    w = weight.flatten(1).to(exact).gather(1, order)  # in the map's order
    cum = w.cumsum(1)
    total = cum[:, -1:]
    before = torch.cat([torch.zeros_like(total), cum[:, :-1]], dim=1)
    k = torch.arange(steps + 1, device=heat.device, dtype=exact) / steps
    taken = torch.searchsorted(before.contiguous(), (total * k).contiguous())  # how many are below the goal
    taken[:, -1] = n
    last = (taken - 1).clamp(min=0)
    changed = torch.where(taken > 0, (w > 0).cumsum(1).gather(1, last), 0)
    at = torch.where(taken > 0, cum.gather(1, last), 0) / total.clamp(min=torch.finfo(exact).tiny)
    at[:, 0], at[:, -1] = 0, 1
    at = torch.where(total > 0, at, k.expand(b, -1))
    return Schedule(taken, changed, at.float())


def masked_image(x: Tensor, heat: Tensor, black: Tensor) -> Tensor:
    """The image times its map in pixel space: black where the map is 0 (in normalized space 0 is the mean grey)."""
    black = black.to(x.dtype)
    return black + (x - black) * heat[:, None]


def probe(score: Scorer, x: Tensor, heat: Tensor, classes: Tensor, black: Tensor, steps: int) -> Probe:
    """Deletion and insertion of x in the order of heat, and y and o, for classes[b]. Each distinct image is
    scored once: a step that changes no pixel of nonzero weight repeats the one before it, deletion's steps are
    x until an inked pixel goes and the black canvas once the last has gone, insertion's the image itself once
    every pixel its blur changed is shown.

    x: (B, C, H, W) normalized images; heat: (B, H, W) pixel maps in [0, 1]; black: (C, 1, 1) the normalized black.
    """
    b, c, h, w = x.shape
    black = black.to(x.dtype)
    start = blur(x)  # insertion's step 0
    order = order_of(heat)  # one sort serves the ranks and both schedules
    place = ranks(heat, order)
    deleting = schedule(heat, weights(x, black), steps, order)
    inserting = schedule(heat, weights(x, start), steps, order)
    masked = masked_image(x, heat, black)
    masked_x = (masked == x).flatten(1).all(1)
    masked_black = (masked == black).flatten(1).all(1) & ~masked_x
    # deletion: nothing inked taken is x, everything the black canvas; insertion: everything is x
    del_x = deleting.changed == 0
    del_black = (deleting.changed == deleting.changed[:, -1:]) & ~del_x
    ins_x = inserting.changed == inserting.changed[:, -1:]
    del_new, ins_new = first_of_runs(deleting.changed), first_of_runs(inserting.changed)
    del_scored, ins_scored = del_new & ~(del_x | del_black), ins_new & ~ins_x

    def stepped(s: Schedule, scored: Tensor, where_shown: Tensor, elsewhere: Tensor) -> Tensor:
        i, k = scored.nonzero(as_tuple=True)
        shown = (place[i] < s.taken[i, k][:, None]).view(-1, 1, h, w)
        return torch.where(shown, where_shown[i] if where_shown.dim() == 4 else where_shown, elsewhere[i])

    images = [
        x,
        black.expand(1, c, h, w),
        masked[~(masked_x | masked_black)],
        stepped(deleting, del_scored, black, x),
        stepped(inserting, ins_scored, x, start),
    ]
    sizes = [len(v) for v in images]
    probs = chunked(score, torch.cat(images)).split(sizes)
    y = probs[0].gather(1, classes[:, None])[:, 0]
    gone = probs[1][0, classes]

    def picked(p: Tensor, which: Tensor) -> Tensor:
        return p.gather(1, classes[which.nonzero(as_tuple=True)[0]][:, None])[:, 0]

    o = torch.where(masked_x, y, gone)
    o[~(masked_x | masked_black)] = picked(probs[2], ~(masked_x | masked_black))
    deletion = torch.where(del_x, y[:, None], gone[:, None])
    deletion[del_scored] = picked(probs[3], del_scored)
    deletion = deletion.gather(1, run_starts(del_new))
    insertion = y[:, None].expand(b, steps + 1).clone()
    insertion[ins_scored] = picked(probs[4], ins_scored)
    insertion = insertion.gather(1, run_starts(ins_new))
    return Probe(deletion, insertion, deleting.at.to(y.device), inserting.at.to(y.device), y, o)


def first_of_runs(changed: Tensor) -> Tensor:
    """(B, N+1): the steps whose image is new, not that of the step before (the same count of changed pixels)."""
    new = torch.ones_like(changed, dtype=torch.bool)
    new[:, 1:] = changed[:, 1:] != changed[:, :-1]
    return new


def run_starts(new: Tensor) -> Tensor:
    """(B, N+1): the index of the step each step repeats (itself where new)."""
    index = torch.arange(new.shape[1], device=new.device).expand_as(new)
    return torch.where(new, index, 0).cummax(1).values


def chunked(score: Scorer, images: Tensor) -> Tensor:
    """score() of the images, CHUNK at a time: the activations of hundreds of canvases at once would take
    gigabytes, and are no faster."""
    return torch.cat([score(part) for part in images.split(CHUNK)])


def blur(x: Tensor) -> Tensor:
    """RISE's insertion start: a Gaussian blur (kernel 11, sigma 5), the kernel cut to fit small images."""
    size = min(11, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
    return gaussian_blur(x, kernel_size=size, sigma=5.0) if size >= 3 else x.mean(dim=(2, 3), keepdim=True).expand_as(x)


def auc(curve: Tensor, at: Tensor) -> Tensor:
    """(B,) area under (B, N+1) curves over their (B, N+1) x (or one (N+1,) x for all), by the trapezoid rule."""
    return torch.trapezoid(curve, at.to(curve).expand_as(curve), dim=1)


def drop_and_increase(y: Tensor, o: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) per-image Average Drop terms max(0, y - o) / y and Increase in Confidence terms (o > y)."""
    return (y - o).clamp(min=0) / y.clamp(min=1e-12), (o > y).float()


def coherency(a: Tensor, b: Tensor) -> Tensor:
    """(B,) (Pearson correlation + 1) / 2 of (B, H, W) maps, in [0, 1]: 1 where they are equal (constant maps
    too), 0.5 where only one is constant (no correlation)."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    da, db = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    spread = (da.square().sum(1) * db.square().sum(1)).sqrt()
    r = torch.where(spread > 0, (da * db).sum(1) / spread.clamp(min=1e-30), 0.0)
    r = torch.where((a == b).all(1), 1.0, r.clamp(-1, 1))
    return (r + 1) / 2


def adcc(coherent: Tensor, complexity: Tensor, drop: Tensor) -> Tensor:
    """(B,) ADCC = 3 / (1 / coherency + 1 / (1 - complexity) + 1 / (1 - drop)), all in [0, 1]; 0 where a term is
    0."""
    terms = torch.stack([coherent, 1 - complexity, 1 - drop]).clamp(0, 1)
    return torch.where((terms > 0).all(0), 3 / (1 / terms.clamp(min=1e-30)).sum(0), 0.0)


@dataclass
class Faithfulness:
    """Accumulates per-image faithfulness over batches: `per_image()` the values, `summary()` their means (KEYS
    that were computed: adcc and coherency only with `remap`)."""

    steps: int  # deletion and insertion steps
    values: dict[str, list[Tensor]] = field(default_factory=lambda: {k: [] for k in KEYS})

    def add(
        self,
        score: Scorer,
        x: Tensor,
        heat: Tensor,
        classes: Tensor,
        black: Tensor,
        remap: Remap | None = None,
    ) -> None:
        """A batch: normalized images, their (B, H, W) maps in [0, 1] and the (B,) classes explained; `remap`:
        the method's maps of the classes on other images (here x times its map), for coherency and ADCC."""
        if self.values[KEYS[0]] and bool(self.values[REMAPPED[0]]) != (remap is not None):
            raise ValueError("Faithfulness.add: give remap for every batch or for none")
        with torch.no_grad():
            p = probe(score, x, heat, classes, black, self.steps)
            drop, increase = drop_and_increase(p.y, p.o)
            size = heat.flatten(1).float().mean(1)
            values = {
                "deletion_auc": auc(p.deletion, p.deletion_at),
                "insertion_auc": auc(p.insertion, p.insertion_at),
                "average_drop": 100 * drop,
                "increase_in_confidence": 100 * increase,
                "map_size": size,
            }
        if remap is not None:  # outside no_grad: a gradient method needs its graph
            again = remap(masked_image(x, heat, black), classes).detach().to(heat.device)
            values["coherency"] = coherency(heat, again)
            values["adcc"] = adcc(values["coherency"], size, drop)
        for key, value in values.items():
            self.values[key].append(value.float().cpu())

    def per_image(self) -> dict[str, Tensor]:
        """(n_images,) values of each key computed, on summary()'s scale (drop and increase x 100)."""
        return {k: torch.cat(self.values[k]) for k in KEYS if self.values[k]}

    def summary(self) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in self.per_image().items()}
