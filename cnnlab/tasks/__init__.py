"""Tasks: small functions that compose parts, call the Trainer and return a TaskResult. Imported on demand."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

TASKS = ("classify", "evaluate", "localize", "cam")


def get(name: str) -> Callable[[Any], Any]:
    if name not in TASKS:
        from cnnlab.errors import ConfigError

        raise ConfigError("task.name", name, f"one of {', '.join(TASKS)}", "task=classify")
    return importlib.import_module(f"cnnlab.tasks.{name}").run
