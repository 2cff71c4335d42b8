"""Model-randomization sanity check (Adebayo et al. 2018): a map that explains the model must change with it.

On a copy of the model, the parts are re-initialized top-down (fc, then the last stage, ... down to the stem),
cascading: each step keeps the earlier ones random. After each step the method's maps of the same images and
classes are recomputed; the Spearman rank correlation with the trained net's maps (per image, over the map's
cells, then averaged) says how much of the map survived. A method passes when, with every weight random, the
correlation is below PASS_BELOW in absolute value. The threshold is this project's choice: Adebayo et al. find
the failing methods (Guided Backprop, Guided Grad-CAM) stay highly correlated with every weight random while the
model-dependent ones (gradients, Grad-CAM) fall towards 0; a map keeping half its rank order is far from either
reading of a random net. Baselines center and ink never look at the weights: their maps do not change at all
(correlation 1, flagged). The random baseline passes (its maps change at every call): the check asks that maps
change with the model, not that they are right.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from cnnlab.records.intervals import interval
from cnnlab.vision.maps import ClassMapMethod

PASS_BELOW = 0.5
MethodFactory = Callable[[nn.Module], ClassMapMethod]


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """(B,) rank correlation of (B, ...) maps a[i] and b[i]; ties ranked in pixel order, a constant map gives 0."""
    ra, rb = (_ranks(t.flatten(1).float()) for t in (a, b))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    corr = (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-12)
    constant = (a.flatten(1).std(1) == 0) | (b.flatten(1).std(1) == 0)
    both = (a.flatten(1) == b.flatten(1)).all(1)  # the same constant map did not change
    return torch.where(constant & ~both, 0.0, torch.where(both, 1.0, corr))


def _ranks(flat: Tensor) -> Tensor:
    order = flat.argsort(dim=1, stable=True)
    out = torch.empty_like(flat)
    out.scatter_(1, order, torch.arange(flat.shape[1], dtype=flat.dtype, device=flat.device).expand_as(flat))
    return out


def top_down(model: nn.Module) -> list[str]:
    """The parts to re-initialize, last first: fc, then model.layers reversed (stage3, ..., stem)."""
    return ["fc", *reversed(list(getattr(model, "layers", ())))]


def reinitialize(part: nn.Module, seed: int) -> None:
    """Fresh weights for every module of `part` (seeded; BatchNorm's running statistics reset too)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in part.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()


def class_maps(method: ClassMapMethod, x: Tensor, classes: Tensor) -> Tensor:
    """(B, h, w) maps of the (B,) classes."""
    return method(x, classes[:, None]).maps[:, 0].float().cpu()


def cascade(make: MethodFactory, model: nn.Module, x: Tensor, seed: int = 0) -> dict[str, float | bool | list[float]]:
    """Rank correlations after each cascading re-initialization: `sanity_rank_corr_<part>`, the final one as
    `sanity_rank_corr` with its interval over the images, and `sanity_pass`. The classes: the trained model's."""
    with torch.no_grad():
        classes = model(x).argmax(1)
    trained = class_maps(make(model), x, classes)
    copied = copy.deepcopy(model).eval()
    out: dict[str, float | bool | list[float]] = {}
    for i, name in enumerate(top_down(copied)):
        reinitialize(copied.get_submodule(name), seed + i)
        per_image = spearman(trained, class_maps(make(copied), x, classes))
        out[f"sanity_rank_corr_{name}"] = float(per_image.mean())
    final = float(per_image.mean())  # every part random
    return {
        **out,
        "sanity_rank_corr": final,
        "sanity_rank_corr_ci": interval(per_image),
        "sanity_pass": abs(final) < PASS_BELOW,
    }
