"""Hydra's composition errors (a wrong type, an unknown key or group option) as cnnlab's one-line ConfigError.

The schemas in cnnlab.config make Hydra refuse such values while it composes; `explain` reads Hydra's error
and says what was wrong, what the schema allows, and an override that fixes it. `renamed` keeps the keys that
moved from trainer to runtime in 0.2 working on the command line.
"""

import difflib
from dataclasses import fields
from typing import Any

from cnnlab.config import SCHEMAS, Config, dataclass_in, error_for, fix_value, option_of, yaml_text
from cnnlab.errors import ConfigError, UserError


def schema_field(key: str, options: dict[str, str] | None = None) -> Any | None:
    """The schema field of a dotted key (e.g. trainer.batch_size), searching the group's options."""
    group, *path = key.split(".")
    if group not in SCHEMAS:
        path, candidates = [group, *path], [Config]
    else:
        chosen = (options or {}).get(group)
        candidates = [SCHEMAS[group][chosen]] if chosen in SCHEMAS[group] else list(SCHEMAS[group].values())
    for schema in candidates:
        found = _field_at(schema, path)
        if found is not None:
            return found
    return None


def _field_at(schema: type, path: list[str]) -> Any | None:
    for i, name in enumerate(path):
        match = next((f for f in fields(schema) if f.name == name), None)
        if match is None:
            return None
        if i == len(path) - 1:
            return match
        inner = dataclass_in(match.type)
        if inner is None:
            return None
        schema = inner
    return None


def keys_of(key: str, options: dict[str, str] | None = None) -> list[str]:
    """The keys a node may hold (for 'did you mean'), e.g. those of trainer for trainer.no_such_key."""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    if not parent:
        return [f.name for f in fields(Config)]
    group, *path = parent.split(".")
    schemas = list(SCHEMAS.get(group, {}).values())
    chosen = (options or {}).get(group)
    if chosen in SCHEMAS.get(group, {}):
        schemas = [SCHEMAS[group][chosen]]
    names: list[str] = []
    for schema in schemas:
        node = dataclass_in(_field_at(schema, path).type) if path and _field_at(schema, path) else schema
        names += [f.name for f in fields(node) if not f.name.startswith("_") and f.name not in names] if node else []
    return names


# Keys that moved from trainer to runtime in 0.2 (the old names work until 0.3, with a warning).
MOVED = {
    f"trainer.{name}": f"runtime.{name}"
    for name in ("device", "threads", "resume", "log_every", "eval_batch_size", "channels_last", "compile")
    + ("checkpoint", "checkpoint_every", "figures")
}


def renamed(override: str) -> str | None:
    """The override with a moved key renamed (trainer.device=cpu -> runtime.device=cpu), or None."""
    prefix = override[: len(override) - len(override.lstrip("+~"))]
    key, sep, value = override[len(prefix) :].partition("=")
    return f"{prefix}{MOVED[key]}{sep}{value}" if key in MOVED else None


def unknown_key(key: str, value: str, options: dict[str, str] | None = None) -> ConfigError:
    if key in MOVED:
        return ConfigError(key, value, f"it moved to {MOVED[key]}", f"{MOVED[key]}={value}")
    parent, name = key.rsplit(".", 1) if "." in key else ("", key)
    group = key.split(".")[0]
    chosen = (options or {}).get(group)
    owners = _options_with(key)
    if owners and chosen not in owners:  # model.depth with model=mlp: a key of another option of the group
        which = f"{group}={chosen}" if chosen in SCHEMAS[group] else f"this {group}"
        others = " and ".join(f"{group}={o}" for o in owners)
        return ConfigError(key, value, f"{which} has no key {name!r}; it is a key of {others}",
                           f"{group}={owners[0]} {key}={value}")  # fmt: skip
    known = keys_of(key, options)
    close = difflib.get_close_matches(name, known, n=1)
    where = parent or "the top level"
    if not known:  # logger=none: a node without keys
        others = [o for o in SCHEMAS.get(group, {}) if o != chosen and keys_of(f"{group}.x", {group: o})]
        return ConfigError(key, value, f"{where} has no keys" + (f" with {group}={chosen}" if chosen else ""),
                           f"{group}={others[0]}" if others else None)  # fmt: skip
    fix = f"{parent + '.' if parent else ''}" + (f"{close[0]}={value}" if close else f"{known[0]}=<value>")
    return ConfigError(key, value, f"{where} has no key {name!r}; its keys are {', '.join(known)}", fix)


