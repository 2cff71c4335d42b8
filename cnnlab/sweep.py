"""`cnnlab sweep <overrides>`: a W&B sweep YAML (method grid) from the same grid Hydra's multirun would run.

The grid is the one `python -m cnnlab -m <overrides>` runs: `hydra.sweeper.params` of the composed config
(e.g. experiment=degradation_grid) with the command line's sweeps on top, expanded by Hydra's own BasicSweeper.
Overrides that are not sweeps stay fixed in the YAML's `command`, which runs one job per agent run:
this interpreter, `-m cnnlab`, no Hydra -m, the fixed overrides, then `${args_no_hyphens}` (key=value).
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
from hydra.errors import HydraException
from omegaconf import OmegaConf

from cnnlab import CONF_DIR
from cnnlab.config import register
from cnnlab.config_errors import explain
from cnnlab.errors import UserError
from cnnlab.preflight import check_sweep


def hydra_grid(overrides: Sequence[str]) -> tuple[list[list[str]], list[str]]:
    """The jobs a multirun with these overrides would launch (each a list of key=value), and the fixed overrides."""
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
    params = cfg.hydra.sweeper.params
    swept = [f"{k}={v}" for k, v in OmegaConf.to_container(params).items()] if params else []  # type: ignore[union-attr]
    swept += [o.input_line for o in parsed if o.is_sweep_override()]
    check_sweep(cfg, swept)  # every value the agents will set, as `python -m cnnlab -m` checks them
    try:
        batches = BasicSweeper.split_arguments(parser.parse_overrides(swept), max_batch_size=None)
    except HydraException as e:
        raise UserError(f"{e}: a W&B grid needs lists of values, e.g. model.depth=20,32") from None
    return batches[0], [o for o in fixed if not _is_grid_key(o, swept)]


def _is_grid_key(override: str, swept: Sequence[str]) -> bool:
    """A fixed override of a key the grid sweeps is replaced by the grid (as in Hydra's BasicSweeper)."""
    return override.split("=", 1)[0] in {s.split("=", 1)[0] for s in swept}


def sweep_config(overrides: Sequence[str], name: str | None = None, python: str | None = None) -> dict[str, Any]:
    jobs, fixed = hydra_grid(overrides)
    if not jobs or not jobs[0]:
        raise UserError(
            "no grid: sweep some keys (e.g. model.depth=20,32 model.residual=true,false) "
            "or pick an experiment that defines hydra.sweeper.params (experiment=degradation_grid)"
        )
    parser = OverridesParser.create()
    values: dict[str, list[Any]] = {}
    for job in jobs:
        for override in job:
            key, text = override.split("=", 1)
            value = parser.parse_override(override).value()
            # numbers and booleans stay typed (the agent writes key=True, which Hydra reads as true);
            # anything else keeps Hydra's own text, so the agent's key=value parses back to the same value
            value = value if isinstance(value, (bool, int, float)) else text
            if value not in values.setdefault(key, []):
                values[key].append(value)
    if not any(o.split("=", 1)[0] in ("logger", "logger.mode") for o in fixed):
        fixed.append("logger.mode=online")  # an agent's run reports to the sweep only when it is online
    experiment = next((o.split("=", 1)[1] for o in fixed if o.startswith("experiment=")), None)
    return {
        "name": name or experiment or "cnnlab",
        "method": "grid",
        "metric": {"name": "best_val_acc", "goal": "maximize"},
        "parameters": {key: {"values": vals} for key, vals in values.items()},
        "command": [python or sys.executable, "-m", "cnnlab", *fixed, "${args_no_hyphens}"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cnnlab sweep",
        description="Write a W&B sweep YAML (method grid) for the grid `python -m cnnlab -m <overrides>` runs.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=degradation_grid seed=0,1")
    parser.add_argument("-o", "--output", type=Path, help="the YAML to write (default: sweep-<name>.yaml)")
    parser.add_argument("--name", help="the sweep's name (default: the experiment)")
    parser.add_argument("--python", help="the interpreter agents run (default: this one, where cnnlab is installed)")
    parser.add_argument("-m", "--multirun", action="store_true", help=argparse.SUPPRESS)  # to say why it is wrong
    args = parser.parse_args(argv)
    if args.multirun or any(o in ("-m", "--multirun") for o in args.overrides):
        parser.error("pass overrides only: each agent run is one job, so the command has no -m")
    try:
        config = sweep_config(args.overrides, args.name, args.python)
    except UserError as e:
        print(f"cnnlab sweep: error: {e}", file=sys.stderr)
        sys.exit(2)
    output = args.output or Path(f"sweep-{config['name']}.yaml")
    output.write_text(yaml.safe_dump(config, sort_keys=False))
    runs = 1
    for spec in config["parameters"].values():
        runs *= len(spec["values"])
    print(f"wrote {output}: {runs} runs over {', '.join(config['parameters'])}")
    print(f"next: wandb sweep --project <project> {output}   then   wandb agent <entity>/<project>/<sweep id>")


if __name__ == "__main__":
    main()
