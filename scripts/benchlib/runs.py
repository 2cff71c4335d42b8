"""cnnlab's side of each measurement: its defaults on this device, a Trainer that only trains, timed fits over
windows of steps, and the runs the references in refs.py are measured against (step, loader, epoch).

The bench's cnnlab imports are here, but for data.py's writer and refs.py's reader and model.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from benchlib.data import CIFAR_MEAN, CIFAR_STD, cifar_like
from benchlib.refs import autocast, bare_loop_img_per_s, sgd
from benchlib.timing import Laps, Parts, sync
from cnnlab.config.schema import RuntimeConfig, TrainerConfig
from cnnlab.data.loader import DeviceLoader
from cnnlab.models.packed import member_outputs, pack, pack_inputs
from cnnlab.models.resnet import ResNet
from cnnlab.tasks.build import Loaders, build_loaders
from cnnlab.training.hardware import native_bf16, resolve_precision
from cnnlab.training.scheduler import constant, multistep
from cnnlab.training.trainer import Trainer, channels_last_crashes


@dataclass(frozen=True)
class Defaults:
    """What a default run uses on this device."""

    precision: str  # trainer.precision=auto, resolved
    channels_last: bool  # runtime.channels_last=auto for the ResNets measured here
    compile: bool  # runtime.compile
    native_bf16: bool


def defaults_for(device: torch.device) -> Defaults:
    precision = resolve_precision(TrainerConfig.precision, device)[0]
    channels_last = not channels_last_crashes(ResNet(depth=20), device)
    return Defaults(precision, channels_last, RuntimeConfig.compile, native_bf16(device))


def quiet_trainer(device: torch.device, run_dir: Path, precision: str, channels_last: bool | str, **kw) -> Trainer:
    """A Trainer that logs, checkpoints and draws nothing: only the loop is measured."""
    compile_ = kw.pop("compile", False)
    checkpoint = kw.pop("checkpoint", False)
    runtime = RuntimeConfig(
        log_every=10**9, checkpoint=checkpoint, figures=False, channels_last=channels_last, compile=compile_
    )
    kw.setdefault("batch_size", 128)
    return Trainer(TrainerConfig(precision=precision, drop_last=compile_, **kw), device, run_dir, runtime=runtime)


# ------------------------------------------------------------------------------------------------ train, recipe, grid
@dataclass
class Window:
    """One measured stretch of training: the Trainer's summary, and the wall time of the fit around it."""

    summary: dict
    wall_s: float
    evals: int  # evaluations in the fit (lines of history.jsonl)

    @property
    def step_s(self) -> float:
        return self.summary["train_seconds"] / self.summary["steps"]

    @property
    def eval_s(self) -> float:
        """Time per evaluation (val, test when given, and its checkpoints): the fit's time outside steps."""
        return max(self.wall_s - self.summary["train_seconds"], 0.0) / max(self.evals, 1)


def fit_window(model, loaders: Loaders, trainer: Trainer, paper: bool, test: bool) -> Window:
    """Train `model` for the trainer's max_steps (a fresh optimizer, the paper's schedule when `paper`); time it."""
    history = trainer.run_dir / "history.jsonl"
    history.unlink(missing_ok=True)
    schedule = (lambda **kw: multistep(**kw, milestones=[32000, 48000], unit="step")) if paper else constant
    sync(trainer.device)
    tic = time.perf_counter()
    summary = trainer.fit(model, sgd(model), schedule, loaders.train, loaders.val, test=loaders.test if test else None)
    sync(trainer.device)
    wall = time.perf_counter() - tic
    return Window(summary, wall, len(history.read_text().splitlines()) if history.exists() else 0)


