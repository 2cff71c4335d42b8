"""Checks Hydra runs before it creates the run dir: where the run writes, and which run trainer.resume continues.

A Hydra callback, because these must happen before Hydra writes .hydra/ into a run dir: a resumed run goes
into the original run dir (and keeps its .hydra/ as the record of how the run was started), and an output
dir that cannot be written fails with one clear line instead of a traceback from inside Hydra.
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

from cnnlab.errors import UserError


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            spec = config.trainer.get("resume") if "trainer" in config else None
            if spec:
                self._continue_run(config, str(spec))
            ensure_writable(Path(str(config.hydra.run.dir)))
        except UserError as e:
            fail(e)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if "trainer" in config and config.trainer.get("resume"):
                raise UserError(
                    "trainer.resume continues one run: run `python -m cnnlab <that job's overrides> "
                    "trainer.resume=<its job dir>` without -m, once per job to continue."
                )
            ensure_writable(Path(str(config.hydra.sweep.dir)))
        except UserError as e:
            fail(e)

    @staticmethod
    def _continue_run(config: DictConfig, spec: str) -> None:
        from cnnlab import resume
        from cnnlab.training import checkpoint

        HydraConfig.instance().set_config(config)  # lets ${hydra:...} resolve below
        path = resume.find_checkpoint(spec, Path(str(config.paths.output_dir)), list(config.hydra.overrides.task))
        task = copy.deepcopy(config)  # the config the task will get, as Hydra makes it
        with read_write(task), open_dict(task):
            del task["hydra"]
        resume.check_same_run(checkpoint.load(path)["config"], OmegaConf.to_container(task, resolve=True), path)  # type: ignore[arg-type]
        with read_write(config.hydra), read_write(config.hydra.run), read_write(config.trainer):
            config.hydra.run.dir = str(resume.run_dir_of(path))
            config.hydra.output_subdir = ".hydra/resume"  # .hydra/ keeps the config the run started with
            config.trainer.resume = str(path)


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
