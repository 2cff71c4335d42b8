"""95% bootstrap intervals over the units a metric is measured on (canvases, images), and paired differences.

Every metric here is a ratio of sums over units (loc_acc = located digits / digits, a mean = values / count),
so a resample of the units recomputes it exactly as it is defined. Percentile intervals of REPS resamples; the
resamples are seeded by the number of units alone, so two methods scored on the same canvases are resampled
alike (their intervals and their paired difference use the same draws), and the same values give the same
interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

REPS = 2000
LEVEL = 0.95


def draws(units: int, reps: int = REPS) -> Tensor:
    """(reps, units) indices of units drawn with replacement, the same for the same number of units."""
    generator = torch.Generator().manual_seed(units)
    return torch.randint(units, (reps, units), generator=generator)


def as_tensor(values: Sequence[float] | Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float64).flatten()


def units(num: Sequence[float] | Tensor, den: Sequence[float] | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-unit numerators and denominators as float64 (den None: ones, a mean)."""
    num = as_tensor(num)
    den = torch.ones_like(num) if den is None else as_tensor(den)
    if len(num) != len(den):
        raise ValueError(f"num and den have {len(num)} and {len(den)} units: one of each per unit")
    return num, den


def sum_ratio(num: Tensor, den: Tensor) -> Tensor:
    """sum(num) / sum(den) over the last axis."""
    return num.sum(-1) / den.sum(-1).clamp(min=1e-300)


def replicates(num: Sequence[float] | Tensor, den: Sequence[float] | Tensor | None = None) -> Tensor:
    """(REPS,) the ratio sum(num) / sum(den) of each resample of the units (den None: a mean)."""
    num, den = units(num, den)
    index = draws(len(num))
    return sum_ratio(num[index], den[index])


def percentiles(samples: Tensor) -> list[float]:
    """[low, high]: the central LEVEL of the samples (NaN samples, e.g. a resample without any unit, dropped)."""
    samples = samples[~samples.isnan()]
    if len(samples) == 0:
        return [float("nan"), float("nan")]
    tail = (1 - LEVEL) / 2
    low, high = torch.quantile(samples, torch.tensor([tail, 1 - tail], dtype=samples.dtype))
    return [float(low), float(high)]


def interval(num: Sequence[float] | Tensor, den: Sequence[float] | Tensor | None = None) -> list[float]:
    """The 95% interval of sum(num) / sum(den) over units; [nan, nan] without units."""
    if len(as_tensor(num)) == 0:
        return [float("nan"), float("nan")]
    return percentiles(replicates(num, den))


def paired(
    a: Sequence[float] | Tensor,
    b: Sequence[float] | Tensor,
    den_a: Sequence[float] | Tensor | None = None,
    den_b: Sequence[float] | Tensor | None = None,
) -> dict[str, float]:
    """a's metric minus b's on the same units (unit i of a is unit i of b): the difference, its 95% interval and
    a two-sided bootstrap p-value (twice the share of resamples on the far side of 0)."""
    diff = replicates(a, den_a) - replicates(b, den_b)
    point = float(sum_ratio(*units(a, den_a)) - sum_ratio(*units(b, den_b)))
    low, high = percentiles(diff)
    far = min(float((diff <= 0).double().mean()), float((diff >= 0).double().mean()))
    return {"diff": point, "low": low, "high": high, "p": min(1.0, 2 * far)}
