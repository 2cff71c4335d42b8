"""Checks before Hydra creates the run dir: the config's ranges, where the run writes, which run a resume continues.

Called by the Preflight callback (cnnlab.sweeps.callbacks), because these must happen before Hydra writes
.hydra/ into a run dir: a bad value stops the run with nothing written; a resumed run goes into the original
run dir; an output dir that cannot be written fails with one clear line.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cnnlab.app import resume
from cnnlab.config.checks import validate
from cnnlab.errors import UserError
from cnnlab.records import checkpoint
from cnnlab.tasks.build import (
    boundary,
    canvas_kinds,
    check_data,
    checkpoint_path,
    class_map_method,
    evaluated_dataset,
    one_kind,
    own_images,
    trained_dataset,
)
from cnnlab.tasks.context import RunInfo
from cnnlab.training.hardware import resolve_device, resolve_precision


def check_run(config: DictConfig) -> None:
    """Everything a single run can be refused for, before Hydra writes its run dir; a resumed run is pointed at
    the original run dir (its .hydra/ keeps how the run was started)."""
    validate(config)
    with boundary("runtime"):  # no GPU: say so before a run dir exists
        device = resolve_device(str(config.runtime.device))
    with boundary("trainer"):  # fp16 on a CPU
        resolve_precision(str(config.trainer.precision), device)
    spec = config.runtime.get("resume") if "runtime" in config else None
    if spec:
        continue_run(config, str(spec))
    check_inputs(config)
    ensure_writable(Path(str(config.hydra.run.dir)))


def continue_run(config: DictConfig, spec: str) -> None:
    HydraConfig.instance().set_config(config)  # lets ${hydra:...} resolve below
    path = resume.find_checkpoint(spec, Path(str(config.paths.output_dir)), list(config.hydra.overrides.task))
    task = copy.deepcopy(config)  # the config the task will get, as Hydra makes it
    with read_write(task), open_dict(task):
        del task["hydra"]
    resume.check_same_run(checkpoint.header(path)["config"], OmegaConf.to_container(task, resolve=True), path)  # type: ignore[arg-type]
    with read_write(config.hydra), read_write(config.hydra.run), read_write(config.runtime):
        config.hydra.run.dir = str(resume.run_dir_of(path))
        config.hydra.output_subdir = resume.RESUME_SUBDIR  # .hydra/ keeps the config the run started with
        config.runtime.resume = str(path)


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


def check_inputs(config: DictConfig) -> None:
    """What the checkpoint's header, the data files' headers and the model's layer names can tell, before
    anything is written: what would otherwise fail after the run dir and the W&B run exist."""
    task = config.task
    if task.name == "classify":
        check_data(config.dataset)
        return
    saved = checkpoint_config(config)
    if saved is None:  # a W&B artifact: read once the run has fetched it
        return
    if task.name in ("localize", "cam"):  # the method at its layer on the model the checkpoint holds
        class_map_method(instantiate(saved.model), task)
        if task.get("images"):
            own_images(task)
            return
    info = RunInfo(run_dir=Path("."), overrides=tuple(config.hydra.overrides.task))
    dataset = (evaluated_dataset if task.name == "evaluate" else trained_dataset)(saved, config, info)
    if task.name in ("localize", "cam") and task.get("source", "canvas") == "canvas":
        canvas_kinds(task, dataset, one_kind(info))  # each kind fits its canvas
    check_data(dataset)


def checkpoint_config(config: DictConfig) -> DictConfig | None:
    """The config a task's checkpoint was trained with, from its header (a run dir: its best checkpoint)."""
    reference = str(config.checkpoint)
    if reference.startswith("wandb:"):
        if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
            from cnnlab.records.tracking import fetch_artifact

            fetch_artifact(reference, Path("."))  # says why it cannot, before any download or file
        return None
    return OmegaConf.create(checkpoint.header(checkpoint_path(reference, Path(".")))["config"])
