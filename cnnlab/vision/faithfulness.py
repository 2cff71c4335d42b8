"""Faithfulness of a map: does the model's score follow the pixels the map ranks first?

Deletion and insertion (Petsiuk et al. 2018, RISE): pixels are removed (deletion: replaced by black, the empty
canvas) or revealed (insertion: onto a blurred copy of the image, RISE's start) in the map's order, most relevant
first; the explained class's probability along the way, integrated over the fraction of pixels by the trapezoid
rule, is the AUC. Deletion: lower is better (the score falls fast); insertion: higher is better. Steps are
spaced quadratically (fraction (k/N)^2): a digit covers ~3% of a 128 px canvas, so uniform steps would delete
all of it in the first step for every map worth the name. The steps of a batch of images are scored together, in
forward passes of CHUNK images, each distinct image once.
Average Drop and Increase in Confidence (Chattopadhay et al. 2018): with y the probability on the image and o on
the image times its map (in [0, 1], in pixels: black where it is 0), Average Drop = mean(max(0, y - o) / y) x 100
(lower is better) and Increase in Confidence = mean(o > y) x 100 (higher is better).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

Scorer = Callable[[Tensor], Tensor]  # (n, C, H, W) normalized images -> (n, K) class probabilities
KEYS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
CHUNK = 64  # images per forward pass


def fractions(steps: int) -> Tensor:
    """The fractions of pixels removed or revealed at each step: 0, (1/N)^2, ..., 1."""
    return (torch.arange(steps + 1, dtype=torch.float32) / steps) ** 2


def ranks(heat: Tensor) -> Tensor:
    """(B, H, W) -> (B, H*W): each pixel's place in its map's order, 0 the most relevant (ties: first pixel first)."""
    order = heat.flatten(1).argsort(dim=1, descending=True, stable=True)
    place = torch.empty_like(order)
    place.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return place


def probe(
    score: Scorer, x: Tensor, heat: Tensor, classes: Tensor, black: Tensor, steps: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(B, N+1) deletion and insertion curves, (B,) y on the image and o on the image times its map: the
    probability of classes[b], each distinct image scored once. Many steps repeat an image: deletion's last
    steps are the black canvas once the ink is gone, insertion's last ones the image itself once every pixel its
    blur changed is shown (on a black canvas, most of the pixels).

    x: (B, C, H, W) normalized images; heat: (B, H, W) pixel maps in [0, 1]; black: (C, 1, 1) the normalized black.
    """
    b, c, h, w = x.shape
    black = black.to(x.dtype)
    fr = fractions(steps).to(x.device)[1:-1]
    shown = ranks(heat)[:, None] < (fr * h * w).round()[None, :, None]  # (B, N-1, H*W): pixels taken at 1..N-1
    shown = shown.view(b, steps - 1, 1, h, w)
    start = blur(x)[:, None]  # insertion's step 0
    # the image times its map in pixel space: black where the map is 0 (in normalized space 0 is the mean grey)
    masked = black + (x - black) * heat[:, None]
    deleted = torch.where(shown, black, x[:, None])  # steps 1..N-1; step N is the black canvas
    inserted = torch.where(shown, x[:, None], start)  # steps 1..N-1; step N is the image
    images = torch.cat([masked[:, None], deleted, start, inserted], dim=1)  # (B, 2N, C, H, W)
    picked = distinct_probabilities(score, x, images, classes, black)
    y, gone = picked[:, 0], picked[:, 1]
    deletion = torch.cat([y[:, None], picked[:, 3 : steps + 2], gone[:, None]], dim=1)
    insertion = torch.cat([picked[:, steps + 2 :], y[:, None]], dim=1)
    return deletion, insertion, y, picked[:, 2]


def distinct_probabilities(score: Scorer, x: Tensor, images: Tensor, classes: Tensor, black: Tensor) -> Tensor:
    """(B, 2 + m) probabilities of classes[b]: of x[b], of the black canvas and of images[b] (B, m, C, H, W),
    where an image equal to x[b] or to the black canvas takes that probability instead of being scored again."""
    b, m, c, h, w = images.shape
    is_x = (images == x[:, None]).flatten(2).all(2)
    is_black = (images == black).flatten(2).all(2) & ~is_x
    other = ~(is_x | is_black)
    probs = chunked(score, torch.cat([x, black.expand(1, c, h, w), images[other]]))
    y, gone = probs[:b].gather(1, classes[:, None])[:, 0], probs[b, classes]
    picked = torch.where(is_x, y[:, None], gone[:, None])
    picked[other] = probs[b + 1 :].gather(1, classes[:, None].expand(b, m)[other][:, None])[:, 0]
    return torch.cat([y[:, None], gone[:, None], picked], dim=1)


def chunked(score: Scorer, images: Tensor) -> Tensor:
    """score() of the images, CHUNK at a time: the activations of hundreds of canvases at once would take
    gigabytes, and are no faster."""
    return torch.cat([score(part) for part in images.split(CHUNK)])


def curves(score: Scorer, x: Tensor, heat: Tensor, classes: Tensor, black: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """(B, N+1) deletion and insertion curves: the probability of classes[b] at each step."""
    return probe(score, x, heat, classes, black, steps)[:2]


def blur(x: Tensor) -> Tensor:
    """RISE's insertion start: a Gaussian blur (kernel 11, sigma 5), the kernel cut to fit small images."""
    size = min(11, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
    return gaussian_blur(x, kernel_size=size, sigma=5.0) if size >= 3 else x.mean(dim=(2, 3), keepdim=True).expand_as(x)


def auc(curve: Tensor, steps: int) -> Tensor:
    """(B,) area under (B, N+1) curves over the step fractions, by the trapezoid rule."""
    return torch.trapezoid(curve, fractions(steps).to(curve.device), dim=1)


def drop_and_increase(y: Tensor, o: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) per-image Average Drop terms max(0, y - o) / y and Increase in Confidence terms (o > y)."""
    return (y - o).clamp(min=0) / y.clamp(min=1e-12), (o > y).float()


@dataclass
class Faithfulness:
    """Accumulates per-image faithfulness over batches; `summary()` gives the metrics (KEYS)."""

    steps: int  # deletion and insertion steps
    values: dict[str, list[Tensor]] = field(default_factory=lambda: {k: [] for k in KEYS})

    def add(self, score: Scorer, x: Tensor, heat: Tensor, classes: Tensor, black: Tensor) -> None:
        """A batch: normalized images, their (B, H, W) maps in [0, 1] and the (B,) classes explained."""
        with torch.no_grad():
            deletion, insertion, y, o = probe(score, x, heat, classes, black, self.steps)
            drop, increase = drop_and_increase(y, o)
        values = (auc(deletion, self.steps), auc(insertion, self.steps), drop, increase)
        for key, value in zip(KEYS, values, strict=True):
            self.values[key].append(value.float().cpu())

    def summary(self) -> dict[str, float]:
        if not self.values[KEYS[0]]:
            return {}
        mean = {k: float(torch.cat(v).mean()) for k, v in self.values.items()}
        return {**mean, "average_drop": 100 * mean["average_drop"], "increase_in_confidence": 100 * mean[KEYS[3]]}
