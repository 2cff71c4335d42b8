"""The canvas benchmark: digits pasted at seeded random, non-overlapping positions on a large black canvas.

True boxes are the tight boxes of the pasted ink, in continuous pixel coordinates (x1, y1, x2, y2) as
torchvision.ops uses them: pixel column i spans [i, i + 1). Clutter (as in the cluttered MNIST of the Spatial
Transformer Networks paper) is small fragments cut from other digits, pasted anywhere before the digits.
The same arguments and seed always give the same canvases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.errors import BadArgument

MNIST_FAMILY = ("mnist_sample", "mnist", "fashion_mnist")
PLACEMENT_TRIES = 1000


@dataclass
class Canvases:
    images: torch.Tensor  # (N, C, size, size) uint8
    boxes: list[torch.Tensor]  # per canvas (n, 4) float: x1, y1, x2, y2
    labels: list[torch.Tensor]  # per canvas (n,) int64

    def __len__(self) -> int:
        return len(self.images)


def kind_name(digits: int, clutter: int) -> str:
    """single, clutter8, 3digits, 3digits-clutter8: a canvas kind by what it holds."""
    name = "single" if digits == 1 else f"{digits}digits"
    return f"clutter{clutter}" if clutter and digits == 1 else f"{name}-clutter{clutter}" if clutter else name


def check_canvas_config(count: int, size: int, digits: int, clutter: int, fragment: int, digit_size: int) -> None:
    """Fail before any work on a canvas that cannot hold what was asked for."""
    if not isinstance(count, int) or count <= 0:
        raise BadArgument("count", count, "a positive integer", 500)
    if not isinstance(size, int) or size < digit_size:
        raise BadArgument("size", size, f"an integer >= the digit size {digit_size}", 128)
    if not isinstance(digits, int) or digits <= 0:
        raise BadArgument("digits", digits, "a positive integer", 1)
    if digits * digit_size**2 > 0.5 * size**2:  # random placement without overlap needs room
        most = max(1, int(0.5 * size**2 // digit_size**2))
        raise BadArgument("digits", digits, f"at most {most} on a {size}px canvas", most)
    if not isinstance(clutter, int) or clutter < 0:
        raise BadArgument("clutter", clutter, "0 or more fragments", 0)
    if not isinstance(fragment, int) or not 0 < fragment <= digit_size:
        raise BadArgument("fragment", fragment, f"a side length from 1 to {digit_size}", 8)


def make_canvases(
    images: torch.Tensor,
    labels: torch.Tensor,
    count: int = 500,
    size: int = 128,
    digits: int = 1,
    clutter: int = 0,
    fragment: int = 8,
    seed: int = 0,
) -> Canvases:
    """`count` canvases of `size` pixels, each with `digits` digits drawn from `images` (N, C, h, w) uint8."""
    _, channels, height, width = images.shape
    check_canvas_config(count, size, digits, clutter, fragment, max(height, width))
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(count, channels, size, size, dtype=torch.uint8)
    all_boxes, all_labels = [], []
    for n in range(count):
        canvas = out[n]
        for _ in range(clutter):  # fragments first; digits are pasted over them with max, never hidden
            piece = _fragment(images, fragment, g)
            y, x = torch.randint(0, size - fragment + 1, (2,), generator=g).tolist()
            region = canvas[:, y : y + fragment, x : x + fragment]
            torch.maximum(region, piece, out=region)
        boxes, picked = [], torch.randint(0, len(images), (digits,), generator=g)
        for y, x, index in zip(*_positions(digits, size, height, width, g), picked.tolist(), strict=True):
            digit = images[index]
            region = canvas[:, y : y + height, x : x + width]
            torch.maximum(region, digit, out=region)
            rows = digit.amax(dim=(0, 2)).nonzero().flatten()
            cols = digit.amax(dim=(0, 1)).nonzero().flatten()
            boxes.append([x + cols[0].item(), y + rows[0].item(), x + cols[-1].item() + 1, y + rows[-1].item() + 1])
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32))
        all_labels.append(labels[picked].long())
    return Canvases(out, all_boxes, all_labels)


def _positions(digits: int, size: int, height: int, width: int, g: torch.Generator) -> tuple[list[int], list[int]]:
    """Top-left corners whose digit squares do not overlap: place one digit after another, and start over
    when a digit finds no free place (an early digit may block the rest)."""
    for _ in range(PLACEMENT_TRIES):
        ys: list[int] = []
        xs: list[int] = []
        for _ in range(100 * digits):
            y = int(torch.randint(0, size - height + 1, (1,), generator=g))
            x = int(torch.randint(0, size - width + 1, (1,), generator=g))
            if all(abs(y - oy) >= height or abs(x - ox) >= width for oy, ox in zip(ys, xs, strict=True)):
                ys.append(y)
                xs.append(x)
                if len(ys) == digits:
                    return ys, xs
    raise BadArgument("digits", digits, f"fewer digits: {digits} did not fit on a {size}px canvas", 1)


def _fragment(images: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
    """A side x side patch with ink, cut from a random digit."""
    _, _, height, width = images.shape
    for _ in range(PLACEMENT_TRIES):
        digit = images[torch.randint(0, len(images), (1,), generator=g).item()]
        y = torch.randint(0, height - side + 1, (1,), generator=g).item()
        x = torch.randint(0, width - side + 1, (1,), generator=g).item()
        piece = digit[:, y : y + side, x : x + side]
        if piece.float().mean() > 0.1 * 255 * min(1.0, 64 / side**2):  # not an almost empty corner
            return piece
    return piece


# ---------------------------------------------------------------- the background class
BACKGROUND_MARGIN = 14  # a digit whose centre is this far from a patch's centre (half a patch) is not whole in it
BACKGROUND_REACH = 24  # ... and at most this far, so part of its ink shows (MNIST ink is ~20 px across)


def background_patches(
    images: torch.Tensor, count: int, fragment: int = 8, seed: int = 0, most_fragments: int = 4
) -> torch.Tensor:
    """`count` digit-sized (C, h, w) uint8 patches of canvas that hold no whole digit: OverFeat's background
    class for a sliding-window classifier. A quarter are empty, the others hold up to `most_fragments`
    fragments of digits and, in half of them, the edge of a neighbouring digit whose centre lies between
    BACKGROUND_MARGIN and BACKGROUND_REACH pixels away (what the window sees between digits on a canvas)."""
    _, channels, height, width = images.shape
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(count, channels, height, width, dtype=torch.uint8)
    for n in range(count):
        kind = int(torch.randint(0, 4, (1,), generator=g))
        if kind == 0:
            continue  # empty: the black of a canvas
        _fragments(out[n], images, most_fragments, fragment, g)
        if kind >= 2:
            _neighbour_edge(out[n], images, g)
    return out


def context_digits(
    images: torch.Tensor, count: int, fragment: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` digits as a box's crop on a canvas shows them: half with the edge of a neighbouring digit, half
    with one or two fragments of digits, each still its own digit. Returns the images and which of `images`
    each one is (its label)."""
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, len(images), (count,), generator=g)
    out = images[which].clone()
    for n in range(count):
        if torch.rand(1, generator=g) < 0.5:
            _neighbour_edge(out[n], images, g)
        else:
            _fragments(out[n], images, 2, fragment, g)
    return out, which


