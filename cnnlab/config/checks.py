"""Validation: every value against its schema's range, in one place, once per job before anything is written."""

from collections.abc import Iterator
from dataclasses import fields, is_dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.config.messages import error_for, unknown_key, yaml_text
from cnnlab.config.schema import GROUPS, Config
from cnnlab.errors import ConfigError


def validate(cfg: DictConfig) -> None:
    """Check every value against its schema's range; raise the first ConfigError found."""
    for problem in problems(cfg):
        raise problem


def problems(cfg: DictConfig) -> Iterator[ConfigError]:
    yield from _check_node(cfg, "", Config)
    for group in GROUPS:
        node = cfg.get(group)
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if schema is not None and is_dataclass(schema):
            yield from _check_node(node, f"{group}.", schema)


def _check_node(node: DictConfig, prefix: str, schema: type) -> Iterator[ConfigError]:
    known = {f.name for f in fields(schema)} | ({"hydra"} if schema is Config else set())
    for extra in (k for k in node if k not in known and not str(k).startswith("_")):  # added with +key=
        yield unknown_key(f"{prefix}{extra}", yaml_text(node._get_node(extra)._value()))
    for f in fields(schema):
        if f.name not in node or f.name.startswith("_"):
            continue
        value = node[f.name]
        if isinstance(value, DictConfig) and is_dataclass(OmegaConf.get_type(value)):
            yield from _check_node(value, f"{prefix}{f.name}.", OmegaConf.get_type(value))
            continue
        if "ok" not in f.metadata:
            continue
        plain = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        if not f.metadata["ok"](plain):
            yield error_for(f"{prefix}{f.name}", plain, f)
    cross = getattr(schema, "cross_checks", None)
    if cross is not None:
        yield from cross(node)
