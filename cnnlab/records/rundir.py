"""The files a run leaves in its dir, named once, and the JSON-lines logs among them (one row per line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = "metrics.json"  # what the task computed (flat keys): the report's and the API's source
HISTORY = "history.jsonl"  # a training run's evaluations, one row per evaluation
TRAIN_LOG = "packed_train.jsonl"  # a packed member's train/loss and lr at each log point of its pack
CHECKPOINTS = "checkpoints"  # last.pt (to resume) and best.pt (to test, evaluate, explain)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines log's rows; none when it does not exist."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_rows(path: Path, step: int) -> None:
    """Keep the rows up to `step`: a resumed run redoes the later ones (and drops a line cut by a kill)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(kept))
