"""CIFAR-style ResNet of He et al. 2016 (section 4.2) and its plain twin.

depth = 6n + 2: a 3x3 `stem` conv, three stages `stage1..3` of n basic blocks with width, 2*width and 4*width
channels (stride 2 at the first block of stages 2 and 3), global average `pool` and one linear layer `fc`.
Class-map methods choose a layer by name: `stem`, `stage2`, `stage3.1` (a block), `stage2.0.bn2`, ...
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config.schema import depth_allowed, nearest_depths
from cnnlab.errors import BadArgument

SHORTCUTS = ("A", "B", "C")


def check_depth(depth: int) -> int:
    """Return n for depth = 6n + 2, or raise an error that lists the nearest valid depths."""
    if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 8 and (depth - 2) % 6 == 0:
        return (depth - 2) // 6
    guess = depth if isinstance(depth, (int, float)) else 20
    raise BadArgument("depth", depth, depth_allowed(depth), min(nearest_depths(depth), key=lambda d: abs(d - guess)))


def _conv3x3(cin: int, cout: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class PadShortcut(nn.Module):
    """Option A: parameter-free identity, subsampled and zero-padded in channels where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def _projection(cin: int, cout: int, stride: int, batch_norm: bool) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=not batch_norm), _norm(cout, batch_norm))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut when residual, then ReLU (post-activation)."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool, shortcut: str, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, bias=not batch_norm)
        self.bn1 = _norm(cout, batch_norm)
        self.conv2 = _conv3x3(cout, cout, 1, bias=not batch_norm)
        self.bn2 = _norm(cout, batch_norm)
        self.shortcut: nn.Module | None = None
        if residual:
            reshapes = stride != 1 or cin != cout
            if shortcut == "C" or (shortcut == "B" and reshapes):
                self.shortcut = _projection(cin, cout, stride, batch_norm)
            else:
                self.shortcut = PadShortcut(cin, cout, stride) if reshapes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place while training (one activation less written per ReLU: ResNet-20 trains ~2% faster on a CPU); out of
        # place in eval, where a class-map method's hook on bn1 or bn2 must keep the values it saw.
        inplace = self.training
        out = F.relu(self.bn1(self.conv1(x)), inplace=inplace)
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out.add_(self.shortcut(x)) if inplace else out + self.shortcut(x)
        return F.relu(out, inplace=inplace)


class ResNet(nn.Module):
    def __init__(
        self,
        depth: int = 20,
        width: int = 16,
        residual: bool = True,
        shortcut: str = "A",
        batch_norm: bool = True,
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        n = check_depth(depth)
        if not isinstance(width, int) or width <= 0:
            raise BadArgument("width", width, "a positive integer (16 in the paper)", 16)
        shortcut = str(shortcut).upper()
        if shortcut not in SHORTCUTS:
            raise BadArgument("shortcut", shortcut, "A, B or C", "A")
        self.n = n
        self.stem = nn.Sequential(
            OrderedDict(
                conv=_conv3x3(in_channels, width, 1, bias=not batch_norm), bn=_norm(width, batch_norm), relu=nn.ReLU()
            )
        )
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width), start=1):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 1 and i == 0 else 1, residual, shortcut, batch_norm))
                cin = cout
            self.add_module(f"stage{stage}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.stride = 4  # input pixels per cell of the last feature maps
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    layers = ("stem", "stage1", "stage2", "stage3")  # the named parts a class map can be taken at
    last_layer = "stage3"  # the last convolutional maps: what `pool` and `fc` see

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the last convolutional maps (B, 4 width, H/4, W/4)."""
        return self.stage3(self.stage2(self.stage1(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
