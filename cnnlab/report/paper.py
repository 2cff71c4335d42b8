"""What the report checks a sweep against: He et al. 2016's CIFAR-10 numbers and the degradation verdict.

Reference test errors (%) on CIFAR-10, the paper's recipe (cnnlab's experiment=resnet_cifar10_paper):
- residual nets: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  Table 6 (option A shortcuts). ResNet-110 is the best of 5 runs (their mean: 6.61 ± 0.16); the others are
  single numbers as printed.
- plain nets: the paper plots them only (Figure 6, left). The values are approximate means of 5 runs from
  published reproductions of the same recipe, so the table marks them with "≈".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cnnlab.report.runs import Run

RESIDUAL_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PLAIN_ERROR = {20: 9.8, 56: 13.0}

# The paper's recipe as cnnlab's config keys (conf/experiment/resnet_cifar10_paper.yaml); a run that differs
# on any of these still gets the reference column, with a note naming the differences.
RECIPE: dict[str, Any] = {
    "trainer.max_steps": 64000,
    "trainer.batch_size": 128,
    "optimizer.lr": 0.1,
    "optimizer.momentum": 0.9,
    "optimizer.weight_decay": 1e-4,
    "scheduler.milestones": [32000, 48000],
    "dataset.val_size": 5000,
    "dataset.augment.pad": 4,
    "dataset.augment.flip": True,
    "model.width": 16,
}


def is_cifar10(runs: Sequence[Run]) -> bool:
    """Whether every run trained on CIFAR-10: the only data the reference numbers are for."""
    return bool(runs) and all(run.get("dataset.name") == "cifar10" for run in runs)


def reference(depth: Any, residual: Any) -> tuple[float, str] | None:
    """The reference test error (%) of a depth and kind, and how to show it; None when there is none."""
    if residual is None or depth is None:
        return None
    if residual:
        return (RESIDUAL_ERROR[depth], f"{RESIDUAL_ERROR[depth]:.2f}") if depth in RESIDUAL_ERROR else None
    return (PLAIN_ERROR[depth], f"≈{PLAIN_ERROR[depth]:.1f}") if depth in PLAIN_ERROR else None


def recipe_differences(runs: Sequence[Run]) -> list[str]:
    """The recipe keys on which some run differs from the paper, as `key=value (paper: value)`."""
    differences = []
    for key, paper in RECIPE.items():
        values = {_plain(run.get(key)) for run in runs} - {None}
        other = sorted((v for v in values if not _same(v, paper)), key=str)
        if other:
            differences.append(f"{key}={','.join(map(str, other))} (paper: {paper})")
    shortcuts = {run.get("model.shortcut") for run in runs if run.get("model.residual")} - {None, "A"}
    if shortcuts:
        differences.append(f"model.shortcut={','.join(sorted(shortcuts))} (paper's Table 6: A)")
    return differences


def _plain(value: Any) -> Any:
    """Config values as hashable plain Python (lists from OmegaConf become tuples)."""
    return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def _same(value: Any, paper: Any) -> bool:
    if isinstance(paper, list):
        return tuple(paper) == value
    try:
        return float(value) == float(paper)
    except (TypeError, ValueError):
        return value == paper


def verdict(errors: dict[tuple[str, int], float]) -> str | None:
    """One line: does deeper plain get worse while deeper residual does not?

    `errors` maps (kind, depth) to test error (%), kind "plain" or "residual". None unless both kinds have the
    same two or more depths; then the shallowest and deepest of those are compared.
    """
    depths = sorted({d for k, d in errors if k == "plain"} & {d for k, d in errors if k == "residual"})
    if len(depths) < 2:
        return None
    low, high = depths[0], depths[-1]
    plain = errors[("plain", high)] - errors[("plain", low)]
    residual = errors[("residual", high)] - errors[("residual", low)]
    shows = plain > 0 and residual <= 0
    return (
        f"plain {high} is {_points(plain)} plain {low}; residual {high} is {_points(residual)} "
        f"residual {low}: the sweep {'shows' if shows else 'does not show'} the degradation "
        "(deeper plain is worse, deeper residual is not)"
    )


def _points(difference: float) -> str:
    if round(difference, 2) == 0:
        return "as good as"
    return f"{abs(difference):.2f} points {'worse' if difference > 0 else 'better'} than"
