"""The Python face of cnnlab, for notebooks and scripts: run, multirun, compose, load, explain, localize.

`run` and `multirun` go through Hydra exactly as the CLI does (the same config, callbacks, run dir, files and
W&B run); an error a user can fix raises a `cnnlab.errors.UserError` (a ValueError) with the CLI's one line, and
nothing is written. `load` rebuilds a trained model in eval mode with what its inputs need; `explain` gives
class maps of any images, leaving the model as it found it.
"""

from __future__ import annotations

import atexit
import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from cnnlab.app.launch import one_line
from cnnlab.config import CONF_DIR
from cnnlab.config.checks import validate
from cnnlab.config.schema import register
from cnnlab.errors import Refused, UserError
from cnnlab.records.rundir import METRICS
from cnnlab.records.status import read_status, sweep_statuses

__all__ = ["Loaded", "Result", "compose", "explain", "load", "localize", "multirun", "run"]


@dataclass(frozen=True)
class Result:
    """One finished job: its run dir, how it ended (status.json) and its metrics (metrics.json)."""

    run_dir: Path
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, run_dir: Path) -> Result:
        import json

        metrics = run_dir / METRICS
        status = (read_status(run_dir) or {}).get("status", "unknown")
        return cls(run_dir, status, json.loads(metrics.read_text()) if metrics.is_file() else {})


@contextmanager
def _hydra(overrides: Sequence[str]) -> Iterator[Any]:
    """Hydra, initialized on cnnlab's config groups; its errors and the Preflight's as cnnlab's one line."""
    from hydra import initialize_config_dir

    register()
    with _logging_as_found(), initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="cnnlab"):
        from hydra.core.global_hydra import GlobalHydra

        try:
            yield GlobalHydra.instance().hydra
        except Refused as e:
            raise e.error from None
        except UserError:
            raise
        except SystemExit as e:  # a signal stopped the run (its checkpoint and status are written)
            raise KeyboardInterrupt(f"cnnlab: the run was stopped (exit code {e.code})") from None
        except Exception as e:
            said = one_line(e, list(overrides))
            if said is None:
                raise
            raise UserError(said[0]) from None


@contextmanager
def _logging_as_found() -> Iterator[None]:
    """Hydra points the root logger at the run's cnnlab.log; afterwards the caller's logging is as it was (a
    notebook's later log lines do not land in the last run's file)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def run(overrides: Sequence[str] = ()) -> Result:
    """One job, as `cnnlab <overrides>` runs it; returns its Result. Callable many times in one process."""
    from cnnlab.app.run import main_job

    with _hydra(overrides) as hydra:
        ret = hydra.run(config_name="config", task_function=main_job, overrides=list(overrides))
    return Result.of(Path(str(ret.hydra_cfg.hydra.runtime.output_dir)))


def multirun(overrides: Sequence[str] = ()) -> list[Result]:
    """A sweep, as `cnnlab -m <overrides>` runs it (any launcher); a Result per job dir, in job order."""
    from hydra.types import RunMode

    from cnnlab.app.run import main_job
    from cnnlab.config.overrides import keys
    from cnnlab.sweeps.callbacks import SlurmInterrupt, print_summary
    from cnnlab.sweeps.resume import find_sweep, quoted

    with _hydra(overrides) as hydra:
        given = [key for key, _ in keys(overrides)]
        pinned = [*overrides] + ([] if "hydra.mode" in given else ["hydra.mode=MULTIRUN"])  # what the CLI's -m adds
        config = hydra.compose_config("config", pinned, run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        sweep_dir = Path(str(config.hydra.sweep.dir))  # the dir the jobs are read back from
        if "hydra.sweep.dir" not in given:
            if config.get("runtime") and config.runtime.get("resume"):  # continue the newest sweep of this grid
                sweep_dir = find_sweep(config)
            pinned.append(f"hydra.sweep.dir={quoted(sweep_dir.absolute())}")
        try:
            hydra.multirun(config_name="config", task_function=main_job, overrides=pinned)
        except Exception:  # a job failed and Hydra re-raised it: the others ran, each status.json says how
            if not sweep_statuses(sweep_dir):
                raise
        finally:
            atexit.unregister(print_summary)  # the CLI's summary at exit: said here, at the end of the call
            SlurmInterrupt.restore()  # a later Ctrl-C in this process is the caller's again
        print_summary(sweep_dir)
    return [Result.of(job) for job in sweep_statuses(sweep_dir.absolute())]


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The validated config `cnnlab <overrides>` would run, as its task gets it; nothing is written."""
    from hydra import compose as hydra_compose

    with _hydra(overrides):
        cfg = hydra_compose("config", overrides=list(overrides))
        validate(cfg)
    return cfg


