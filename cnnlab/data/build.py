"""From a dataset config to device-resident train/val/test loaders, with the seeded split saved."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnlab.data import sources
from cnnlab.data.loader import DeviceLoader, split_train_val
from cnnlab.errors import ConfigError


@dataclass
class Loaders:
    train: DeviceLoader
    val: DeviceLoader
    test: DeviceLoader


def build_loaders(
    dataset: Any,
    trainer: Any,
    seed: int,
    device: torch.device,
    run_dir: Path | None = None,
) -> Loaders:
    """Load `dataset` (a dataset config), hold out the seeded val split, and batch every split on `device`."""
    data = sources.load(dataset.name, dataset.root, bool(dataset.download))
    shape = list(data.train_x.shape[1:])
    if shape != list(dataset.shape):
        raise ConfigError(
            "dataset.shape", list(dataset.shape), f"the shape of the files, {shape}", f"dataset.shape={shape}"
        )
    train_idx, val_idx = split_train_val(len(data.train_y), int(dataset.val_size), seed)
    if run_dir is not None:
        (run_dir / "split.json").write_text(json.dumps({"seed": seed, "val_indices": val_idx.tolist()}))
    augment = dataset.get("augment") or {}
    common = {
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "device": device,
        "channels_last": bool(trainer.channels_last),
    }
    return Loaders(
        train=DeviceLoader(
            data.train_x[train_idx],
            data.train_y[train_idx],
            int(trainer.batch_size),
            shuffle=True,
            pad=int(augment.get("pad", 0)),
            flip=bool(augment.get("flip", False)),
            seed=seed,
            **common,
        ),
        val=DeviceLoader(data.train_x[val_idx], data.train_y[val_idx], int(trainer.eval_batch_size), **common),
        test=DeviceLoader(data.test_x, data.test_y, int(trainer.eval_batch_size), **common),
    )


def trained_dataset(saved: Any, cfg: Any) -> Any:
    """The dataset config a checkpoint was trained with, with its files found on this machine.

    The root comes from this run's config (dataset.root, paths.data_dir, CNNLAB_DATA) when the command line
    sets dataset.root or composes the same dataset (e.g. `dataset=mnist`); otherwise the checkpoint's root.
    """
    from cnnlab.run import on_command_line

    dataset = saved.dataset.copy()
    if on_command_line("dataset.root") or cfg.dataset.name == dataset.name:
        dataset.root = cfg.dataset.root
    return dataset
