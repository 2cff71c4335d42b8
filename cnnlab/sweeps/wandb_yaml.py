"""`cnnlab sweep <overrides>`: a W&B sweep YAML from the sweep `python -m cnnlab -m <overrides>` would run.

One vocabulary for both: the sweep is `hydra.sweeper.params` of the composed config (experiment=degradation_grid,
hparams_search=resnet_lr) with the command line's sweeps on top, in Hydra's sweep syntax.
- `--method grid` (the default): the grid Hydra's own BasicSweeper expands (lists, choice(...), range(...)).
- `--method random|bayes`: W&B's search over the same keys: lists and choice(...) become `values`,
  `interval(a,b)` a uniform distribution (int_uniform for integers), `tag(log, interval(a,b))`
  log_uniform_values (q_log_uniform_values for integers); `metric` is the task's monitor (task.monitor, what
  the run returns to Hydra's sweepers), its goal the Optuna preset's direction (else minimize for losses
  and errors, maximize otherwise). The budget is the agents': `wandb agent --count N`.
Overrides that are not sweeps stay fixed in the YAML's `command`, which runs one job per agent run:
`${env} ${interpreter} -m cnnlab` (the agent machine's `python`; `--python PATH` pins one), no Hydra -m, the
fixed overrides (an hparams_search preset is replaced by its fixed params), then `${args_no_hyphens}`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from cnnlab.config import CONF_DIR
from cnnlab.config.messages import explain
from cnnlab.config.schema import register
from cnnlab.errors import ConfigError, UserError
from cnnlab.sweeps.preflight import check_sweep

METHODS = ("grid", "random", "bayes")


def compose_sweep(overrides: Sequence[str]) -> tuple[DictConfig, list[Override], list[str]]:
    """The composed config, the sweep (the sweeper's params, then the command line's sweeps) and the fixed overrides.

    The sweeper's params that are not sweeps (an Optuna preset's `model: resnet`) join the fixed overrides, unless
    the command line fixes the same key; an hparams_search preset itself does not (an agent run is one job)."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
    except HydraException as e:
        raise UserError(f"cannot parse the overrides: {e}") from None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    register()  # the schemas the YAML options start from
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=fixed, return_hydra_config=True)
    except Exception as e:  # a typo: the one-line message of the app
        mapped = explain(e, fixed)
        raise (mapped or UserError(" ".join(str(e).split()))) from None
    params = cfg.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params) if params else {}
    sweep = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])  # type: ignore[union-attr]
    given = {o.split("=", 1)[0] for o in fixed}
    preset = [o.input_line for o in sweep if not o.is_sweep_override() and o.get_key_element() not in given]
    sweep = [o for o in sweep if o.is_sweep_override()] + [o for o in parsed if o.is_sweep_override()]
    check_sweep(cfg, [o.input_line for o in sweep])  # as `python -m cnnlab -m` checks them (intervals: both ends)
    keys = {o.get_key_element() for o in sweep}  # a command-line sweep replaces a fixed value of its key
    fixed = [o for o in fixed if o.split("=", 1)[0] not in keys and not o.startswith("hparams_search=")]
    return cfg, sweep, preset + fixed


def hydra_grid(overrides: Sequence[str]) -> tuple[list[list[str]], list[str]]:
    """The jobs a multirun with these overrides would launch (each a list of key=value), and the fixed overrides."""
    _, sweep, fixed = compose_sweep(overrides)
    return expand_grid(sweep), fixed


def expand_grid(sweep: Sequence[Override]) -> list[list[str]]:
    """Hydra's own BasicSweeper expands the grid."""
    try:
        return BasicSweeper.split_arguments(list(sweep), max_batch_size=None)[0]
    except HydraException as e:
        raise UserError(f"{e}: a W&B grid needs lists of values, e.g. model.depth=20,32") from None


def grid_parameters(sweep: Sequence[Override]) -> dict[str, Any]:
    jobs = expand_grid(sweep)
    if not jobs or not jobs[0]:
        raise UserError(
            "no grid: sweep some keys (e.g. model.depth=20,32 model.residual=true,false) "
            "or pick an experiment that defines hydra.sweeper.params (experiment=degradation_grid)"
        )
    values: dict[str, list[Any]] = {}
    for job in jobs:
        for override in job:
            value = agent_value(override)
            if value not in values.setdefault(override.split("=", 1)[0], []):
                values[override.split("=", 1)[0]].append(value)
    return {key: {"values": vals} for key, vals in values.items()}


def agent_value(override: str) -> Any:
    """The value of key=value as the YAML gives it to the agent, which writes it back as key=<value>.

    Numbers and booleans stay typed (the agent writes key=True, which Hydra reads as true); anything else
    keeps Hydra's own text, so the agent's key=value parses back to the same value."""
    value = OverridesParser.create().parse_override(override).value()
    return value if isinstance(value, (bool, int, float)) else override.split("=", 1)[1]