@dataclass
class Loaded:
    """A trained model, rebuilt from its checkpoint, with what its inputs need."""

    model: nn.Module  # in eval mode, on `device`
    config: DictConfig  # the run's config, as the checkpoint stores it
    classes: list[str]  # the names of its outputs
    black: torch.Tensor  # a black pixel as the model sees it, normalized, (C, 1, 1): what maps hide parts with
    path: Path  # the checkpoint file
    device: torch.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) or (B, H, W), uint8 or floats in [0, 1] -> the model's normalized input."""
        x = torch.as_tensor(images)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.dim() == 3:
            x = x[:, None]
        channels = int(self.config.dataset.shape[0])
        if x.dim() != 4 or x.shape[1] not in (1, channels):
            raise ValueError(f"images of shape {tuple(images.shape)}: (B, {channels}, H, W) or (B, H, W) allowed")
        x = x.expand(-1, channels, -1, -1) if x.shape[1] != channels else x
        mean = torch.tensor(list(self.config.dataset.mean)).view(1, -1, 1, 1)
        std = torch.tensor(list(self.config.dataset.std)).view(1, -1, 1, 1)
        return ((x - mean) / std).to(self.device)


def load(source: str | Path, device: str = "auto") -> Loaded:
    """A trained model from a checkpoint file, a run dir (its best checkpoint) or
    wandb:<entity>/<project>/<artifact>:<alias>, on `device` (auto: CUDA when present)."""
    from cnnlab.tasks.build import checkpoint_path, class_names, restore_model
    from cnnlab.training.hardware import resolve_device

    where = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="cnnlab-") as tmp:  # a W&B download is removed once loaded
        path = checkpoint_path(str(source), Path(tmp))
        model, saved, _ = restore_model(str(path), where, Path(tmp))
    names = class_names(saved.dataset) or [str(c) for c in range(int(saved.model.num_classes))]
    channels = len(saved.dataset.mean)
    black = (torch.zeros(channels) - torch.tensor(list(saved.dataset.mean))) / torch.tensor(list(saved.dataset.std))
    return Loaded(model, saved, names, black.view(-1, 1, 1).to(where), path, where)


def explain(
    model: Loaded | nn.Module,
    images: torch.Tensor,
    method: str = "cam",
    classes: int | torch.Tensor | None = None,
    layer: str | None = None,
) -> torch.Tensor:
    """Class maps (B, H, W) in [0, 1] at the images' resolution, for every method `task=cam` lists (and
    pgc:<Name>). With a Loaded, images are in [0, 1] (or uint8); with a bare model, they are its input.
    `classes`: None (each image's predicted class), an int, or a (B,) tensor. The model runs in eval mode and
    is given back in its mode, with its state and its parameters' gradients unchanged."""
    from cnnlab.vision import make_method
    from cnnlab.vision.maps import normalize_per_image, upsample_cells

    net, x, black = _inputs(model, images)
    with _as_found(net):
        wanted = _classes(net, x, classes)
        maps = make_method(method, net, layer, black)(x, wanted[:, None])
        heat = upsample_cells(maps.maps.float(), maps.stride, tuple(x.shape[2:]), "middle")
    return normalize_per_image(heat)[:, 0].detach().cpu()


def localize(loaded: Loaded, canvases: torch.Tensor, method: str = "fully-conv", digits: int = 1) -> list[dict]:
    """Boxes on canvases ((B, H, W) or (B, C, H, W), uint8 or [0, 1]) as task=localize finds them, with its
    defaults: per canvas, `boxes` (n, 4) in pixels (x0, y0, x1, y1), their `classes` and `scores`."""
    from omegaconf import OmegaConf

    from cnnlab.config.schema import LocalizeConfig
    from cnnlab.tasks.build import background_index
    from cnnlab.tasks.cam import box_rule
    from cnnlab.vision import make_method
    from cnnlab.vision.canvas_eval import locate

    task = OmegaConf.structured(LocalizeConfig)
    task.method, task.canvas.digits, task.faithfulness = method, digits, False
    with _as_found(loaded.model):
        maps = make_method(method, loaded.model, None, loaded.black)
        classes = int(loaded.config.dataset.num_classes)
        dataset = loaded.config.dataset
        rule = box_rule(task, maps.threshold, classes, background_index(dataset), dataset.shape[1:])
        found = locate(maps, loaded.preprocess(canvases), loaded.black, rule)
    return [{"boxes": d.boxes, "classes": d.labels, "scores": d.scores} for d in found]


def _inputs(model: Loaded | nn.Module, images: torch.Tensor) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None]:
    if isinstance(model, Loaded):
        return model.model, model.preprocess(images), model.black
    device = next(model.parameters()).device
    return model, torch.as_tensor(images).float().to(device), None


def _classes(net: nn.Module, x: torch.Tensor, classes: int | torch.Tensor | None) -> torch.Tensor:
    """(B,) long: the predicted class of each image, `classes` on every image, or `classes` itself."""
    if classes is None:
        with torch.no_grad():
            return net(x).argmax(1)
    wanted = torch.as_tensor(classes, device=x.device).long()
    if wanted.dim() == 0:
        return wanted.expand(len(x))
    if wanted.shape != (len(x),):
        raise ValueError(f"classes of shape {tuple(wanted.shape)}: an int or a ({len(x)},) tensor allowed")
    return wanted


@contextmanager
def _as_found(net: nn.Module) -> Iterator[None]:
    """Eval mode for the maps; afterwards the mode the model came in and its parameters' gradients as they were."""
    training = net.training
    grads = [(p, p.grad) for p in net.parameters()]
    net.eval()
    try:
        yield
    finally:
        net.train(training)
        for p, grad in grads:
            p.grad = grad
