"""From config to parts: the model, the loaders, and a trained model rebuilt from its checkpoint.

This is the config boundary for the libraries below: models, data and training raise plain ValueError;
here each becomes a ConfigError that names the key, the value and the override to fix it.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab.config.schema import RuntimeConfig, TrainerConfig
from cnnlab.data import sources
from cnnlab.data.canvas import (
    MNIST_FAMILY,
    Canvases,
    background_patches,
    check_canvas_config,
    context_digits,
    kind_name,
    make_canvases,
)
from cnnlab.data.loader import DeviceLoader, split_train_val
from cnnlab.errors import BadArgument, CheckpointError, ConfigError, DataError, UserError
from cnnlab.records import checkpoint
from cnnlab.records.rundir import CHECKPOINTS, HISTORY, read_rows
from cnnlab.tasks.context import RunInfo

log = logging.getLogger("cnnlab")
CANVAS_KEYS = ("count", "size", "digits", "clutter", "fragment")  # make_canvases' arguments, in order


def seed_everything(seed: int) -> None:
    """One seed for Python's, NumPy's and torch's random streams (model init; the loaders seed their own)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def as_config_error(error: Exception, key: str, value: Any = None, fix: str | None = None) -> ConfigError:
    """A library's ValueError said about config `key`: a BadArgument names the argument (key.<name>)."""
    if isinstance(error, BadArgument):
        full = key if key.endswith(f".{error.name}") or key == error.name else f"{key}.{error.name}"
        suggestion = None if error.suggestion is None else f"{full}={error.suggestion}"
        return ConfigError(full, error.value, error.allowed, suggestion)
    return ConfigError(key, value, str(error), fix)


@contextmanager
def boundary(key: str, value: Any = None, fix: str | None = None) -> Iterator[None]:
    """Library code inside raises plain ValueErrors; they leave as config errors about `key`."""
    try:
        yield
    except UserError:
        raise
    except ValueError as e:
        raise as_config_error(e, key, value, fix) from None


def build(node: DictConfig, key: str) -> Any:
    """hydra.utils.instantiate; a library's ValueError (or our own error) comes out as a config error."""
    try:
        return instantiate(node)
    except Exception as e:
        cause = e.__cause__ or e
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise as_config_error(cause, key, OmegaConf.to_container(node, resolve=True)) from None
        raise


def one_kind(info: RunInfo) -> bool:
    """A command line that sets task.canvas.count, .digits or .clutter, and not task.kinds, asks for that one
    kind of canvas (what those keys meant before task.kinds): task.kinds is then not read."""
    said = any(info.on_command_line(f"task.canvas.{k}") for k in ("count", "digits", "clutter"))
    return said and not info.on_command_line("task.kinds")


def canvas_kinds(task: DictConfig, dataset: DictConfig, alone: bool = False) -> list[tuple[str, DictConfig]]:
    """(name, canvas config) of each kind task.kinds asks for (null, or `alone`: task.canvas alone), checked."""
    if dataset.name not in MNIST_FAMILY:
        raise ConfigError(
            "dataset.name",
            dataset.name,
            f"an MNIST-family dataset ({', '.join(MNIST_FAMILY)}): canvases are digits on black; "
            "for other datasets use task=cam task.source=test (overlays without boxes)",
            "checkpoint=<a checkpoint trained on MNIST>",
        )
    several = None if alone else task.get("kinds")
    out = []
    for i, kind in enumerate(several or [{}]):
        canvas = OmegaConf.merge(task.canvas, {k: v for k, v in dict(kind).items() if v is not None})
        where = f"task.kinds[{i}]" if several else "task.canvas"
        with boundary(where):
            check_canvas_config(*(canvas[k] for k in CANVAS_KEYS), max(dataset.shape[1:]))
        name = kind_name(int(canvas.digits), int(canvas.clutter))
        if name in (n for n, _ in out):
            raise ConfigError(where, OmegaConf.to_container(kind), f"a kind unlike the others ({name} twice)", "")
        out.append((name, canvas))
    return out


def canvases_for(canvas: DictConfig, data: sources.Splits, dataset: DictConfig, seed: int) -> Canvases:
    """The canvases of one kind, from the digits of the split it names: the test split of `data` (the dataset the
    model was trained on), or its validation split (held out with the training run's `seed`)."""
    if canvas.split == "val":
        _, val = split_train_val(len(data.train_y), int(dataset.val_size), seed)
        images, labels = data.train_x[val], data.train_y[val]
    else:
        images, labels = data.test_x, data.test_y
    return make_canvases(images, labels, *(canvas[k] for k in CANVAS_KEYS), seed=int(canvas.seed))


def typed(node: DictConfig) -> Any:
    """A config group as its schema's dataclass (interpolations resolved)."""
    return OmegaConf.to_object(node)


@dataclass
class Loaders:
    train: DeviceLoader
    val: DeviceLoader
    test: DeviceLoader


