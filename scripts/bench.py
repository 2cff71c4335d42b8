"""cnnlab's speed on this machine. One JSON line per figure on stdout; no network (the data is generated and
written in the real CIFAR-10 format to a temporary folder).

    python scripts/bench.py --device cuda      # the one run to make on a GPU: every figure
    python scripts/bench.py                    # --device auto: the GPU if there is one, else the CPU
    python scripts/bench.py --only step epoch --rounds 5
    python scripts/bench.py --quick --device cpu --only train recipe grid   # tiny settings: seconds

Figures (--only picks some):
  machine  the device, torch, threads, CPU capability, native bf16, and what a default run uses there.
  train    ResNet-20 and ResNet-56 training img/s through cnnlab's Trainer (steady state, batch 128) in each mode
           of --modes: fp32, bf16 (autocast), compile (torch.compile, fp32), bf16+compile. warmup_s is the first
           fit's one step (kernel choice, and compiling under compile); compile_s the Trainer's own figure.
  recipe   He et al.'s CIFAR-10 recipe (batch 128, 64k iterations, val 5k every 1k, checkpoints) for
           ResNet-20 and ResNet-56 at cnnlab's defaults: hours, from a measured window of --window steps.
  grid     the depth x plain/residual grid (20, 32, 44, 56, 110; 64k iterations each, test curves as in
           experiment=degradation_grid), one seed: hours, each depth measured over --grid-window steps.
  step     Trainer vs a minimal hand-written loop (same model, batches, precision, memory format). Goal >= 0.97.
  data     cnnlab's device-resident loader vs a torchvision DataLoader with PIL transforms
           (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize; num_workers = cores).
  epoch    one epoch over CIFAR-10-format files, read, trained and evaluated on the same held-out 10%: cnnlab's
           defaults vs the usual recipe (DataLoader + PIL transforms, fp32, NCHW, plain loop).
  startup  `python -m cnnlab --cfg job`, and the time to the first optimizer step of the default run.
  options  ResNet-20 training img/s for each precision x memory format, bare loop (to choose defaults).
Ratios (step, data, epoch, startup) are medians of the two sides measured alternately in this process, so
machine load weighs on both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from cnnlab.config import RuntimeConfig, TrainerConfig
from cnnlab.data.formats import write_cifar10
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.sources import load_cifar10
from cnnlab.models.resnet import ResNet
from cnnlab.tasks.parts import Loaders, build_loaders
from cnnlab.training.hardware import native_bf16, resolve_precision
from cnnlab.training.scheduler import constant, multistep
from cnnlab.training.trainer import Trainer, channels_last_crashes

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
PAPER_STEPS, PAPER_EVAL_EVERY = 64_000, 1000  # He et al. 2016, section 4.2
GRID_DEPTHS = (20, 32, 44, 56, 110)
FIGURES = ("machine", "train", "recipe", "grid", "step", "data", "epoch", "startup", "options")


@dataclass(frozen=True)
class Sizes:
    """How much each figure measures: the full settings, or --quick's tiny ones."""

    batch: int  # the paper's 128
    images: int  # training files for train/recipe/grid (CIFAR-10 has 50,000; val_size of them held out)
    val: int  # the paper's 5,000
    test: int  # CIFAR-10's 10,000
    train_window: int  # train: measured optimizer steps per model and mode
    window: int  # recipe: measured optimizer steps
    grid_window: int
    steps: int  # step: optimizer steps per measurement
    data_images: int
    epoch_images: int
    rounds: int


def sizes_for(device: torch.device, quick: bool) -> Sizes:
    if quick:
        return Sizes(batch=8, images=200, val=16, test=16, train_window=2, window=2, grid_window=1, steps=2,
                     data_images=256, epoch_images=200, rounds=1)  # fmt: skip
    if device.type == "cuda":
        return Sizes(128, 50_000, 5_000, 10_000, 500, 2000, 200, 8, 10_000, 50_000, 3)
    return Sizes(128, 50_000, 5_000, 10_000, 20, 40, 4, 8, 10_000, 10_000, 3)


