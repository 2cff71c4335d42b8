"""A ResNet's forward pass computed only where its inputs differ from one base image (Score-CAM's masked canvases).

Score-CAM runs the model once per channel on the image masked towards black; on a black canvas those images
differ from the black canvas only around the ink. Outside that box every activation is the black canvas's,
computed once; each layer is computed on its box (widened by what each convolution can spread), with the true
values around it, so the outputs are the full network's up to the order of float sums. BatchNorm is folded into
the convolutions (eval mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.models.resnet import BasicBlock, ResNet


def boxed_runner(model: nn.Module, canvas: Tensor) -> tuple | None:
    """(run, black): run maps images (n, C_in, H, W) to their class probabilities (n, K) by forward passes of
    cnnlab's ResNet (in eval mode, without hooks) that compute each layer only where the images can differ from
    `canvas` (the black canvas); black: the canvas's own (K,). None for any other model.

    The images of a pass differ from the canvas in one box; a 3x3 convolution widens the box where its
    output can differ by a cell each side (a stride divides it), and outside the box every activation is the
    black canvas's, computed once. Each convolution runs on its box with the true values around it (the
    canvas's activations, or the zero padding at the border), so every value computed is the full
    network's, up to the order of float sums; the last maps are pooled whole, as the model pools them.
    """
    if type(model) is not ResNet or type(model.stem) is not nn.Sequential:
        return None
    blocks = [*model.stage1, *model.stage2, *model.stage3]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if (
        any(type(b) is not BasicBlock for b in blocks)
        or [type(m) for m in model.stem] != [nn.Conv2d, type(model.stem[1]), nn.ReLU]
        or any(m.training or m._forward_hooks or m._forward_pre_hooks for m in model.modules())
        or any(isinstance(m, nn.BatchNorm2d) and m.running_var is None for m in model.modules())
        or any(c.dilation != (1, 1) or c.groups != 1 or c.padding_mode != "zeros" for c in convs)
        or any(isinstance(c.padding, str) or c.padding[0] >= c.kernel_size[0] for c in convs)
        or any(isinstance(c.padding, str) or c.padding[1] >= c.kernel_size[1] for c in convs)
    ):
        return None
    conv, norm, relu = model.stem
    cl = torch.channels_last
    folded = {c: _folded(c, bn) for c, bn in [(conv, norm)] + [(b.conv1, b.bn1) for b in blocks]}
    folded.update({b.conv2: _folded(b.conv2, b.bn2) for b in blocks})
    stem_pad = _padded(canvas[None], conv).contiguous(memory_format=cl)
    bases = []  # per block: its input and its conv2's input, padded for conv1 and conv2; its output
    x = relu(norm(conv(canvas[None])))
    for block in blocks:
        h = F.relu(block.bn1(block.conv1(x)))
        out = block(x)
        padded = _padded(x, block.conv1), _padded(h, block.conv2)
        bases.append([b.contiguous(memory_format=cl) for b in (*padded, out)])
        x = out
    black = model.fc(torch.flatten(model.pool(x), 1)).softmax(dim=1)[0]

    def run(images: Tensor) -> Tensor:
        differs = (images != canvas).flatten(0, 1).any(0)  # (H, W)
        rows, cols = differs.any(1).nonzero()[:, 0], differs.any(0).nonzero()[:, 0]
        if len(rows) == 0:
            return black.expand(len(images), -1)
        box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        t = images[:, :, box[0] : box[1], box[2] : box[3]]
        out_box = _widened(box, conv, canvas.shape[1:])
        t, box = F.relu_(_conv_on(conv, folded[conv], t, box, stem_pad, out_box)[0]), out_box
        for block, (x_pad, h_pad, out_base) in zip(blocks, bases, strict=True):
            size = out_base.shape[2:]
            out_box = _widened(_widened(box, block.conv1, size), block.conv2, size)
            h, window, (p, q) = _conv_on(block.conv1, folded[block.conv1], t, box, x_pad, out_box)
            out = _conv_on(block.conv2, folded[block.conv2], F.relu_(h), out_box, h_pad, out_box)[0]
            if block.shortcut is not None:  # it reads the block's input where conv1's window holds it
                (s, u) = block.conv1.stride
                rows, cols = s * (out_box[1] - out_box[0] - 1) + 1, u * (out_box[3] - out_box[2] - 1) + 1
                out += block.shortcut(window[:, :, p : p + rows, q : q + cols])
            t, box = F.relu_(out), out_box
        whole = _extended(t, box, bases[-1][2], (0, x.shape[2], 0, x.shape[3]))
        return model.fc(torch.flatten(model.pool(whole), 1)).softmax(dim=1)

    return run, black


def _folded(conv: nn.Conv2d, norm: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The weights and bias of `conv` followed by `norm` (eval-mode BatchNorm2d, or Identity) as one conv."""
    if not isinstance(norm, nn.BatchNorm2d):
        return conv.weight, conv.bias
    scale = torch.rsqrt(norm.running_var + norm.eps)
    scale = scale if norm.weight is None else norm.weight * scale
    bias = -norm.running_mean * scale if norm.bias is None else norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale[:, None, None, None], bias


