"""Class Activation Maps (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017) for a GAP + linear network.

CAM_c = sum_k w_ck f_k: the linear layer's weights applied to the last convolutional maps, before pooling.
Grad-CAM weights the maps of any layer by the spatial mean of the class score's gradient; at the last layer
of a GAP + linear network that mean is w_ck / (h w), so Grad-CAM there is ReLU(CAM) up to a constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.fully_conv import first_cell_center

METHODS = ("cam", "grad-cam")


def class_activation_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) normalized images -> (B, K, h, w) CAMs of every class (no bias, not normalized)."""
    features = model.features(x)
    return torch.einsum("kc,bchw->bkhw", model.fc.weight, features)


def grad_cam(model: nn.Module, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """(B, K, h, w) Grad-CAM of every class at `model.features[layer]`, from the model's own logits.

    One batched backward pass computes the gradients of all K class scores at once.
    """
    maps: list[torch.Tensor] = []
    hook = model.features[layer].register_forward_hook(lambda _m, _i, out: maps.append(out))
    try:
        with torch.enable_grad():
            logits = model(x)
            k = logits.shape[1]
            picks = torch.eye(k, device=x.device, dtype=logits.dtype)[:, None, :].expand(k, *logits.shape)
            (grads,) = torch.autograd.grad(logits, maps[0], grad_outputs=picks, is_grads_batched=True)
    finally:
        hook.remove()
    weights = grads.mean(dim=(3, 4), keepdim=True)  # (K, B, C, 1, 1)
    return F.relu((weights * maps[0].detach()).sum(dim=2)).transpose(0, 1).detach()


def upsample_cells(maps: torch.Tensor, stride: int, size: tuple[int, int], where: str = "field") -> torch.Tensor:
    """Bilinear upsampling of (B, K, h, w) cell maps to pixels, each cell landing on its centre.

    where="middle": cell j at stride*(j + 1/2), which is what interpolate(align_corners=False) does.
    where="field": cell j on pixel stride*j, its receptive field's centre (see first_cell_center); the few
    pixels past the last cell repeat its value.
    """
    first_cell_center(stride, where)  # checks `where`
    if where == "middle":
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    h, w = maps.shape[2:]
    inner = (stride * (h - 1) + 1, stride * (w - 1) + 1)
    up = F.interpolate(maps, size=inner, mode="bilinear", align_corners=True)
    pad_h, pad_w = max(0, size[0] - inner[0]), max(0, size[1] - inner[1])
    return F.pad(up, (0, pad_w, 0, pad_h), mode="replicate")[:, :, : size[0], : size[1]]


def normalize_per_image(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each (h, w) map of (B, ..., h, w) to [0, 1], as Zhou et al. do before thresholding."""
    flat = maps.flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps)
