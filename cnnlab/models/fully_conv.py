"""A trained ResNet made fully convolutional: global average pooling + linear layer become a 1x1 convolution.

The 1x1 convolution carries the linear layer's weights, so on any input the network emits one score map per
class, and the spatial mean of those maps is exactly the original logits (the mean commutes with the linear map).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import BadArgument, CheckpointError

CELL_CENTERS = ("middle", "field")


class FullyConvNet(nn.Module):
    """`features` of a trained ResNet followed by its `fc` as a 1x1 convolution: (B, C, H, W) -> (B, K, h, w)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        fc = getattr(model, "fc", None)
        if not isinstance(getattr(model, "features", None), nn.Module) or not isinstance(fc, nn.Linear):
            raise CheckpointError(
                f"{type(model).__name__} has no `features` conv stack followed by a linear `fc`; "
                "localization and CAM need a convolutional network: train one with model=resnet."
            )
        self.features = model.features
        self.classifier = nn.Conv2d(fc.in_features, fc.out_features, kernel_size=1)
        with torch.no_grad():
            self.classifier.weight.copy_(fc.weight[:, :, None, None])
            self.classifier.bias.copy_(fc.bias)
        self.stride: int = int(model.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def cell_centers(self, n: int, where: str = "field") -> torch.Tensor:
        """Centres of n consecutive cells in continuous pixel coordinates (pixel i spans [i, i + 1))."""
        return self.stride * torch.arange(n, dtype=torch.float32) + first_cell_center(self.stride, where)


def first_cell_center(stride: int, where: str) -> float:
    """Pixel coordinate of the centre of cell 0 of maps with this stride.

    field: the centre of its receptive field. Each stride-2 3x3 convolution (padding 1) centres output cell j
    on input pixel 2j, so cell j sits on pixel stride*j, whose centre is stride*j + 0.5.
    middle: the middle of the cell's stride x stride block, stride*j + stride/2 (where plain bilinear
    upsampling puts it). Where a trained network's evidence peaks is an empirical question: measure both.
    """
    if where not in CELL_CENTERS:
        raise BadArgument("cell_center", where, "middle or field", "middle")
    return 0.5 if where == "field" else stride / 2
