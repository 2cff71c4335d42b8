"""K models of one architecture trained as one module: seeds packed into one process.

Member k's parameters and buffers are the k-th block along dim 0 of the packed ones, and its channels the k-th
block of the packed input's and activations' (`pack_inputs`: the members' batches side by side in channels).
Two ways to compute the pack (`exact`, runtime.pack_exact):
- exact (the default): each layer with parameters or a reduction (convolution, BatchNorm, Linear, average pool)
  runs member by member on the member's channels and its block of the parameters, the elementwise ones (ReLU, the
  residual sum, option A's padding) once for all. A member then sums its floats in its lone run's order: on the
  CPU it is its lone run bit for bit. (A grouped convolution's gradients, or a BatchNorm or pool over K times the
  channels in channels_last, sum in another order, and a run at lr 0.1 with momentum grows a 1e-7 difference to
  percents within a few hundred steps.)
- fused: a Conv2d is one grouped convolution (K times the groups), a BatchNorm and the pool one op over K times
  the channels, a Linear one batched product: fewer, larger kernels, where those are faster (a GPU).
Either way nothing mixes members: each one's gradients are those it would have alone, and an elementwise optimizer
(SGD, Adam) over the packed tensors is K optimizers; a member whose loss turns NaN spoils only its own block.

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
SHARED = (nn.Sequential, nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Flatten, BasicBlock, ResNet)
WIDENED = (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear, nn.AdaptiveAvgPool2d, PadShortcut)  # _widened's


def per_member(x: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The K members' blocks of channels (dim 1) of a packed activation, each laid out as a lone run's is."""
    fmt = _memory_format(x)
    return [part.contiguous(memory_format=fmt) for part in x.chunk(k, 1)]


def joined(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' outputs side by side in channels; backward hands each member its gradient laid out as a lone
    run's (a strided slice of the packed gradient would send BatchNorm's backward down another summing path)."""
    return _Joined.apply(_memory_format(parts[0]), *parts)


class _Joined(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, fmt: torch.memory_format, *parts: torch.Tensor) -> torch.Tensor:
        ctx.fmt, ctx.sizes = fmt, [p.shape[1] for p in parts]
        return torch.cat(parts, 1).contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return None, *(g.contiguous(memory_format=ctx.fmt) for g in grad.split(ctx.sizes, 1))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc else torch.contiguous_format


def _blocks(t: torch.Tensor | None, k: int) -> Sequence[torch.Tensor | None]:
    return [None] * k if t is None else t.chunk(k)


class PackedLinear(nn.Module):
    """K linear layers (in -> out) on the K blocks of a (B, K * in) input: (B, K * out). One batched product, or
    (`exact`) each member's own."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True, exact: bool = True):
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members * out_features)) if bias else None
        self.exact = exact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.members
        if self.exact:
            parts = zip(per_member(x, k), self.weight.chunk(k), _blocks(self.bias, k), strict=True)
            return joined([F.linear(xk, wk, bk) for xk, wk, bk in parts])
        blocks = x.reshape(len(x), k, self.in_features).transpose(0, 1)  # (K, B, in)
        out = torch.bmm(blocks, self.weight.view(k, self.out_features, self.in_features).transpose(1, 2))
        if self.bias is not None:
            out = out + self.bias.view(k, 1, self.out_features)
        return out.transpose(0, 1).reshape(len(x), k * self.out_features)


class PackedConv2d(nn.Conv2d):
    """K convolutions: one grouped convolution, or (`exact`) each member's own."""

    def __init__(self, members: int, conv: nn.Conv2d, exact: bool = True) -> None:
        k = members
        super().__init__(conv.in_channels * k, conv.out_channels * k, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups * k, conv.bias is not None, conv.padding_mode)  # fmt: skip
        self.members, self.exact = members, exact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.exact:
            return super().forward(x)
        k, padding = self.members, self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d pads
            x, padding = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), 0
        parts = zip(per_member(x, k), self.weight.chunk(k), _blocks(self.bias, k), strict=True)
        groups = self.groups // k
        return joined([F.conv2d(xk, wk, bk, self.stride, padding, self.dilation, groups) for xk, wk, bk in parts])


class PackedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """K BatchNorms (1d or 2d) over K times the channels: one op, or (`exact`) each member's own."""

    def __init__(self, members: int, norm: nn.modules.batchnorm._BatchNorm, exact: bool = True) -> None:
        super().__init__(norm.num_features * members, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
        self.members, self.exact, self.dims = members, exact, (4,) if isinstance(norm, nn.BatchNorm2d) else (2, 3)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in self.dims:  # as BatchNorm1d's and BatchNorm2d's
            raise ValueError(f"expected a {' or '.join(map(str, self.dims))}D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.exact:
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum  # as _BatchNorm.forward, once for all members
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        stats = not self.training or self.track_running_stats
        k = self.members
        means = _blocks(self.running_mean if stats else None, k)
        variances = _blocks(self.running_var if stats else None, k)
        parts = zip(per_member(x, k), means, variances, _blocks(self.weight, k), _blocks(self.bias, k), strict=True)
        return joined([F.batch_norm(xk, m, v, w, b, batch_stats, factor, self.eps) for xk, m, v, w, b in parts])


class PackedAvgPool(nn.AdaptiveAvgPool2d):
    """The adaptive average pool: over all members' channels at once, or (`exact`) member by member."""

    def __init__(self, members: int, pool: nn.AdaptiveAvgPool2d, exact: bool = True) -> None:
        super().__init__(pool.output_size)
        self.members, self.exact = members, exact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.exact:
            return super().forward(x)
        return joined([F.adaptive_avg_pool2d(xk, self.output_size) for xk in per_member(x, self.members)])


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


def pack(models: Sequence[nn.Module], exact: bool = True) -> nn.Module:
    """One module computing the K `models` (one architecture, any weights) on pack_inputs' input; `exact`: layer
    by layer as each member alone (see the module's doc)."""
    why = unpackable(models[0])
    if why is not None:
        raise ValueError(f"cannot pack this model: {why}")
    k = len(models)
    packed = copy.deepcopy(models[0])
    for name, module in list(packed.named_modules()):
        wide = _widened(module, k, exact)
        if wide is not module:
            parent, _, leaf = name.rpartition(".")
            setattr(packed.get_submodule(parent), leaf, wide)
    packed.load_state_dict(pack_tree([m.state_dict() for m in models]))
    return packed.to(next(models[0].parameters()).device)


def _widened(module: nn.Module, k: int, exact: bool) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return PackedConv2d(k, module, exact)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return PackedBatchNorm(k, module, exact)
    if isinstance(module, nn.Linear):
        return PackedLinear(k, module.in_features, module.out_features, module.bias is not None, exact)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return PackedAvgPool(k, module, exact)
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
