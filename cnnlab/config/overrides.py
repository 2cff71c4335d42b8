"""Command-line overrides as Hydra parses them (`+key=`, `~key`, `key@pkg=`, quoting), never split by hand."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any


@cache
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def keys(overrides: Iterable[Any]) -> list[tuple[str, str]]:
    """(key, the override as written) for each override, e.g. ("trainer.lr", "+trainer.lr=0.1")."""
    lines = [str(o) for o in overrides]
    return [(o.key_or_group, line) for o, line in zip(_parser().parse_overrides(lines), lines, strict=True)]


def values(overrides: Iterable[Any]) -> dict[str, str]:
    """key -> its value as the command line wrote it (a deletion, `~key`, has none and is left out; a sweep,
    `seed=0,1`, keeps its text, as a multirun's own error may need to name it)."""
    found = {}
    for line in (str(o) for o in overrides):
        override = _parser().parse_override(line)
        if override.is_sweep_override():
            found[override.key_or_group] = override.get_value_string()
        elif not override.is_delete():
            found[override.key_or_group] = override.get_value_element_as_str()
    return found
