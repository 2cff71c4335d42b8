"""Odd values for every leaf key of the composed default and ResNet configs, one at a time: each is taken, or
refused in one line that names the key; never a traceback. Composition and the preflight only: nothing runs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.app.launch import one_line
from cnnlab.app.preflight import check_inputs
from cnnlab.config import CONF_DIR
from cnnlab.config.checks import validate
from cnnlab.config.schema import register

ODD = ["abc", "-1", "0", "1.5", "1e12", "''", "null", "[1,2]", "nan", "true"]
BASES = {"default": [], "resnet": ["model=resnet"]}
SKIP = ("hydra", "paths", "runtime.resume")
PARSER = OverridesParser.create()  # where the run goes and which run it continues: tested elsewhere


def leaves(node: Any, prefix: str = "") -> Iterator[str]:
    for key, value in node.items_ex(resolve=False) if isinstance(node, DictConfig) else []:
        name = f"{prefix}{key}"
        if name.startswith(SKIP):
            continue
        if isinstance(value, DictConfig):
            yield from leaves(value, f"{name}.")
        elif not str(key).startswith("_"):
            yield name


@pytest.fixture(scope="module")
def hydra() -> Iterator[None]:
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def verdict(cfg: DictConfig, base: list[str], key: str, text: str) -> str | None:
    """None when `key=text` is taken; else the one line it is refused with. The value is parsed as Hydra parses
    the command line and set on the composed config, whose schema types check it as composition does."""
    override = f"{key}={text}"
    trial = copy.deepcopy(cfg)
    try:
        OmegaConf.update(trial, key, PARSER.parse_override(override).value(), merge=False)
        validate(trial)
        check_inputs(trial)
    except Exception as e:  # noqa: BLE001 (what matters: can it be said in one line?)
        said = one_line(e, [*base, override])
        assert said is not None, f"{override}: a traceback ({type(e).__name__}: {e})"
        return said[0]
    return None


@pytest.mark.parametrize("base", list(BASES))
def test_every_leaf_key_takes_or_refuses_odd_values_in_one_line(hydra, base: str) -> None:
    overrides = BASES[base]
    cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "unused"
    HydraConfig.instance().set_config(cfg)
    keys = list(leaves(cfg))
    assert len(keys) > 40, keys
    refused = 0
    for key in keys:
        for value in ODD:
            said = verdict(cfg, overrides, key, value)
            if said is not None:
                refused += 1
                assert "\n" not in said, said
                assert key in said or key.split(".")[-1] in said, f"{key}={value}: {said}"
    assert refused > len(keys)  # most odd values are refused: the check is not vacuous
