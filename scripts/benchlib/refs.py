"""The references cnnlab is timed against: plain PyTorch and torchvision, written as one would by hand.

They train the same model (cnnlab's ResNet) and read the files with cnnlab's reader (what torchvision's CIFAR10
does), so a ratio measures the loop, the loader and the defaults, nothing else.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchlib.data import CIFAR_MEAN, CIFAR_STD, cifar_like
from benchlib.timing import Laps, Parts, sync
from cnnlab.data.sources import load_cifar10
from cnnlab.models.resnet import ResNet

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    if precision == "32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The paper's optimizer (conf/optimizer/sgd.yaml); both sides use it."""
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


# ------------------------------------------------------------------------------------------------ the bare loop
def bare_step(model, opt, xb: torch.Tensor, yb: torch.Tensor, precision: str, device: torch.device) -> None:
    """The minimal hand-written PyTorch training step the Trainer is measured against."""
    with autocast(precision, device):
        loss = F.cross_entropy(model(xb).float(), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bare_loop_img_per_s(model, opt, batches: Batches, precision: str, device: torch.device) -> float:
    """`step`'s reference: bare_step over ready-made device batches, nothing else in the loop; img/s."""
    model.train()
    sync(device)
    tic = time.perf_counter()
    for xb, yb in batches:
        bare_step(model, opt, xb, yb, precision, device)
    sync(device)
    return sum(len(yb) for _, yb in batches) / (time.perf_counter() - tic)


def step_time_ms(device: torch.device, precision: str, channels_last: bool, batch: int, steps: int = 5) -> float:
    """Median time of a bare ResNet-20 training step after one warm-up step."""
    x, y = cifar_like(batch)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = ResNet(depth=20).to(device).to(memory_format=fmt)
    xb = ((x.float() / 255 - 0.5) / 0.25).to(device).contiguous(memory_format=fmt)
    yb = y.to(device)
    opt = sgd(model)
    times = []
    for _ in range(steps + 1):
        sync(device)
        tic = time.perf_counter()
        bare_step(model, opt, xb, yb, precision, device)
        sync(device)
        times.append(time.perf_counter() - tic)
    return statistics.median(times[1:]) * 1000


# ------------------------------------------------------------------------------------------------ the usual recipe
class ArrayDataset(torch.utils.data.Dataset):
    """The usual recipe: one PIL image per sample through torchvision transforms."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def usual_loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int = 128, train: bool = True
) -> torch.utils.data.DataLoader:
    """torchvision's CIFAR-10 recipe: RandomCrop(32, 4) and flips for training, ToTensor and Normalize."""
    from torchvision import transforms as T

    augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    transform = T.Compose([*augment, T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    ds = ArrayDataset(x.permute(0, 2, 3, 1).numpy(), y.numpy(), transform)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=CORES)


def dataloader_pass(x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device) -> Callable[[], float]:
    """`data`'s reference: a function that runs one epoch of usual_loader, batches sent to `device`; img/s."""
    loader = usual_loader(x, y, batch)

    def one_epoch() -> float:
        tic = time.perf_counter()
        for xb, _ in loader:
            xb.to(device, non_blocking=True)
        sync(device)
        return len(x) / (time.perf_counter() - tic)

    return one_epoch


def epoch_usual(root: Path, val_size: int, device: torch.device, batch: int) -> Parts:
    """`epoch`'s reference: files to arrays, DataLoader with PIL transforms, fp32 NCHW, then evaluation on val."""
    lap = Laps(device)
    torch.manual_seed(0)
    model = ResNet(depth=20).to(device)
    opt = sgd(model)
    lap("build")
    data = load_cifar10(root, download=False)  # pickle batches to arrays, as torchvision.datasets.CIFAR10 does
    train_x, val_x = data.train_x[val_size:], data.train_x[:val_size]
    train_y, val_y = data.train_y[val_size:], data.train_y[:val_size]
    lap("read")
    model.train()
    for xb, yb in usual_loader(train_x, train_y, batch):
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    lap("train")
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in usual_loader(val_x, val_y, 1000, train=False):
            correct += int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
    lap("evaluate")
    return lap.parts
