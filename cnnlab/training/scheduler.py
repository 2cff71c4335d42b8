"""Learning-rate schedules as factor(step) functions for LambdaLR, stepped once per optimizer step.

Each config in conf/scheduler/ is a partial of one of these; the Trainer completes it with the run's
steps_per_epoch and total_steps, so milestones can be given in epochs or in steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from cnnlab.errors import BadArgument

Factor = Callable[[int], float]


def _with_warmup(factor: Factor, warmup_steps: int, warmup_factor: float, warmup_mode: str) -> Factor:
    if warmup_steps < 0:
        raise BadArgument("warmup_steps", warmup_steps, "0 or more", 0)
    if warmup_mode not in ("linear", "constant"):
        raise BadArgument("warmup_mode", warmup_mode, "linear or constant", "linear")
    if not warmup_steps:
        return factor

    def warm(step: int) -> float:
        if step >= warmup_steps:
            return factor(step)
        if warmup_mode == "constant":
            return warmup_factor
        return warmup_factor + (1.0 - warmup_factor) * step / warmup_steps

    return warm


def constant(
    *,
    steps_per_epoch: int,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_factor: float = 0.1,
    warmup_mode: str = "linear",
) -> Factor:
    return _with_warmup(lambda step: 1.0, warmup_steps, warmup_factor, warmup_mode)


def multistep(
    *,
    steps_per_epoch: int,
    total_steps: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    unit: str = "epoch",
    warmup_steps: int = 0,
    warmup_factor: float = 0.1,
    warmup_mode: str = "linear",
) -> Factor:
    if unit not in ("epoch", "step"):
        raise BadArgument("unit", unit, "epoch or step", "epoch")
    per = steps_per_epoch if unit == "epoch" else 1
    steps = sorted(int(m) * per for m in milestones)
    return _with_warmup(lambda step: gamma ** sum(step >= m for m in steps), warmup_steps, warmup_factor, warmup_mode)


def cosine(
    *,
    steps_per_epoch: int,
    total_steps: int,
    min_factor: float = 0.0,
    warmup_steps: int = 0,
    warmup_factor: float = 0.1,
    warmup_mode: str = "linear",
) -> Factor:
    span = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        t = min(1.0, max(0, step - warmup_steps) / span)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return _with_warmup(factor, warmup_steps, warmup_factor, warmup_mode)