def distribution(override: Override) -> dict[str, Any]:
    """A W&B parameter for one Hydra sweep: values for lists, choice and range; a distribution for interval."""
    key = override.get_key_element()
    if not override.is_interval_sweep():
        return {"values": [agent_value(f"{key}={v}") for v in override.sweep_string_iterator()]}
    interval = override.value()
    low, high = interval.start, interval.end  # type: ignore[union-attr]
    integers = isinstance(low, int) and isinstance(high, int)
    if "log" in interval.tags:  # type: ignore[union-attr]
        if integers:
            return {"distribution": "q_log_uniform_values", "min": low, "max": high, "q": 1}
        return {"distribution": "log_uniform_values", "min": low, "max": high}
    return {"distribution": "int_uniform" if integers else "uniform", "min": low, "max": high}


def search_parameters(sweep: Sequence[Override]) -> dict[str, Any]:
    if not sweep:
        raise UserError(
            "nothing to search: sweep some keys (e.g. 'optimizer.lr=tag(log, interval(0.01, 0.5))' "
            "trainer.batch_size=64,128) or pick a preset that defines them (hparams_search=resnet_lr)"
        )
    return {o.get_key_element(): distribution(o) for o in sweep}


def metric(cfg: DictConfig) -> dict[str, str] | None:
    """The task's monitored value and its goal: the Optuna preset's direction, else by the name."""
    name = cfg.task.get("monitor")
    if not name:
        return None
    direction = str(cfg.hydra.sweeper.get("direction") or "")
    minimize = direction.endswith("minimize") if direction else any(w in name for w in ("loss", "err"))
    return {"name": str(name), "goal": "minimize" if minimize else "maximize"}


def sweep_config(
    overrides: Sequence[str], name: str | None = None, python: str | None = None, method: str = "grid"
) -> dict[str, Any]:
    if method not in METHODS:
        raise UserError(f"--method {method} is not allowed: one of {', '.join(METHODS)}")
    cfg, sweep, fixed = compose_sweep(overrides)
    parameters = grid_parameters(sweep) if method == "grid" else search_parameters(sweep)
    goal = metric(cfg)
    if goal is None and method == "bayes":
        allowed = "a metric with --method bayes (what W&B optimizes)"
        raise ConfigError("task.monitor", None, allowed, "task.monitor=loc_acc")
    if not any(o.split("=", 1)[0] in ("logger", "logger.mode") for o in fixed):
        fixed.append("logger.mode=online")  # an agent's run reports to the sweep only when it is online
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith(("experiment=", "hparams_search="))), None)
    config: dict[str, Any] = {"name": name or preset or "cnnlab", "method": method}
    config |= {"metric": goal} if goal else {}
    config["parameters"] = parameters
    interpreter = [python] if python else ["${env}", "${interpreter}"]  # the agent's python, from its PATH
    config["command"] = [*interpreter, "-m", "cnnlab", *fixed, "${args_no_hyphens}"]
    return config


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cnnlab sweep",
        description="Write a W&B sweep YAML for the sweep `python -m cnnlab -m <overrides>` runs.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=degradation_grid seed=0,1")
    parser.add_argument("-o", "--output", type=Path, help="the YAML to write (default: sweep-<name>.yaml)")
    parser.add_argument("--name", help="the sweep's name (default: the experiment or hparams_search preset)")
    parser.add_argument("--method", choices=METHODS, default="grid", help="W&B's search method (default: grid)")
    parser.add_argument("--python", help="the interpreter agents run (default: `python` on the agent's PATH)")
    parser.add_argument("-m", "--multirun", action="store_true", help=argparse.SUPPRESS)  # to say why it is wrong
    args = parser.parse_args(argv)
    if args.multirun or any(o in ("-m", "--multirun") for o in args.overrides):
        parser.error("pass overrides only: each agent run is one job, so the command has no -m")
    try:
        config = sweep_config(args.overrides, args.name, args.python, args.method)
    except UserError as e:
        print(f"cnnlab sweep: error: {e}", file=sys.stderr)
        sys.exit(2)
    output = args.output or Path(f"sweep-{config['name']}.yaml")
    output.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"wrote {output}: {sweep_size(config)}")
    print(f"next: wandb sweep --project <project> {output}   then   wandb agent <entity>/<project>/<sweep id>")


def sweep_size(config: dict[str, Any]) -> str:
    """What the agents will run, e.g. '24 runs over model.depth, ...' or 'bayes search over ..., up to 20 runs'."""
    keys = ", ".join(config["parameters"])
    if config["method"] == "grid":
        runs = 1
        for spec in config["parameters"].values():
            runs *= len(spec["values"])
        return f"{runs} runs over {keys}"
    goal = config.get("metric", {})
    target = f", {goal['goal']} {goal['name']}" if goal else ""
    return f"{config['method']} search over {keys}{target}; each agent runs until stopped, or `--count N` runs"


if __name__ == "__main__":
    main()
