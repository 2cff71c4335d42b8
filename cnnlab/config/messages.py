"""Hydra's composition errors (a wrong type, an unknown key or group option) as cnnlab's one-line ConfigError.

The schemas in cnnlab.config.schema make Hydra refuse such values while it composes; `explain` reads Hydra's error
and says what was wrong, what the schema allows, and an override that fixes it (the closest name, or nothing
when none is close). The text of every config error is made here.
"""

import difflib
from dataclasses import MISSING, fields
from typing import Any

from cnnlab.config.overrides import values
from cnnlab.config.schema import SCHEMAS, Config, dataclass_in, option_of
from cnnlab.errors import ConfigError, UserError


def error_for(key: str, value: Any, f: Any, wrong_type: bool = False) -> ConfigError:
    """The ConfigError for a value of schema field `f`: its range, the type too when the type was wrong."""
    allowed = f.metadata.get("allowed", type_text(f.type))
    allowed = allowed(value) if callable(allowed) else allowed
    words = ("integer", "number", "true or false", "text")
    if wrong_type and allowed != type_text(f.type) and not any(w in allowed for w in words):
        allowed = f"{type_text(f.type)}: {allowed}"  # the range alone would not say the type
    return ConfigError(key, value, allowed, f"{key}={yaml_text(fix_value(f, value))}")


def fix_value(f: Any, value: Any) -> Any:
    fix = f.metadata.get("fix", MISSING)
    if callable(fix):
        return fix(value)
    if fix is not MISSING:
        return fix
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def yaml_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(yaml_text(v) for v in value) + "]"
    return str(value)


def type_text(annotation: Any) -> str:
    text = str(annotation)
    node = dataclass_in(annotation)
    if node is not None:  # e.g. dataset.augment: {pad:0,flip:false} or null
        inner = ",".join(f"{f.name}:{yaml_text(fix_value(f, None))}" for f in fields(node))
        return "{" + inner + "}" + (" or null" if "Optional" in text else "")
    for name, words in (("bool", "true or false"), ("int", "an integer"), ("float", "a number"), ("str", "text")):
        if name in text:
            return words + (" or null" if "Optional" in text else "")
    return "a value of the right type"


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


def given_values(overrides: list[str]) -> dict[str, str]:
    """key -> value text of the overrides Hydra can parse (a malformed one is Hydra's own error to report)."""
    from hydra.errors import OverrideParseException

    found: dict[str, str] = {}
    for line in overrides:
        try:
            found.update(values([line]))
        except OverrideParseException:
            continue
    return found


def close_to(name: str, candidates: list[str]) -> str | None:
    """The candidate closest to `name` as a whole (`-` and `_` equal, edit distance), or None when none is
    close: a far-off name gets no suggestion."""

    def plain(text: str) -> str:
        return text.lower().replace("-", "_")

    scored = [(difflib.SequenceMatcher(None, plain(name), plain(c)).ratio(), c) for c in candidates]
    best = max(scored, default=(0.0, None))
    return best[1] if best[0] >= 0.75 else None


def elsewhere(key: str) -> list[str]:
    """The groups whose options have a top-level key named like `key`'s leaf (trainer.lr: optimizer)."""
    group, *path = key.split(".")
    if len(path) != 1:
        return []
    return [g for g, options in SCHEMAS.items() if g != group and any(_field_at(s, path) for s in options.values())]


def unknown_key(key: str, value: str, options: dict[str, str] | None = None) -> ConfigError:
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
    close = close_to(name, known)
    where = parent or "the top level"
    homes = elsewhere(key) if close is None else []
    if homes:  # trainer.lr, trainer.device: a key of another group
        others = " and ".join(f"{g}.{name}" for g in homes)
        return ConfigError(key, value, f"{where} has no key {name!r}; {others} has", f"{homes[0]}.{name}={value}")
    if not known:  # logger=none: a node without keys
        others = [o for o in SCHEMAS.get(group, {}) if o != chosen and keys_of(f"{group}.x", {group: o})]
        return ConfigError(key, value, f"{where} has no keys" + (f" with {group}={chosen}" if chosen else ""),
                           f"{group}={others[0]}" if others else None)  # fmt: skip
    fix = f"{parent + '.' if parent else ''}{close}={value}" if close else ""
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

    given = given_values(overrides)
    options = {k: v for k, v in given.items() if k in SCHEMAS}
    if isinstance(error, MissingConfigException) and str(error.missing_cfg_file) in PLUGINS:  # not installed
        package, extra = PLUGINS[str(error.missing_cfg_file)]
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        missing = f"it needs the Hydra plugin {package}, which is not installed"
        return UserError(f'{group}={option} is not allowed: {missing}. Fix it with `pip install -e ".[{extra}]"`')
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        choices = sorted(o for o in error.options if not o.startswith("_"))
        close = close_to(option, choices)
        return ConfigError(group, option, f"one of {', '.join(choices)}", f"{group}={close}" if close else "")
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
    if key not in given:  # logger.watch.freq=abc where logger.watch does not exist: Hydra names the node
        key = next((k for k in given if k.startswith(f"{key}.")), key)
    value = given.get(key, "")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return unknown_key(key, value, options)
    if isinstance(cause, ValidationError):
        return bad_type(key, value, options)
    return None
