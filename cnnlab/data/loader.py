"""The fast data path: a whole split as one uint8 tensor on the run's device, batched on the device.

Shuffling, pad-and-crop, horizontal flips, rotations and normalization are vectorized over the batch: no per-sample
Python, no PIL, no worker processes. The permutation and augmentation of epoch e follow from (seed, e)
alone, drawn for the whole epoch up front, so a run resumed at batch i of epoch e sees the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from cnnlab.errors import BadArgument


def split_train_val(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/val indices: the same seed always holds out the same val_size samples."""
    if not 0 < val_size < n:
        raise BadArgument("val_size", val_size, f"between 1 and {n - 1} (the training set has {n})", min(n // 10, 5000))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class DeviceLoader:
    """Batches of normalized float images and labels from uint8 data held on `device`."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        pad: int = 0,
        flip: bool = False,
        rotate: float = 0.0,
        seed: int = 0,
        channels_last: bool = False,
        drop_last: bool = False,
        uncropped: torch.Tensor | None = None,
    ) -> None:
        if batch_size <= 0:
            raise BadArgument("batch_size", batch_size, "a positive integer", 128)
        if drop_last and len(y) < batch_size:
            raise BadArgument("batch_size", batch_size, f"at most {len(y)} (the split's size) to drop partial batches")
        device = torch.device(device)
        self.x = x.to(device, non_blocking=True)
        self.y = y.to(device, non_blocking=True)
        self.batch_size, self.shuffle, self.pad, self.flip, self.seed = batch_size, shuffle, pad, flip, seed
        self.rotate = rotate  # degrees, either way
        self.drop_last = drop_last  # one batch shape (torch.compile); the epoch's permutation is unchanged
        # samples pad-and-crop leaves in place (background patches: a shift could bring a cut digit into view)
        self.uncropped = None if uncropped is None else uncropped.to(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Normalize uint8 pixels directly: (x - 255 mean) / (255 std).
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.y) // self.batch_size if self.drop_last else math.ceil(len(self.y) / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of `epoch`, beginning at batch index `start` (for exact resume)."""
        n, device = len(self.y), self.x.device
        order = offsets = flips = angles = None
        if self.shuffle or self.pad or self.flip or self.rotate:
            g = epoch_generator(self.seed, epoch)
            order = torch.randperm(n, generator=g).to(device) if self.shuffle else None
            if self.pad:
                offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(device)
                if self.uncropped is not None:
                    offsets[self.uncropped if order is None else self.uncropped[order]] = self.pad  # by position
            if self.flip:
                flips = (torch.rand(n, generator=g) < 0.5).to(device)
            if self.rotate:  # drawn last: runs without rotation keep their epochs' streams
                angles = ((torch.rand(n, generator=g) * 2 - 1) * self.rotate).to(device)
        for i in range(start, len(self)):
            idx = slice(i * self.batch_size, (i + 1) * self.batch_size)
            rows = order[idx] if order is not None else idx
            xb, yb = self.x[rows], self.y[rows]
            if angles is not None:
                xb = rotated(xb.float(), angles[idx])
            if offsets is not None or flips is not None:
                xb = crop_and_flip(
                    xb,
                    self.pad,
                    offsets[idx] if offsets is not None else None,
                    flips[idx] if flips is not None else None,
                )
            xb = (xb.float() * self.scale - self.shift).contiguous(memory_format=self.memory_format)
            yield xb, yb

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()


def rotated(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Each image turned about its centre by its angle (bilinear, black where the turn brings in the outside),
    as torchvision's RandomRotation, for the whole batch in one grid sample."""
    theta = torch.deg2rad(degrees.float())
    cos, sin, zero = theta.cos(), theta.sin(), torch.zeros_like(theta)
    matrix = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def crop_and_flip(x: torch.Tensor, pad: int, offsets: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
    """Zero-pad by `pad`, crop back to the input size at per-sample (row, col) offsets, then mirror where `flips`.

    One gather of precomputed pixel indices does all three for the whole batch (as RandomCrop(padding) followed
    by RandomHorizontalFlip would, per sample).
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = torch.arange(h, device=x.device).expand(b, h)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flips is not None:
        cols = torch.where(flips[:, None], w - 1 - cols, cols)
    if offsets is not None:
        rows, cols = rows + offsets[:, :1], cols + offsets[:, 1:]
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, index).view(b, c, h, w)
