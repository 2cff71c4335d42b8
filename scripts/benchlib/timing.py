"""The clock: wait for the device, alternate the two sides of a ratio, lap the parts of a run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

Parts = dict[str, float]  # seconds by named part of a run


def sync(device: torch.device) -> None:
    """Wait for the queued GPU work, so that a time includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(a: Callable[[], float], b: Callable[[], float], rounds: int) -> tuple[float, float]:
    """Median of a() and of b(), called alternately after one warm-up each (a passing load hits both alike)."""
    a(), b()
    xs, ys = [], []
    for _ in range(rounds):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys)


def alternate_parts(
    a: Callable[[], Parts], b: Callable[[], Parts], rounds: int
) -> tuple[tuple[float, Parts], tuple[float, Parts]]:
    """alternate() for functions that return seconds by part: (median total, median of each part) of each side."""
    a(), b()  # warm-up
    runs = [(a(), b()) for _ in range(rounds)]

    def medians(parts: list[Parts]) -> tuple[float, Parts]:
        total = statistics.median(sum(p.values()) for p in parts)
        return total, {k: round(statistics.median(p[k] for p in parts), 2) for k in parts[0]}

    return medians([r[0] for r in runs]), medians([r[1] for r in runs])


class Laps:
    """Seconds spent in named parts of a run: lap("read") closes the part that began at the previous lap."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.tic = device, time.perf_counter()
        self.parts: Parts = {}

    def __call__(self, name: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + now - self.tic
        self.tic = now
