"""A value is written once: each key's default lives in its schema (cnnlab/config/schema.py), not in the YAML."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from cnnlab.config import CONF_DIR
from cnnlab.config.schema import SCHEMAS

SCHEMA_LINE = re.compile(r"/schema_(\w+?)_(\w+)@_here_")


def option_files() -> list[tuple[Path, type]]:
    """Each group option YAML with the schema it starts from."""
    found = []
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        match = SCHEMA_LINE.search(path.read_text())
        if match and match.group(1) in SCHEMAS:
            found.append((path, SCHEMAS[match.group(1)][match.group(2)]))
    return found


def restated(node: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys of `node` whose plain value is the schema's default; interpolations (${...}) are not values."""
    same = []
    for key, value in node.items():
        if key == "defaults" or key not in defaults:
            continue
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            same += restated(value, defaults[key], f"{prefix}{key}.")
        elif value == defaults[key] and not (isinstance(value, str) and "${" in value):
            same.append(f"{prefix}{key}")
    return same


def plain_values(node: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            keys += plain_values(value, f"{prefix}{key}.")
        elif not (isinstance(value, str) and "${" in value):
            keys.append(f"{prefix}{key}")
    return keys


@pytest.mark.parametrize(
    ("path", "schema"), option_files(), ids=lambda v: "/".join(v.parts[-2:]) if isinstance(v, Path) else ""
)
def test_a_yaml_option_carries_no_default_of_its_schema(path: Path, schema: type) -> None:
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    defaults = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
    assert restated(node, defaults) == [], f"{path} restates its schema's defaults"
    if sum(s is schema for _, s in option_files()) == 1:
        # the schema serves only this option: any plain value here would be a second default
        assert plain_values(node) == [], f"{path} sets values its schema {schema.__name__} should hold"


def test_every_group_option_with_a_schema_is_checked() -> None:
    checked = {path.relative_to(CONF_DIR).as_posix() for path, _ in option_files()}
    for group in SCHEMAS:
        for path in (CONF_DIR / group).glob("*.yaml"):
            assert path.relative_to(CONF_DIR).as_posix() in checked


def test_the_check_catches_a_restated_and_a_second_default() -> None:
    defaults = {"lr": 0.1, "canvas": {"count": 500, "seed": 0}}
    assert restated({"lr": 0.1, "canvas": {"count": 500, "seed": "${seed}"}}, defaults) == ["lr", "canvas.count"]
    assert plain_values({"lr": 0.2, "canvas": {"seed": "${seed}"}}) == ["lr"]
