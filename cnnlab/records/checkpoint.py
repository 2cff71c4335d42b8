"""Checkpoints: written atomically, loaded without executing code from the file.

A checkpoint is a dict of tensors and plain Python values (the resolved config among them), saved with
torch.save and read back with weights_only=True, so a file crafted to run code on load is refused.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CheckpointError

FORMAT = "cnnlab-checkpoint-2"  # the layout of what save() writes; another number is refused
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes (torch's weights_only error embeds some)


def save(state: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file beside `path`, fsync, then rename: a kill leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Pass checkpoint=<run dir>/checkpoints/best.pt")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; a cut-off one has no central directory
        raise CheckpointError(
            f"{path} is truncated or corrupt, or was not written by cnnlab (its checkpoints are zip files of "
            "tensors); refused to load it. Use another checkpoint, e.g. <run dir>/checkpoints/best.pt."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain values, which could run "
            f"code on load ({_refusal_reason(e)}). Only load checkpoints written by cnnlab."
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read ({e}).") from e
    found = state.get("format") if isinstance(state, dict) else None
    if isinstance(found, str) and found.startswith("cnnlab-checkpoint-") and found != FORMAT:
        raise CheckpointError(
            f"{path} is a checkpoint of format {found}, and this cnnlab reads {FORMAT}: train the model again "
            "with this version, or load it with the cnnlab version that wrote it."
        )
    if found != FORMAT:
        raise CheckpointError(f"{path} is not a cnnlab checkpoint (no '{FORMAT}' marker).")
    return state


def header(path: str | Path) -> dict[str, Any]:
    """The checkpoint's plain values (config, format, steps) without reading its tensors: they are mapped from the
    file, not loaded (the checks before a run, which then loads the checkpoint once)."""
    return load(path, mmap=True)


def _refusal_reason(error: Exception) -> str:
    """What torch's weights_only unpickler refused, in one line of plain text: the offending global when torch
    names it (e.g. `Unsupported global: GLOBAL io.open was not an allowed global by default`), else the first
    line of its message; without colour codes either way."""
    text = ANSI.sub("", str(error))
    named = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if named:
        return named.group(1).split(". ")[0].strip().rstrip(".")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))


def check_fits(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Say what differs when weights do not fit a model (depth, width, shortcut, classes...)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    shapes = [
        f"{k}: model {expected[k]} vs checkpoint {found[k]}"
        for k in expected.keys() & found.keys()
        if expected[k] != found[k]
    ]
    if missing or extra or shapes:
        lines = [f"{path} does not fit this model:"]
        if missing:
            lines.append(f"  {len(missing)} tensors missing from the checkpoint, e.g. {missing[:3]}")
        if extra:
            lines.append(f"  {len(extra)} tensors the model lacks, e.g. {extra[:3]}")
        lines += [f"  {s}" for s in sorted(shapes)[:5]]
        lines.append("  (a different depth, width, shortcut, batch_norm or number of classes)")
        raise CheckpointError("\n".join(lines))
