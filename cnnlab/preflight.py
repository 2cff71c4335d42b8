"""Checks before Hydra creates the run dir: the config's ranges, where the run writes, which run a resume continues.

A Hydra callback, because these must happen before Hydra writes .hydra/ into a run dir: a bad value stops
the run with nothing written; a resumed run goes into the original run dir (and keeps its .hydra/ as the
record of how the run was started); an output dir that cannot be written fails with one clear line.
A multirun checks every value its sweep will try, so a typo in the grid fails before the first job; with
runtime.resume=auto it continues an earlier sweep in that sweep's dir (cnnlab.sweep_resume).
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cnnlab.config import validate
from cnnlab.errors import UserError


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate(config)
            if str(config.runtime.device).startswith("cuda"):  # no GPU: say so before a run dir exists
                from cnnlab.run import resolve_device

                resolve_device(str(config.runtime.device))
            spec = config.runtime.get("resume") if "runtime" in config else None
            if spec:
                self._continue_run(config, str(spec))
            ensure_writable(Path(str(config.hydra.run.dir)))
        except UserError as e:
            fail(e)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if "runtime" in config and config.runtime.get("resume"):  # continue a sweep: its dir, its job dirs
                from cnnlab.sweep_resume import redirect

                redirect(config)
            check_sweep(config)
            ensure_writable(Path(str(config.hydra.sweep.dir)))
        except UserError as e:
            fail(e)

    @staticmethod
    def _continue_run(config: DictConfig, spec: str) -> None:
        from cnnlab import checkpoint, resume

        HydraConfig.instance().set_config(config)  # lets ${hydra:...} resolve below
        path = resume.find_checkpoint(spec, Path(str(config.paths.output_dir)), list(config.hydra.overrides.task))
        task = copy.deepcopy(config)  # the config the task will get, as Hydra makes it
        with read_write(task), open_dict(task):
            del task["hydra"]
        resume.check_same_run(checkpoint.load(path)["config"], OmegaConf.to_container(task, resolve=True), path)  # type: ignore[arg-type]
        with read_write(config.hydra), read_write(config.hydra.run), read_write(config.runtime):
            config.hydra.run.dir = str(resume.run_dir_of(path))
            config.hydra.output_subdir = ".hydra/resume"  # .hydra/ keeps the config the run started with
            config.runtime.resume = str(path)


_ABSENT = object()


def check_sweep(config: DictConfig, lines: list[str] | None = None) -> None:
    """Validate every value the sweep will set: each swept key in turn, on the base config.

    `lines` are the sweep's overrides; by default hydra.sweeper.params and the command line's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnlab.config import option_of
    from cnnlab.config_errors import bad_type, unknown_key

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


def ensure_writable(folder: Path) -> None:
    """Create `folder` and write a probe file in it, so a bad paths.output_dir fails before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(
            f"cannot write the run dir {folder} ({e.strerror or e}). Point the outputs at a writable folder with "
            "`paths.output_dir=DIR` (or hydra.run.dir=DIR for one run)."
        ) from None


def fail(error: UserError) -> None:
    print(f"cnnlab: error: {error}", file=sys.stderr)
    sys.exit(2)