def data_root(dataset: DictConfig) -> Path | None:
    return None if dataset.root is None else Path(str(dataset.root)).expanduser().absolute()  # whole paths in errors


def with_fix(dataset: DictConfig, error: DataError) -> DataError:
    """A missing or unreadable file, said with the overrides that fix it."""
    if dataset.name == "mnist_sample":
        return error
    how = (
        "or, where there is network access, run once with `dataset.download=true`"
        if not dataset.download
        else "or download them where there is network access and copy them there"
    )
    return DataError(f"dataset={dataset.name}: {error} Point `dataset.root=DIR` at a folder holding the files, {how}.")


def load_data(dataset: DictConfig) -> sources.Splits:
    """The dataset's files; a missing or unreadable file is said with the overrides that fix it."""
    try:
        return sources.load(dataset.name, data_root(dataset), bool(dataset.download))
    except DataError as e:
        raise with_fix(dataset, e) from None


def own_images(task: DictConfig) -> list[Path]:
    """The files task.images names: a PNG or JPEG file, or a folder of them."""
    from cnnlab.data.files import image_files

    try:
        return image_files(Path(str(task.images)).expanduser())
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("task.images", task.images, f"a PNG or JPEG file, or a folder of them ({e})") from None


def check_data(dataset: DictConfig) -> None:
    """Before any work: the dataset's files are there (their headers read) and hold more training images than
    dataset.val_size holds out."""
    try:
        count = sources.training_images(dataset.name, data_root(dataset), bool(dataset.download))
    except DataError as e:
        raise with_fix(dataset, e) from None
    if count is not None and int(dataset.val_size) >= count:
        allowed = f"fewer than the {count} training images of {dataset.name} (some must be left to train on)"
        raise ConfigError("dataset.val_size", int(dataset.val_size), allowed, f"dataset.val_size={count // 8}")


def build_loaders(
    dataset: DictConfig,
    trainer: TrainerConfig,
    runtime: RuntimeConfig,
    seed: int,
    device: torch.device,
    run_dir: Path | None = None,
) -> Loaders:
    """Load `dataset`, hold out the seeded val split, and batch every split on `device`."""
    data = load_data(dataset)
    shape = list(data.train_x.shape[1:])
    if shape != list(dataset.shape):
        raise ConfigError(
            "dataset.shape", list(dataset.shape), f"the shape of the files, {shape}", f"dataset.shape={shape}"
        )
    with boundary("dataset.val_size"):
        train_idx, val_idx = split_train_val(len(data.train_y), int(dataset.val_size), seed)
    if run_dir is not None:
        (run_dir / "split.json").write_text(json.dumps({"seed": seed, "val_indices": val_idx.tolist()}))
    augment = dataset.get("augment") or {}
    common = {"mean": list(dataset.mean), "std": list(dataset.std), "device": device}
    common["channels_last"] = bool(runtime.channels_last)
    train_x, train_y = data.train_x[train_idx], data.train_y[train_idx]
    val_x, val_y = data.train_x[val_idx], data.train_y[val_idx]
    uncropped = None
    if background_index(dataset) is not None:  # patches from each split's own digits; the test split stays as is
        train_x, train_y, uncropped = with_background(train_x, train_y, dataset, seed)
        val_x, val_y, _ = with_background(val_x, val_y, dataset, seed + 1)
    if trainer.overfit_batches:  # debug=overfit: the same few batches, unshuffled, for training and val
        n = trainer.overfit_batches * trainer.batch_size
        fixed = DeviceLoader(train_x[:n], train_y[:n], trainer.batch_size, **common)
        return Loaders(fixed, fixed, DeviceLoader(data.test_x, data.test_y, runtime.eval_batch_size, **common))
    with boundary("trainer.batch_size", trainer.batch_size):
        train = DeviceLoader(
            train_x,
            train_y,
            trainer.batch_size,
            shuffle=True,
            pad=int(augment.get("pad", 0)),
            flip=bool(augment.get("flip", False)),
            rotate=float(augment.get("rotate", 0.0)),
            seed=seed,
            drop_last=trainer.drop_last,
            uncropped=uncropped,
            **common,
        )
    return Loaders(
        train=train,
        val=DeviceLoader(val_x, val_y, runtime.eval_batch_size, **common),
        test=DeviceLoader(data.test_x, data.test_y, runtime.eval_batch_size, **common),
    )


