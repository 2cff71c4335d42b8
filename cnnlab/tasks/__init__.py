"""Tasks: small functions that compose parts, call the Trainer or a map method and return a TaskResult.

task=localize is task=cam's canvas evaluation with the localizer's defaults (task.method=fully-conv: the
classifier applied at every cell of the last maps; conf/task/localize.yaml), so both run `cnnlab.tasks.cam`.
Imported on demand: a run loads only its task's module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

MODULES = {"classify": "classify", "evaluate": "evaluate", "localize": "cam", "cam": "cam"}


def get(name: str) -> Callable[[Any], Any]:
    if name not in MODULES:
        from cnnlab.errors import ConfigError

        raise ConfigError("task.name", name, f"one of {', '.join(MODULES)}", "task=classify")
    return importlib.import_module(f"cnnlab.tasks.{MODULES[name]}").run