def bad_type(key: str, value: str, options: dict[str, str] | None = None) -> ConfigError:
    f = schema_field(key, options)
    return error_for(key, value, f, wrong_type=True) if f else ConfigError(key, value, "a value of the right type")


def _options_with(key: str) -> list[str]:
    """The options of the key's group that have the key (model.depth: resnet), where a group has several."""
    group, *path = key.split(".")
    options = SCHEMAS.get(group, {})
    return [o for o, schema in options.items() if len(options) > 1 and path and _field_at(schema, path)]


def below_null_node(key: str, value: str) -> ConfigError | None:
    """dataset.augment.pad=4 (or dataset.augment={pad:4}) where dataset.augment is null, e.g. with MNIST.

    Hydra cannot set keys inside a null node from the command line: OmegaConf fails with an AssertionError or
    an AttributeError. Say so, and how a config file does it."""
    group, *path = key.split(".")
    schemas = list(SCHEMAS.get(group, {}).values())
    for depth in range(1, len(path) + 1):
        f = _field_at(schemas[0], path[:depth]) if len(schemas) == 1 else None
        node = dataclass_in(f.type) if f is not None and f.default is None else None
        if node is None:
            continue
        if depth < len(path):  # dataset.augment.pad=4
            settings = {path[depth]: value}
        elif value.startswith("{"):  # dataset.augment={pad:4,flip:true}
            settings = dict(kv.strip().split(":", 1) for kv in value.strip("{}").split(",") if ":" in kv)
        else:
            return None
        null = ".".join([group, *path[:depth]])
        inner = ", ".join(f"{n.name}: {settings.get(n.name, yaml_text(fix_value(n, None)))}" for n in fields(node))
        snippet = "".join(f"{part}: {{" for part in null.split(".")) + inner + "}" * (depth + 1)
        return ConfigError(
            key,
            value,
            f"{null} is null (none) in this {group}'s config, and the command line cannot set keys inside a null "
            f"node; a config file can, e.g. an experiment with `{snippet}` (as conf/experiment/canvas_classifier.yaml)",
            "experiment=<that experiment>",
        )
    return None


# Hydra plugins cnnlab's presets use (hparams_search=..., launcher=...): the package and the extra that installs it
PLUGINS = {
    "hydra/sweeper/optuna": ("hydra-optuna-sweeper", "search"),
    "hydra/launcher/submitit_local": ("hydra-submitit-launcher", "slurm"),
    "hydra/launcher/submitit_slurm": ("hydra-submitit-launcher", "slurm"),
}


def explain(error: BaseException, overrides: list[str]) -> UserError | None:
    """Hydra's error for a wrong type, an unknown key or an unknown group option, as a ConfigError (else None)."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    given = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    options = {k: v for k, v in given.items() if k in SCHEMAS}
    if isinstance(error, MissingConfigException) and str(error.missing_cfg_file) in PLUGINS:  # not installed
        package, extra = PLUGINS[str(error.missing_cfg_file)]
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        missing = f"it needs the Hydra plugin {package}, which is not installed"
        return UserError(f'{group}={option} is not allowed: {missing}. Fix it with `pip install -e ".[{extra}]"`')
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        choices = sorted(o for o in error.options if not o.startswith("_"))
        return ConfigError(group, option, f"one of {', '.join(choices)}", f"{group}={choices[0]}")
    if isinstance(error, (AssertionError, AttributeError)) and "NoneType" in str(error):
        for key, value in given.items():
            if key.split(".")[0] in SCHEMAS and (mapped := below_null_node(key, value)):
                return mapped
    cause = error.__cause__ if error.__cause__ is not None else error
    key = getattr(cause, "full_key", None)
    if not key:
        return None
    group = key.split(".")[0]
    composed = option_of(group, getattr(cause, "object_type", None))
    if composed is not None:  # the option Hydra composed (a default, an experiment's, or a multirun's base config)
        options[group] = composed
    value = given.get(key, "")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return unknown_key(key, value, options)
    if isinstance(cause, ValidationError):
        return bad_type(key, value, options)
    return None
