"""Tasks: small functions that compose parts and call the Trainer. Imported on demand (start-up time)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

TASKS = ("classify", "evaluate", "localize", "cam")


def get(name: str) -> Callable[[Any], float]:
    if name not in TASKS:
        from cnnlab.errors import ConfigError

        raise ConfigError("task.name", name, f"one of {', '.join(TASKS)}", "task=classify")
    return importlib.import_module(f"cnnlab.tasks.{name}").run
