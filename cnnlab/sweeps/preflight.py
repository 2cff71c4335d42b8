"""A sweep's checks before its first job: every value the sweep will try, so a typo in the grid fails at once."""

from __future__ import annotations

import copy

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from cnnlab.config.checks import validate
from cnnlab.config.messages import bad_type, unknown_key
from cnnlab.config.schema import option_of

_ABSENT = object()


def check_sweep(config: DictConfig, lines: list[str] | None = None) -> None:
    """Validate every value the sweep will set: each swept key in turn, on the base config.

    `lines` are the sweep's overrides; by default hydra.sweeper.params and the command line's."""
    validate(config)
    params = config.hydra.sweeper.get("params") or {}
    lines = lines if lines is not None else [*(f"{k}={v}" for k, v in params.items()), *config.hydra.overrides.task]
    # interval(...) is a search: both ends are checked; group choices (model=mlp,resnet) as each job composes
    swept = [o for o in OverridesParser.create().parse_overrides(lines) if o.is_sweep_override()]
    keys = [o.get_key_element() for o in swept]
    choices = any("." not in k and k != "seed" and not k.startswith("hydra") for k in keys)  # experiment=a,b
    for override, key in zip(swept, keys, strict=True):
        if key.startswith("hydra") or "." not in key and key != "seed":
            continue
        absent = OmegaConf.select(config, key, default=_ABSENT) is _ABSENT
        if absent and choices:
            continue  # a key of an option another swept choice brings (experiment=a,b model.depth=8,14)
        group = key.split(".")[0]
        chosen = option_of(group, config[group]) if isinstance(config.get(group), DictConfig) else None
        options = {group: chosen} if chosen else {}
        span = override.value() if override.is_interval_sweep() else None
        # the parsed values: the string forms are escaped for the command line (pgc:HiResCAM as pgc\\:HiResCAM)
        values = [span.start, span.end] if span else list(override.sweep_iterator())  # type: ignore[union-attr]
        if absent:  # model.depth=20,32 with model=mlp: say which option has the key
            raise unknown_key(key, str(values[0]), options)
        for value in values:
            trial = copy.deepcopy(config)
            try:
                OmegaConf.update(trial, key, value, merge=False)
            except Exception:
                raise bad_type(key, str(value), options) from None
            validate(trial)
