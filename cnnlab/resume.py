"""runtime.resume=<run dir | checkpoint | auto>: find the checkpoint a stopped run left, and check it is this run.

A resumed run continues in the run dir of the original (history, checkpoints, W&B run), so it ends exactly
as if it had never stopped. `auto` picks the newest run dir under paths.output_dir that was started with the
same overrides (runtime.resume aside) and has a checkpoint.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cnnlab.config import defines_result
from cnnlab.config_errors import MOVED
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.results import flat
from cnnlab.training.hardware import resumed_precision

ALLOWED = "a run dir, <run dir>/checkpoints/last.pt, or auto"


def _differs(key: str, before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether `key` would make this run compute something else than the checkpoint's (how it runs may change)."""
    if not defines_result(key):
        return False
    if key not in before:  # a key added to cnnlab since the checkpoint was written: same result at its neutral value
        return now.get(key) not in (None, 0, False)
    if before[key] is None and key not in now:  # a null node that now holds keys (0.1's dataset.augment: null)
        return any(k.startswith(key + ".") and v not in (None, 0, False) for k, v in now.items())
    return before[key] != now.get(key, "<unset>")


def find_checkpoint(spec: str, output_dir: Path, overrides: Sequence[str]) -> Path:
    """The checkpoint `runtime.resume=spec` points at; it lies in <run dir>/checkpoints/."""
    if spec == "auto":
        return newest_matching(output_dir, overrides)
    path = Path(spec)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
        if not path.is_file():
            raise CheckpointError(
                f"runtime.resume={spec}: {path} does not exist; the run stopped before its first checkpoint "
                "(or ran with runtime.checkpoint=false). Start it again without runtime.resume."
            )
        return path
    if path.is_file() and path.parent.name == "checkpoints":
        return path
    raise ConfigError("runtime.resume", spec, ALLOWED, "runtime.resume=auto")


def run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent


def without_resume(overrides: Iterable[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("+~").startswith(("runtime.resume=", "trainer.resume="))]


def comparable(overrides: Iterable[str]) -> list[str]:
    return sorted(without_resume(overrides))


def newest_matching(output_dir: Path, overrides: Sequence[str]) -> Path:
    wanted = comparable(overrides)
    found = []
    for file in Path(output_dir).rglob("overrides.yaml"):
        if file.parent.name != ".hydra":
            continue
        last = run_dir_of(file) / "checkpoints" / "last.pt"
        if last.is_file() and comparable(OmegaConf.load(file)) == wanted:
            found.append(last)
    if not found:
        shown = " ".join(wanted) or "(none)"
        raise CheckpointError(
            f"runtime.resume=auto: no run under {output_dir} was started with the overrides {shown} and has a "
            "checkpoint to resume. Pass the run dir instead: runtime.resume=<run dir>."
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint with a config that would compute something else (another model, lr...)."""
    before = {MOVED.get(k, k): v for k, v in flat(saved).items()}  # checkpoints of 0.1 kept runtime keys in trainer
    now = flat(current)
    if "trainer.precision" in now:  # auto as it resolves on this machine; an explicit change is allowed
        now["trainer.precision"] = resumed_precision(
            before.get("trainer.precision"), now["trainer.precision"], str(now.get("runtime.device", "auto"))
        )
    differ = [
        f"{key}: {before.get(key, '<unset>')!r} in the checkpoint, {now.get(key, '<unset>')!r} now"
        for key in sorted(before.keys() | now.keys())
        if _differs(key, before, now)
    ]
    if differ:
        original = run_dir_of(path) / ".hydra" / "overrides.yaml"
        hint = (
            f" The run was started with: {' '.join(map(shlex.quote, without_resume(OmegaConf.load(original))))}."
            if original.is_file()
            else ""
        )
        raise CheckpointError(
            f"{path} was written by a run with a different config, so this run cannot continue it:\n  "
            + "\n  ".join(differ[:10])
            + f"\nResume with the same overrides as the original run.{hint}"
        )


def resume_command(overrides: Sequence[str], run_dir: Path) -> str:
    """The command line that continues this run."""
    args = [*without_resume(overrides), f"runtime.resume={run_dir}"]
    return "python -m cnnlab " + " ".join(shlex.quote(a) for a in args)