def _padded(base: Tensor, conv: nn.Conv2d) -> Tensor:
    (p, q) = conv.padding
    return F.pad(base, (q, q, p, p))


def _widened(box: tuple[int, ...], conv: nn.Conv2d, size: torch.Size) -> tuple[int, ...]:
    """The output cells of `conv` that read any input cell of `box` (y0, y1, x0, x1, ends excluded)."""
    out = []
    for axis, n in enumerate(size):
        k, s, p = conv.kernel_size[axis], conv.stride[axis], conv.padding[axis]
        low, high = box[2 * axis], box[2 * axis + 1]
        out += [max(0, -(-(low + p - k + 1) // s)), min(n, (high - 1 + p) // s + 1)]
    return tuple(out)


def _conv_on(
    conv: nn.Conv2d, weights: tuple, t: Tensor, box: tuple[int, ...], padded: Tensor, out_box: tuple[int, ...]
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """`conv` (with `weights`) on out_box, from its input `t` on `box` and the (padded) canvas's elsewhere;
    and the input it read (true values), with the place of out_box's first input cell in it."""
    (k, j), (s, u), (p, q) = conv.kernel_size, conv.stride, conv.padding
    height, width = padded.shape[2] - 2 * p, padded.shape[3] - 2 * q
    whole = (0, (height + 2 * p - k) // s + 1, 0, (width + 2 * q - j) // u + 1)  # every output cell
    if box == (0, height, 0, width) and out_box == whole:
        return F.conv2d(t, *weights, conv.stride, conv.padding), t, (0, 0)  # the whole plane: as the model runs
    y0, y1, x0, x1 = s * out_box[0], s * (out_box[1] - 1) + k, u * out_box[2], u * (out_box[3] - 1) + j
    window = padded[:, :, y0:y1, x0:x1].expand(len(t), -1, -1, -1).contiguous(memory_format=torch.channels_last)
    _write(window, (y0 - p, x0 - q), t, box)
    return F.conv2d(window, *weights, conv.stride), window, (p, q)


def _extended(t: Tensor, box: tuple[int, ...], base: Tensor, wanted: tuple[int, ...]) -> Tensor:
    """The activations on `wanted`: `t` on `box`, the canvas's elsewhere."""
    y0, y1, x0, x1 = wanted
    out = base[:, :, y0:y1, x0:x1].expand(len(t), -1, -1, -1).contiguous(memory_format=torch.channels_last)
    _write(out, (y0, x0), t, box)
    return out


def _write(out: Tensor, origin: tuple[int, int], t: Tensor, box: tuple[int, ...]) -> None:
    """Copy the part of `t` (on `box`) that falls in `out` (whose cell 0, 0 is at `origin`)."""
    (oy, ox), (h, w) = origin, out.shape[2:]
    y0, y1 = max(box[0], oy), min(box[1], oy + h)
    x0, x1 = max(box[2], ox), min(box[3], ox + w)
    if y0 < y1 and x0 < x1:
        part = t[:, :, y0 - box[0] : y1 - box[0], x0 - box[2] : x1 - box[2]]
        out[:, :, y0 - oy : y1 - oy, x0 - ox : x1 - ox] = part
