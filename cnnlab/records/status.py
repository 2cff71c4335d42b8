"""status.json: how each run or sweep job ended, in its own dir (the report and whole-sweep resume read it)."""

from __future__ import annotations

import json
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnlab.records.provenance import provenance
from cnnlab.records.results import write_json

STATUS_FILE = "status.json"


# running | completed | failed | interrupted (with step and resume command) | diverged (with step) |
# rejected (an error before any work: the report skips the dir)


def write_status(
    job_dir: Path, status: str, overrides: Sequence[str], error: BaseException | None = None, **fields: Any
) -> None:
    record: dict[str, Any] = {"status": status, "overrides": list(overrides), **fields}
    record.setdefault("provenance", provenance())  # a record restored after a refused resume keeps its own
    job_id = (read_status(job_dir) or {}).get("job_id")
    if job_id is not None:  # a submitit job requeued after a pre-emption finds its own id (cnnlab.sweeps.resume)
        record.setdefault("job_id", job_id)
    if error is not None:
        record["error"] = f"{type(error).__name__}: {error}"
        if status == "failed":  # an unexpected failure: keep where it happened
            record["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_dir / STATUS_FILE, record)


def read_status(job_dir: Path) -> dict[str, Any] | None:
    path = job_dir / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def sweep_statuses(sweep_dir: Path) -> dict[Path, dict[str, Any] | None]:
    """Each job dir of a sweep (a dir holding .hydra/) with its status record, or None if it has none."""
    jobs = sorted({p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")}, key=_natural)
    return {job: read_status(job) for job in jobs}


def _natural(path: Path) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)
