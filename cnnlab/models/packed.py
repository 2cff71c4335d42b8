"""K models of one architecture trained as one module: seeds packed into one process.

Member k's parameters and buffers are the k-th block along dim 0 of the packed ones, and its channels the k-th
block of the packed input's and activations' (`pack_inputs`: the members' batches side by side in channels). A
Conv2d becomes a grouped convolution (K times the groups), a BatchNorm K times the channels (each member keeps its
own batch statistics and running averages), a Linear a batched matrix product, option A's zero-padding shortcut
pads each member's channels. Nothing mixes members: each one's gradients are those it would have alone, and an
elementwise optimizer (SGD, Adam) over the packed tensors is K optimizers, so a member trains as it would alone up
to the order of float sums; a member whose loss turns NaN spoils only its own block.

`pack_tree` / `unpack_tree` map state dicts (and optimizer states) between the K members and the pack by the same
rule, so a member's checkpoint is an ordinary single-model one.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.resnet import BasicBlock, PadShortcut, ResNet

# modules that act per channel or per element and hold nothing per member: kept as they are
SHARED = (nn.Sequential, nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.AdaptiveAvgPool2d, nn.Flatten)
SHARED += (BasicBlock, ResNet)
WIDENED = (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear, PadShortcut)  # those _widened replaces


class PackedLinear(nn.Module):
    """K linear layers (in -> out) on the K blocks of a (B, K * in) input: (B, K * out)."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.members
        per_member = x.reshape(len(x), k, self.in_features).transpose(0, 1)  # (K, B, in)
        out = torch.bmm(per_member, self.weight.view(k, self.out_features, self.in_features).transpose(1, 2))
        if self.bias is not None:
            out = out + self.bias.view(k, 1, self.out_features)
        return out.transpose(0, 1).reshape(len(x), k * self.out_features)


class PackedPadShortcut(nn.Module):
    """Option A's shortcut for K members: subsample, then zero-pad each member's channels."""

    def __init__(self, members: int, shortcut: PadShortcut) -> None:
        super().__init__()
        self.members, self.stride, self.extra = members, shortcut.stride, shortcut.extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        if not self.extra:
            return x
        b, _, h, w = x.shape
        per_member = x.reshape(b, self.members, -1, h, w)
        return F.pad(per_member, (0, 0, 0, 0, 0, self.extra)).reshape(b, -1, h, w)


def unpackable(model: nn.Module) -> str | None:
    """Why `model` cannot be packed (a module that would mix or randomize members), or None."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return f"{name} is dropout: its masks would come from one random stream, not each member's seed"
        if not isinstance(module, (*SHARED, *WIDENED, nn.Dropout)):
            return f"{name or 'the model'} is a {type(module).__name__}, which packing does not know"
    return None


def pack(models: Sequence[nn.Module]) -> nn.Module:
    """One module computing the K `models` (one architecture, any weights) on pack_inputs' input."""
    why = unpackable(models[0])
    if why is not None:
        raise ValueError(f"cannot pack this model: {why}")
    k = len(models)
    packed = copy.deepcopy(models[0])
    for name, module in list(packed.named_modules()):
        wide = _widened(module, k)
        if wide is not module:
            parent, _, leaf = name.rpartition(".")
            setattr(packed.get_submodule(parent), leaf, wide)
    packed.load_state_dict(pack_tree([m.state_dict() for m in models]))
    return packed.to(next(models[0].parameters()).device)


def _widened(module: nn.Module, k: int) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(
            module.in_channels * k,
            module.out_channels * k,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups * k,
            module.bias is not None,
            module.padding_mode,
        )
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return type(module)(
            module.num_features * k, module.eps, module.momentum, module.affine, module.track_running_stats
        )
    if isinstance(module, nn.Linear):
        return PackedLinear(k, module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, PadShortcut):
        return PackedPadShortcut(k, module)
    return module


def pack_inputs(batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' (B, C, ...) batches as the pack's (B, K * C, ...) input."""
    return torch.cat(list(batches), dim=1)


def member_outputs(logits: torch.Tensor, members: int) -> torch.Tensor:
    """The pack's (B, K * classes) output as (B, K, classes)."""
    return logits.view(len(logits), members, -1)


def pack_tree(trees: Sequence[Any]) -> Any:
    """The members' state dicts (or optimizer states: nested dicts and lists of tensors) as the pack's: each
    tensor concatenated along dim 0; a scalar (a step count, BN's num_batches_tracked) is the first member's,
    as every member has the same."""
    first = trees[0]
    if isinstance(first, dict):
        return type(first)((key, pack_tree([t[key] for t in trees])) for key in first)
    if isinstance(first, (list, tuple)):
        return type(first)(pack_tree(list(parts)) for parts in zip(*trees, strict=True))
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return torch.cat(list(trees), dim=0)
    return first


def unpack_tree(tree: Any, members: int) -> list[Any]:
    """pack_tree's inverse: the K members' trees (tensors copied, so a member's checkpoint stands alone)."""
    if isinstance(tree, dict):
        parts = {key: unpack_tree(value, members) for key, value in tree.items()}
        return [type(tree)((key, parts[key][i]) for key in tree) for i in range(members)]
    if isinstance(tree, (list, tuple)):
        parts = [unpack_tree(value, members) for value in tree]
        return [type(tree)(p[i] for p in parts) for i in range(members)]
    if isinstance(tree, torch.Tensor) and tree.dim() > 0:
        return [block.clone() for block in tree.chunk(members, dim=0)]
    return [tree.clone() if isinstance(tree, torch.Tensor) else copy.deepcopy(tree) for _ in range(members)]
