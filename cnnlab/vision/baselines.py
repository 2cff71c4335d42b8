"""Baselines that keep the benchmark honest: maps that know nothing of the class (the class itself still comes
from the model, by the same pooling as every method).

random: uniform noise (seeded). center: a Gaussian on the image centre (sigma a quarter of the side): where
photographers put objects, nowhere in particular on a canvas. ink: the image itself (mean over channels), which
the box threshold turns into "where there is ink". A method that does not beat ink on cluttered canvases finds
ink, not the class.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnnlab.vision.maps import ClassMapMethod


class Baseline(ClassMapMethod):
    uses_layer = "none"

    def maps(self, x: Tensor, logits: Tensor, activations: Tensor | None, classes: Tensor) -> Tensor:
        one = self.map(x)  # (B, H, W), the same for every class
        return one[:, None].expand(-1, classes.shape[1], -1, -1).contiguous()

    def map(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class RandomMap(Baseline):
    name = "random"

    def __init__(self, *args: object, seed: int = 0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(seed)  # same seed, same maps

    def map(self, x: Tensor) -> Tensor:
        return torch.rand(len(x), *x.shape[2:], generator=self.generator).to(x.device)


class CenterPrior(Baseline):
    name = "center"

    def map(self, x: Tensor) -> Tensor:
        h, w = x.shape[2:]
        rows = (torch.arange(h, device=x.device) + 0.5 - h / 2) / (h / 4)
        cols = (torch.arange(w, device=x.device) + 0.5 - w / 2) / (w / 4)
        return torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / 2).expand(len(x), -1, -1)


class Ink(Baseline):
    name = "ink"

    def map(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)  # normalized images: black is the minimum, min-max scaling makes it 0


BASELINES = (RandomMap, CenterPrior, Ink)