def _fragments(patch: torch.Tensor, images: torch.Tensor, most: int, side: int, g: torch.Generator) -> None:
    """Paste 1 to `most` side x side fragments of random digits anywhere on the patch (half may hang out)."""
    height = patch.shape[1]
    for _ in range(int(torch.randint(1, most + 1, (1,), generator=g))):
        y, x = torch.randint(-side // 2, height - side // 2 + 1, (2,), generator=g).tolist()
        _paste(patch, _fragment(images, side, g), y, x)


def _neighbour_edge(patch: torch.Tensor, images: torch.Tensor, g: torch.Generator) -> None:
    """Paste a random digit whose centre lies BACKGROUND_MARGIN to BACKGROUND_REACH pixels from the patch's
    along one axis (anything along the other): its edge shows, as a neighbour's does on a canvas."""
    far = int(torch.randint(BACKGROUND_MARGIN, BACKGROUND_REACH + 1, (1,), generator=g))
    near = int(torch.randint(-BACKGROUND_REACH, BACKGROUND_REACH + 1, (1,), generator=g))
    sign = 1 if torch.rand(1, generator=g) < 0.5 else -1
    dy, dx = (sign * far, near) if torch.rand(1, generator=g) < 0.5 else (near, sign * far)
    _paste(patch, images[torch.randint(0, len(images), (1,), generator=g).item()], dy, dx)


def _paste(canvas: torch.Tensor, piece: torch.Tensor, y: int, x: int) -> None:
    """Paste `piece` (C, h, w) with its top-left corner at (y, x) by maximum, clipped at the canvas's edges."""
    _, h, w = piece.shape
    _, height, width = canvas.shape
    top, left, bottom, right = max(0, y), max(0, x), min(height, y + h), min(width, x + w)
    if top >= bottom or left >= right:
        return
    region = canvas[:, top:bottom, left:right]
    torch.maximum(region, piece[:, top - y : bottom - y, left - x : right - x], out=region)