def measure(
    depth: int, loaders: Loaders, device: torch.device, batch: int, precision: str, compile_: bool, steps: int, **kw
) -> tuple[Window, Window]:
    """A warm-up fit of one step (first kernels, cudnn's choice, compiling), then a fit of `steps` steps."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-run-") as run_dir:
        channels_last = bool(loaders.train.memory_format == torch.channels_last)
        common = {"batch_size": batch, "epochs": None, "compile": compile_}
        warm_trainer = quiet_trainer(device, Path(run_dir), precision, channels_last, max_steps=1, **common)
        model = warm_trainer.prepare(ResNet(depth=depth))
        small = Loaders(loaders.train, tiny(loaders.val), tiny(loaders.test))
        warm = fit_window(model, small, warm_trainer, paper=False, test=False)
        trainer = quiet_trainer(device, Path(run_dir), precision, channels_last, max_steps=steps, **common, **kw)
        return warm, fit_window(model, loaders, trainer, paper=True, test=kw.get("eval_test", False))


def tiny(loader: DeviceLoader) -> DeviceLoader:
    """A few images of an evaluation loader, in batches of its size (a compiled model sees the same shape)."""
    n = min(loader.batch_size, loader.num_samples, 256)  # a warm-up fit evaluates once: only its step matters
    channels_last = loader.memory_format == torch.channels_last
    x, y, device = loader.x[:n], loader.y[:n], loader.x.device
    return DeviceLoader(x, y, loader.batch_size, CIFAR_MEAN, CIFAR_STD, device, channels_last=channels_last)


def loaders_for(dataset: DictConfig, device: torch.device, batch: int, compile_: bool, channels_last: bool) -> Loaders:
    """The loaders a run builds from the files (train, val, test)."""
    trainer_cfg = TrainerConfig(batch_size=batch, drop_last=compile_)
    runtime = RuntimeConfig(channels_last=channels_last, compile=compile_)
    return build_loaders(dataset, trainer_cfg, runtime, 0, device)


# ------------------------------------------------------------------------------------------------ step, data, epoch
def step_sides(
    depth: int, device: torch.device, batch: int, steps: int, precision: str, channels_last: bool
) -> tuple[Callable[[], float], Callable[[], float]]:
    """`step`'s two sides, img/s of `steps` steps from a fresh model: a Trainer fit, and the bare loop over the
    same batches (ready-made on the device, so the bare side pays nothing for its data)."""
    x, y = cifar_like(batch * steps)
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-bench-step-"))
    trainer = quiet_trainer(device, tmp, precision, channels_last, epochs=None, max_steps=steps, batch_size=batch)
    train = DeviceLoader(x, y, batch, CIFAR_MEAN, CIFAR_STD, device, shuffle=True, channels_last=channels_last)
    val = DeviceLoader(x[:8], y[:8], 8, CIFAR_MEAN, CIFAR_STD, device, channels_last=channels_last)
    batches = [(xb.clone(), yb.clone()) for xb, yb in train.batches(0)]

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = trainer.prepare(ResNet(depth=depth))
        return model, sgd(model)

    def cnnlab_step() -> float:
        model, opt = fresh()
        (tmp / "history.jsonl").unlink(missing_ok=True)
        return trainer.fit(model, opt, constant, train, val)["train_img_per_s"]

    return cnnlab_step, lambda: bare_loop_img_per_s(*fresh(), batches, precision, device)


def device_loader_pass(x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device) -> Callable[[], float]:
    """`data`'s cnnlab side: a function that runs the next epoch of the device-resident loader; img/s."""
    loader = DeviceLoader(x, y, batch, CIFAR_MEAN, CIFAR_STD, device, shuffle=True, pad=4, flip=True)
    epochs = itertools.count()

    def one_epoch() -> float:
        sync(device)
        tic = time.perf_counter()
        for _batch in loader.batches(next(epochs)):
            pass
        sync(device)
        return len(x) / (time.perf_counter() - tic)

    return one_epoch


def epoch_cnnlab(dataset: DictConfig, device: torch.device, batch: int) -> Parts:
    """What `python -m cnnlab model=resnet dataset=cifar10 trainer.epochs=1` does, less start-up and logging."""
    lap = Laps(device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-epoch-") as run_dir:
        defaults = {"batch_size": batch, "epochs": 1, "compile": RuntimeConfig.compile}
        trainer = quiet_trainer(device, Path(run_dir), TrainerConfig.precision, "auto", **defaults)
        model = trainer.prepare(ResNet(depth=20))
        lap("build")
        loaders = build_loaders(dataset, trainer.cfg, trainer.runtime, 0, device)  # reads the files
        lap("read")
        fit = trainer.fit(model, sgd(model), constant, loaders.train, loaders.val)  # one evaluation, at the end
        lap("fit")
    return {"build": lap.parts["build"], "read": lap.parts["read"], "train": fit["train_seconds"],
            "evaluate": lap.parts["fit"] - fit["train_seconds"]}  # fmt: skip


def packed_sides(
    depth: int,
    members: int,
    device: torch.device,
    batch: int,
    steps: int,
    precision: str,
    channels_last: bool,
    exact: bool,
) -> tuple[Callable[[], float], Callable[[], float]]:
    """`packed`'s two sides, images/s per member over `steps` steps of each of `members` ResNets with their own
    batches (bare loops, the same optimizer and precision): the members one after the other, and packed into
    one module (cnnlab.models.packed, `exact` or fused) taking all their batches in one step."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    data = []
    for k in range(members):
        x, y = cifar_like(batch * steps, seed=k)
        loader = DeviceLoader(x, y, batch, CIFAR_MEAN, CIFAR_STD, device, True, seed=k, channels_last=channels_last)
        data.append([(xb.clone(), yb.clone()) for xb, yb in loader.batches(0)])
    models = []
    for k in range(members):
        torch.manual_seed(k)
        models.append(ResNet(depth=depth).to(device).to(memory_format=fmt))
    packed = pack(models, exact).to(memory_format=fmt)
    packed_batches = [
        (pack_inputs([data[k][i][0] for k in range(members)]).contiguous(memory_format=fmt),
         torch.stack([data[k][i][1] for k in range(members)], dim=1))
        for i in range(steps)
    ]  # fmt: skip
    alone = [(m, sgd(m)) for m in models]
    together = sgd(packed)

    def one_by_one() -> float:
        sync(device)
        tic = time.perf_counter()
        for (model, opt), batches in zip(alone, data, strict=True):
            bare_loop_img_per_s(model, opt, batches, precision, device)
        sync(device)
        return batch * steps / (time.perf_counter() - tic)  # per member: each saw batch * steps images

    def as_one() -> float:
        packed.train()
        sync(device)
        tic = time.perf_counter()
        for xb, yb in packed_batches:
            with autocast(precision, device):
                logits = member_outputs(packed(xb), members).float()
                loss = sum(F.cross_entropy(logits[:, k], yb[:, k]) for k in range(members))  # as PackedTrainer
            together.zero_grad(set_to_none=True)
            loss.backward()
            together.step()
        sync(device)
        return batch * steps / (time.perf_counter() - tic)

    return as_one, one_by_one