# ------------------------------------------------------------------------------------------------ plumbing
def emit(name: str, **fields: object) -> None:
    print(json.dumps({"bench": name, **fields}), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(a: Callable[[], float], b: Callable[[], float], rounds: int) -> tuple[float, float]:
    """Median of a() and of b(), called alternately after one warm-up each."""
    a(), b()
    xs, ys = [], []
    for _ in range(rounds):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys)


def autocast(precision: str, device: torch.device):
    if precision == "32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def cifar_like(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


@contextmanager
def cifar_files(train: int, test: int) -> Iterator[Path]:
    """A temporary dataset root with CIFAR-10's six pickle batches: `train` images in five, `test` in one."""
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        yield write_cifar10(Path(tmp), per_batch=max(train // 5, 1), n_test=test)


def cifar_dataset(root: Path, val_size: int) -> DictConfig:
    """conf/dataset/cifar10.yaml, reading `root` with no download."""
    return OmegaConf.create(
        {
            "name": "cifar10",
            "root": str(root),
            "download": False,
            "shape": [3, 32, 32],
            "num_classes": 10,
            "mean": CIFAR_MEAN,
            "std": CIFAR_STD,
            "val_size": val_size,
            "augment": {"pad": 4, "flip": True},
        }
    )


def default_layout(device: torch.device) -> bool:
    """runtime.channels_last=auto for the ResNets measured here."""
    return not channels_last_crashes(ResNet(depth=20), device)


def default_precision(device: torch.device) -> str:
    """trainer.precision's default as a run on `device` resolves it."""
    return resolve_precision(TrainerConfig.precision, device)[0]


def quiet_trainer(device: torch.device, run_dir: Path, precision: str, channels_last: bool | str, **kw) -> Trainer:
    """A Trainer that logs, checkpoints and draws nothing: only the loop is measured."""
    compile_ = kw.pop("compile", False)
    checkpoint = kw.pop("checkpoint", False)
    runtime = RuntimeConfig(
        log_every=10**9, checkpoint=checkpoint, figures=False, channels_last=channels_last, compile=compile_
    )
    kw.setdefault("batch_size", 128)
    return Trainer(TrainerConfig(precision=precision, drop_last=compile_, **kw), device, run_dir, runtime=runtime)


def bare_step(model, opt, xb: torch.Tensor, yb: torch.Tensor, precision: str, device: torch.device) -> None:
    """The minimal hand-written PyTorch training step the Trainer is measured against."""
    with autocast(precision, device):
        loss = F.cross_entropy(model(xb).float(), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The paper's optimizer (conf/optimizer/sgd.yaml)."""
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


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


def fit_window(model, loaders: Loaders, steps: int, trainer: Trainer, paper: bool, test: bool) -> Window:
    """Train `model` for `steps` more steps (a fresh optimizer, the paper's schedule when `paper`); time the fit."""
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
    depth: int, loaders: Loaders, device: torch.device, sizes: Sizes, precision: str, compile_: bool, steps: int, **kw
) -> tuple[Window, Window]:
    """A warm-up fit of one step (first kernels, cudnn's choice, compiling), then a fit of `steps` steps."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-run-") as run_dir:
        channels_last = bool(loaders.train.memory_format == torch.channels_last)
        common = {"batch_size": sizes.batch, "epochs": None, "compile": compile_}
        warm_trainer = quiet_trainer(device, Path(run_dir), precision, channels_last, max_steps=1, **common)
        model = warm_trainer.prepare(ResNet(depth=depth))
        small = Loaders(loaders.train, tiny(loaders.val), tiny(loaders.test))
        warm = fit_window(model, small, 1, warm_trainer, paper=False, test=False)
        trainer = quiet_trainer(device, Path(run_dir), precision, channels_last, max_steps=steps, **common, **kw)
        return warm, fit_window(model, loaders, steps, trainer, paper=True, test=kw.get("eval_test", False))


def tiny(loader: DeviceLoader) -> DeviceLoader:
    """A few images of an evaluation loader, in batches of its size (a compiled model sees the same shape)."""
    n = min(loader.batch_size, loader.num_samples, 256)  # a warm-up fit evaluates once: only its step matters
    channels_last = loader.memory_format == torch.channels_last
    x, y, device = loader.x[:n], loader.y[:n], loader.x.device
    return DeviceLoader(x, y, loader.batch_size, CIFAR_MEAN, CIFAR_STD, device, channels_last=channels_last)


def loaders_for(dataset: DictConfig, device: torch.device, batch: int, compile_: bool) -> Loaders:
    """The loaders a run builds from the files (train, val, test), at the default layout."""
    trainer_cfg = TrainerConfig(batch_size=batch, drop_last=compile_)
    runtime = RuntimeConfig(channels_last=default_layout(device), compile=compile_)
    return build_loaders(dataset, trainer_cfg, runtime, 0, device)


MODES = {"fp32": ("32", False), "bf16": ("bf16", False), "compile": ("32", True), "bf16+compile": ("bf16", True)}


def bench_train(device: torch.device, dataset: DictConfig, sizes: Sizes, modes: list[str]) -> None:
    for mode in modes:
        precision, compile_ = MODES[mode]
        if precision == "bf16" and not native_bf16(device):
            emit("train", mode=mode, skipped="no native bf16 here: emulated bf16 runs several times slower")
            continue
        loaders = loaders_for(dataset, device, sizes.batch, compile_)
        for depth in (20, 56):
            warm, run = measure(depth, loaders, device, sizes, precision, compile_, sizes.train_window)
            fields = {}
            if "compile_seconds" in warm.summary:
                fields["compile_s"] = round(warm.summary["compile_seconds"], 2)
            if "compiled_graphs" in run.summary:
                fields["graphs_in_window"] = run.summary["compiled_graphs"]  # 0: no recompiles
            emit(
                "train",
                model=f"resnet{depth}",
                mode=mode,
                batch=sizes.batch,
                steps=run.summary["steps"],
                img_per_s=round(run.summary["train_img_per_s"], 1),
                warmup_s=round(warm.wall_s, 2),
                **fields,
            )


def bench_recipe(
    device: torch.device, dataset: DictConfig, sizes: Sizes, depths: tuple[int, ...], window: int, figure: str
) -> list[tuple[int, float]]:
    """The paper's 64k steps at cnnlab's defaults, per depth, from a window of steps; returns [(depth, hours)].

    Steps are timed by the Trainer; the rest of the fit (evaluations, checkpoints) is counted per evaluation,
    and the 64k steps have 64 of them.
    """
    precision, compile_ = default_precision(device), RuntimeConfig.compile
    test = figure == "grid"  # experiment=degradation_grid evaluates the test split too (curves)
    loaders = loaders_for(dataset, device, sizes.batch, compile_)
    results = []
    for depth in depths:
        _, run = measure(
            depth, loaders, device, sizes, precision, compile_, window,
            eval_every=PAPER_EVAL_EVERY, eval_test=test, checkpoint=True,
        )  # fmt: skip
        hours = (PAPER_STEPS * run.step_s + PAPER_STEPS // PAPER_EVAL_EVERY * run.eval_s) / 3600
        results.append((depth, hours))
        emit(
            figure,
            model=f"resnet{depth}",
            batch=sizes.batch,
            precision=precision,
            compile=compile_,
            window_steps=run.summary["steps"],
            step_ms=round(run.step_s * 1000, 2),
            eval_s=round(run.eval_s, 2),
            hours_64k=round(hours, 3),
        )
    return results


def bench_grid(device: torch.device, dataset: DictConfig, sizes: Sizes) -> None:
    results = bench_recipe(device, dataset, sizes, GRID_DEPTHS, sizes.grid_window, "grid")
    per_depth = {d: round(h, 3) for d, h in results}
    total = 2 * sum(h for _, h in results)  # the plain twin: the same convolutions, measured as the residual net
    emit("grid_total", runs=2 * len(results), seeds=1, hours=round(total, 2), hours_per_run=per_depth)


# ------------------------------------------------------------------------------------------------ step
def bench_step(device: torch.device, sizes: Sizes, precision: str, channels_last: bool) -> None:
    for depth in (20, 56):
        ours, bare = measure_step(depth, device, sizes, precision, channels_last)
        emit(
            "step",
            model=f"resnet{depth}",
            precision=precision,
            channels_last=channels_last,
            cnnlab_img_per_s=round(ours, 1),
            bare_img_per_s=round(bare, 1),
            ratio=round(ours / bare, 3),
            goal=">= 0.97",
        )


def measure_step(
    depth: int, device: torch.device, sizes: Sizes, precision: str, channels_last: bool
) -> tuple[float, float]:
    x, y = cifar_like(sizes.batch * sizes.steps)
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-bench-step-"))
    trainer = quiet_trainer(device, tmp, precision, channels_last, epochs=None, max_steps=sizes.steps,
                            batch_size=sizes.batch)  # fmt: skip
    train = DeviceLoader(x, y, sizes.batch, CIFAR_MEAN, CIFAR_STD, device, shuffle=True, channels_last=channels_last)
    val = DeviceLoader(x[:8], y[:8], 8, CIFAR_MEAN, CIFAR_STD, device, channels_last=channels_last)
    batches = [(xb.clone(), yb.clone()) for xb, yb in train.batches(0)]  # the bare loop's data is ready-made

    def fresh():
        torch.manual_seed(0)
        model = trainer.prepare(ResNet(depth=depth))
        return model, sgd(model)

    def cnnlab_step() -> float:
        model, opt = fresh()
        (tmp / "history.jsonl").unlink(missing_ok=True)
        return trainer.fit(model, opt, constant, train, val)["train_img_per_s"]

    def bare_loop() -> float:
        model, opt = fresh()
        model.train()
        sync(device)
        tic = time.perf_counter()
        for xb, yb in batches:
            bare_step(model, opt, xb, yb, precision, device)
        sync(device)
        return len(x) / (time.perf_counter() - tic)

    return alternate(cnnlab_step, bare_loop, sizes.rounds)


# ------------------------------------------------------------------------------------------------ data
class ArrayDataset(torch.utils.data.Dataset):
    """The usual recipe: one PIL image per sample through torchvision transforms."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def usual_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 128, train: bool = True):
    """torchvision's CIFAR-10 recipe: RandomCrop(32, 4) and flips for training, ToTensor and Normalize."""
    from torchvision import transforms as T

    augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    transform = T.Compose([*augment, T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    ds = ArrayDataset(x.permute(0, 2, 3, 1).numpy(), y.numpy(), transform)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=CORES)


def bench_data(device: torch.device, sizes: Sizes, step_ms: float) -> None:
    x, y = cifar_like(sizes.data_images)
    ours_loader = DeviceLoader(x, y, sizes.batch, CIFAR_MEAN, CIFAR_STD, device, shuffle=True, pad=4, flip=True)
    theirs_loader = usual_loader(x, y, sizes.batch)
    epoch = iter(range(10**6))

    def ours() -> float:
        sync(device)
        tic = time.perf_counter()
        for _batch in ours_loader.batches(next(epoch)):
            pass
        sync(device)
        return len(x) / (time.perf_counter() - tic)

    def theirs() -> float:
        tic = time.perf_counter()
        for xb, _ in theirs_loader:
            xb.to(device, non_blocking=True)
        sync(device)
        return len(x) / (time.perf_counter() - tic)

    a, b = alternate(ours, theirs, sizes.rounds)
    emit(
        "data",
        cnnlab_img_per_s=round(a),
        dataloader_img_per_s=round(b),
        ratio=round(a / b, 1),
        data_share_of_step=round(sizes.batch / a * 1000 / step_ms, 4),
        goal=">= 20x, share <= 3%",
    )


def step_time_ms(device: torch.device, precision: str, channels_last: bool, batch: int, steps: int = 5) -> float:
    """Median time of a bare ResNet-20 training step after one warm-up step."""
    x, y = cifar_like(batch)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = ResNet(depth=20).to(device).to(memory_format=fmt)
    xb = ((x.float() / 255 - 0.5) / 0.25).to(device).contiguous(memory_format=fmt)
    yb = y.to(device)
    opt = sgd(model)
    times = []
    for _ in range(steps + 1):
        sync(device)
        tic = time.perf_counter()
        bare_step(model, opt, xb, yb, precision, device)
        sync(device)
        times.append(time.perf_counter() - tic)
    return statistics.median(times[1:]) * 1000


# ------------------------------------------------------------------------------------------------ epoch
def bench_epoch(device: torch.device, sizes: Sizes) -> None:
    """Read the files, train one epoch on 90%, evaluate on the other 10%: cnnlab's defaults vs the usual way."""
    val_size = sizes.epoch_images // 10
    with cifar_files(sizes.epoch_images, 100) as root:
        dataset = cifar_dataset(root, val_size)
        ours = partial(epoch_cnnlab, dataset, device, sizes.batch)
        usual = partial(epoch_usual, root, val_size, device, sizes.batch)
        (a, a_parts), (b, b_parts) = alternate_parts(ours, usual, sizes.rounds)
    emit(
        "epoch",
        images=sizes.epoch_images - val_size,
        val_images=val_size,
        cnnlab_s=round(a, 2),
        usual_recipe_s=round(b, 2),
        ratio=round(b / a, 3),
        cnnlab_parts_s=a_parts,
        usual_parts_s=b_parts,
        precision=default_precision(device),
        channels_last=default_layout(device),
        goal=">= 1.3x without native bf16",
    )


def alternate_parts(a, b, rounds: int):
    """alternate() for functions that return seconds by part: (median total, median of each part) of each side."""
    a(), b()  # warm-up
    runs = [(a(), b()) for _ in range(rounds)]

    def medians(parts: list[dict[str, float]]) -> tuple[float, dict[str, float]]:
        total = statistics.median(sum(p.values()) for p in parts)
        return total, {k: round(statistics.median(p[k] for p in parts), 2) for k in parts[0]}

    return medians([r[0] for r in runs]), medians([r[1] for r in runs])


class Laps:
    """Seconds spent in named parts of a run."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.tic = device, time.perf_counter()
        self.parts: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + now - self.tic
        self.tic = now


def epoch_cnnlab(dataset: DictConfig, device: torch.device, batch: int) -> dict[str, float]:
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


def epoch_usual(root: Path, val_size: int, device: torch.device, batch: int) -> dict[str, float]:
    """The usual recipe: files to arrays, DataLoader with PIL transforms, fp32 NCHW, then evaluation on val."""
    lap = Laps(device)
    torch.manual_seed(0)
    model = ResNet(depth=20).to(device)
    opt = sgd(model)
    lap("build")
    data = load_cifar10(root, download=False)  # pickle batches to arrays, as torchvision.datasets.CIFAR10 does
    train_x, val_x = data.train_x[val_size:], data.train_x[:val_size]
    train_y, val_y = data.train_y[val_size:], data.train_y[:val_size]
    lap("read")
    model.train()
    for xb, yb in usual_loader(train_x, train_y, batch):
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    lap("train")
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in usual_loader(val_x, val_y, 1000, train=False):
            correct += int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
    lap("evaluate")
    return lap.parts


# ------------------------------------------------------------------------------------------------ startup, options
def bench_startup(rounds: int) -> None:
    env = {**os.environ, "WANDB_MODE": "offline"}
    cwd = Path(__file__).resolve().parents[1]

    def cfg_job() -> float:
        tic = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cnnlab", "--cfg", "job"], cwd=cwd, env=env, check=True, capture_output=True
        )
        return time.perf_counter() - tic

    def first_step() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            tic = time.perf_counter()
            args = [f"hydra.run.dir={tmp}", "runtime.log_every=1", "trainer.max_steps=1", "runtime.figures=false"]
            proc = subprocess.Popen(
                [sys.executable, "-m", "cnnlab", *args],
                cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            took = None
            for line in proc.stdout or ():
                if took is None and "step 1/1" in line:
                    took = time.perf_counter() - tic
            proc.wait()
            return took if took is not None else float("nan")

    a, b = alternate(cfg_job, first_step, rounds)
    emit("startup", cfg_job_s=round(a, 2), first_step_s=round(b, 2), goals="<= 2 s, <= 6 s")


def bench_options(device: torch.device, batch: int, steps: int) -> None:
    precisions = ["32"] + (["bf16"] if native_bf16(device) else []) + (["16"] if device.type == "cuda" else [])
    if "bf16" not in precisions:
        emit("options", note="no native bf16 here: bf16 autocast skipped (measured ~10x slower than 32 on AVX2)")
    for precision in precisions:
        for channels_last in (False, True):
            ms = step_time_ms(device, precision, channels_last, batch, steps)
            emit("options", model="resnet20", precision=precision, channels_last=channels_last,
                 batch=batch, img_per_s=round(batch / ms * 1000, 1))  # fmt: skip


# ------------------------------------------------------------------------------------------------ main
SIZE_FLAGS = {
    "train_window": "train: measured steps per model and mode (500 on a GPU, 20 on a CPU)",
    "window": "recipe: measured steps per model (2000 on a GPU, 40 on a CPU)",
    "grid_window": "grid: measured steps per depth (200 on a GPU, 4 on a CPU)",
    "rounds": "alternating rounds of each ratio (3)",
    "epoch_images": "epoch: images in the files, 10%% held out (50,000 on a GPU, 10,000 on a CPU)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES), metavar="FIGURE")
    parser.add_argument("--device", default="auto", help="auto (default: the GPU if there is one), cpu, cuda, cuda:N")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (batch 8, 2 steps, ...): for tests")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="train: the modes")
    for name, text in SIZE_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=text)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    sizes = sizes_for(device, args.quick)
    sizes = replace(sizes, **{k: getattr(args, k) for k in SIZE_FLAGS if getattr(args, k) is not None})
    precision, channels_last = default_precision(device), default_layout(device)
    with ExitStack() as stack:
        dataset = None
        if {"train", "recipe", "grid"} & set(args.only):  # one CIFAR-size set of files for the three
            dataset = cifar_dataset(stack.enter_context(cifar_files(sizes.images, sizes.test)), sizes.val)
        run = {
            "machine": lambda: bench_machine(device, precision, channels_last),
            "train": lambda: bench_train(device, dataset, sizes, args.modes),
            "recipe": lambda: bench_recipe(device, dataset, sizes, (20, 56), sizes.window, "recipe"),
            "grid": lambda: bench_grid(device, dataset, sizes),
            "step": lambda: bench_step(device, sizes, precision, channels_last),
            "data": lambda: bench_data(device, sizes, step_time_ms(device, precision, channels_last, sizes.batch)),
            "epoch": lambda: bench_epoch(device, sizes),
            "startup": lambda: bench_startup(sizes.rounds),
            "options": lambda: bench_options(device, sizes.batch, sizes.steps),
        }
        for name in FIGURES:
            if name in args.only:
                run[name]()


def bench_machine(device: torch.device, precision: str, channels_last: bool) -> None:
    gpu = {"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    emit(
        "machine",
        device=str(device),
        **gpu,
        cores=CORES,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        native_bf16=native_bf16(device),
        precision=precision,
        channels_last=channels_last,
    )


if __name__ == "__main__":
    main()