def with_background(
    x: torch.Tensor, y: torch.Tensor, dataset: DictConfig, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The split plus round(background x its size) background patches of label num_classes (the last) and
    round(context x its size) context digits, and which samples are the patches (pad-and-crop leaves them)."""
    count = max(1, round(float(dataset.background) * len(y)))
    patches = background_patches(x, count, seed=seed)
    labels = torch.full((count,), int(dataset.num_classes), dtype=y.dtype)
    if dataset.get("context", 0):  # digits as crops on a canvas show them, labelled by their own digit
        extra, which = context_digits(x, max(1, round(float(dataset.context) * len(y))), seed=seed + 1_000_003)
        x, y = torch.cat([x, extra]), torch.cat([y, y[which]])
    uncropped = torch.cat([torch.zeros(len(y), dtype=torch.bool), torch.ones(count, dtype=torch.bool)])
    return torch.cat([x, patches]), torch.cat([y, labels]), uncropped


def background_index(dataset: DictConfig) -> int | None:
    """The index of a model's background class (its last output), None when it was trained without one."""
    return int(dataset.num_classes) if dataset.get("background", 0) else None


def class_names(dataset: DictConfig) -> list[str] | None:
    """The names of a model's outputs for tables and figures: the dataset's (or None: the numbers), and
    `background` last when it was trained with a background class."""
    names, background = dataset.get("classes"), background_index(dataset)
    if background is None:
        return None if names is None else list(names)
    return [*(names or [str(c) for c in range(background)]), "background"]


def trained_dataset(saved: DictConfig, cfg: DictConfig, info: RunInfo) -> DictConfig:
    """The dataset config a checkpoint was trained with, with its files found on this machine.

    The root comes from this run's config (dataset.root, paths.data_dir, CNNLAB_DATA) when the command line
    sets dataset.root or composes the same dataset (e.g. `dataset=mnist`); otherwise the checkpoint's root.
    """
    dataset = saved.dataset.copy()
    if info.on_command_line("dataset.root") or cfg.dataset.name == dataset.name:
        dataset.root = cfg.dataset.root
    return dataset


def checkpoint_path(reference: str | None, run_dir: Path) -> Path:
    """The checkpoint file `checkpoint=` names: a .pt file, a run dir (its checkpoints/best.pt) or
    wandb:<entity>/<project>/<artifact>:<alias> (downloaded into <run_dir>/artifacts)."""
    if not reference:
        raise ConfigError(
            "checkpoint",
            reference,
            "a checkpoint path, a run dir or wandb:<entity>/<project>/<artifact>:<alias>",
            "checkpoint=outputs/<run>/checkpoints/best.pt",
        )
    if str(reference).startswith("wandb:"):
        from cnnlab.records.tracking import fetch_artifact

        return fetch_artifact(str(reference), run_dir / "artifacts")
    path = Path(reference)
    if path.is_dir():
        best = path / CHECKPOINTS / "best.pt"
        if not best.is_file():
            raise CheckpointError(
                f"checkpoint={reference} is a folder without checkpoints/best.pt: pass a run dir of a run that "
                "trained, or the .pt file itself"
            )
        return best
    return path


def evaluated_dataset(saved: DictConfig, cfg: DictConfig, info: RunInfo) -> DictConfig:
    """The data task=evaluate tests on: the checkpoint's, or one the command line names (dataset=...) of the same
    image shape and classes, normalized as the model was trained; another shape or class count is refused."""
    if not info.on_command_line("dataset") or cfg.dataset.name == saved.dataset.name:
        return trained_dataset(saved, cfg, info)
    mine, theirs = (
        (list(cfg.dataset.shape), int(cfg.dataset.num_classes)),
        (list(saved.dataset.shape), int(saved.dataset.num_classes)),  # a background class is the model's own
    )
    if mine != theirs:
        allowed = (
            f"a dataset of the model's input shape {theirs[0]} and {theirs[1]} classes (this one: {mine[0]}, {mine[1]})"
        )
        raise ConfigError("dataset", cfg.dataset.name, allowed, f"dataset={saved.dataset.name}")
    dataset = cfg.dataset.copy()
    dataset.mean, dataset.std = saved.dataset.mean, saved.dataset.std  # the input the model was trained on
    dataset.background = saved.dataset.get("background", 0)
    return dataset


def restore_model(reference: str | None, device: torch.device, run_dir: Path) -> tuple[Any, DictConfig, dict]:
    """Rebuild the model a checkpoint was trained with, from the config stored in it, in eval mode.

    `reference`: see checkpoint_path. Returns (model, saved config, checkpoint state).
    """
    path = checkpoint_path(reference, run_dir)
    if path != Path(str(reference)) and not str(reference).startswith("wandb:"):  # said once, by the run
        log.info("checkpoint=%s: its best checkpoint, %s", reference, path)
    state = checkpoint.load(path)
    saved = OmegaConf.create(state["config"])
    model = instantiate(saved.model)
    checkpoint.check_fits(model, state["model"], path)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), saved, state


def class_map_method(model: Any, task: DictConfig, black: torch.Tensor | None = None) -> Any:
    """task.method at task.layer on a restored model (cnnlab.vision); a bad name or layer is a config error.
    `black`: a black pixel, normalized (C, 1, 1), where a method hides the input."""
    from cnnlab.vision import make_method

    with boundary("task"):
        return make_method(str(task.method), model.eval(), task.get("layer"), black)


def history(run_dir: Path) -> list[dict[str, Any]]:
    return read_rows(run_dir / HISTORY)
