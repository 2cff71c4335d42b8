"""Which code a run ran: git commit and dirty tree (or the installed version), library versions, host and device.

Every run records `provenance(device)` in metrics.json, status.json, its checkpoints and its W&B config;
`cnnlab report` warns (`mixed_code`) when the runs of one table come from different code. Nothing here may fail
a run: without git, outside a checkout or when git hangs, the git fields are None.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections import Counter
from collections.abc import Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 5.0
# The fields that make two runs' code differ, in the order the warning names them.
CODE_FIELDS = ("commit", "cnnlab", "torch")


def provenance(device: Any = None, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """This process's code, versions and host, and `device` (a torch.device or str) with its GPU's name.

    `previous` is the record a resumed checkpoint carries: kept under `resumed_from` when its code differs.
    """
    shown = None if device is None else str(device)
    record = {**_package_code(), **versions(), "host": platform.node(), **device_info(shown)}
    if previous and code_of(previous) != code_of(record):
        record["resumed_from"] = {k: v for k, v in previous.items() if k != "resumed_from"}
    return record


@cache
def _package_code() -> dict[str, Any]:
    """The code of this process: the checkout cnnlab lives in (the folder above the package; editable installs)."""
    return code_version(Path(__file__).resolve().parents[2])


def code_version(root: Path) -> dict[str, Any]:
    """`commit`, `dirty` and `diff` (a hash of the uncommitted changes to tracked files) of the checkout at root.

    Without a checkout of its own at root (an installed package), the commit pip recorded for a VCS install,
    else None; `dirty` and `diff` are then None.
    """
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve():  # not a checkout, or one we merely sit inside
        return {"commit": _installed_commit(), "dirty": None, "diff": None}
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain")  # tracked changes and untracked files; ignored ones (outputs/) not
    dirty = None if status is None else bool(status)
    diff = _git(root, "diff", "HEAD") if dirty else None
    return {
        "commit": commit,
        "dirty": dirty,
        "diff": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None,  # two dirty trees: the same edits?
    }


def _git(root: Path, *args: str) -> str | None:
    """git's output, stripped; None when git is missing, fails or takes too long."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"},  # never lock the user's index
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _installed_commit() -> str | None:
    """The commit `pip install git+...` recorded in the package's direct_url.json (PEP 610), if any."""
    try:
        text = metadata.distribution("cnnlab").read_text("direct_url.json")
        commit = json.loads(text or "{}").get("vcs_info", {}).get("commit_id")
    except (metadata.PackageNotFoundError, ValueError, AttributeError):
        return None
    return str(commit) if commit else None


@cache
def versions() -> dict[str, Any]:
    """cnnlab, Python, torch, torchvision and CUDA versions (torch is loaded by then in a run)."""
    import sys

    import torch

    return {
        "cnnlab": _version("cnnlab"),
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),  # a str subclass a weights_only load refuses
        "torchvision": _version("torchvision"),
        "cuda": torch.version.cuda,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        if package == "cnnlab":  # run from a source tree that was never installed
            from cnnlab.version import __version__

            return __version__
        return None


@cache
def device_info(device: str | None) -> dict[str, Any]:
    """The device as named in the config, and the GPU's name and cuDNN version on CUDA."""
    if device is None:  # a status record written before the run picked its device
        return {}
    if not device.startswith("cuda"):
        return {"device": device, "gpu": None}
    import torch

    return {"device": device, "gpu": torch.cuda.get_device_name(device), "cudnn": torch.backends.cudnn.version()}


def code_of(record: dict[str, Any] | None) -> tuple[str, ...]:
    """What must match for two runs to have run the same code; "unknown" for a run recorded before provenance."""
    return tuple(_code_text(record, key) for key in CODE_FIELDS)


def _code_text(record: dict[str, Any] | None, key: str) -> str:
    if record is None:
        return "unknown"
    if key != "commit":
        return str(record.get(key) or "unknown")
    commit = record.get("commit")
    if commit is None:
        return "no git commit"
    short = str(commit)[:8]
    if record.get("dirty"):
        return f"{short}+changes {record['diff']}" if record.get("diff") else f"{short}+untracked files"
    return short


def mixed_code(records: Sequence[dict[str, Any] | None]) -> str | None:
    """One line when the runs (their provenance records; None for none) come from different code, else None."""
    differ = []
    for i, key in enumerate(CODE_FIELDS):
        counts = Counter(code_of(r)[i] for r in records)
        if len(counts) > 1:
            shown = ", ".join(f"{value} ({n} run{'' if n == 1 else 's'})" for value, n in counts.most_common())
            differ.append(f"{'cnnlab commit' if key == 'commit' else key} {shown}")
    if not differ:
        return None
    return f"the {len(records)} runs come from different code: " + "; ".join(differ)
