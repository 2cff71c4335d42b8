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
  packed   K = --members (2 4 8) ResNet-20s and ResNet-56s with their own batches (seeds), packed into one
           module (cnnlab.models.packed), exact (member by member) and fused (grouped), against the K trained
           one after the other: images/s per member, bare loops, --packed-steps steps each; ratio > 1: packing wins.
Ratios (step, data, epoch, startup, packed) are medians of the two sides measured alternately in this process, so
machine load weighs on both sides alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from benchlib.data import cifar_dataset, cifar_files, cifar_like
from benchlib.refs import CORES, dataloader_pass, epoch_usual, step_time_ms
from benchlib.runs import (
    Defaults,
    defaults_for,
    device_loader_pass,
    epoch_cnnlab,
    loaders_for,
    measure,
    packed_sides,
    step_sides,
)
from benchlib.timing import alternate, alternate_parts
from omegaconf import DictConfig

PAPER_STEPS, PAPER_EVAL_EVERY = 64_000, 1000  # He et al. 2016, section 4.2
GRID_DEPTHS = (20, 32, 44, 56, 110)
FIGURES = ("machine", "train", "recipe", "grid", "step", "data", "epoch", "startup", "options", "packed")
MODES = {"fp32": ("32", False), "bf16": ("bf16", False), "compile": ("32", True), "bf16+compile": ("bf16", True)}


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


def emit(name: str, **fields: object) -> None:
    print(json.dumps({"bench": name, **fields}), flush=True)


# ------------------------------------------------------------------------------------------------ figures
def bench_machine(device: torch.device, defaults: Defaults) -> None:
    gpu = {"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    emit(
        "machine",
        device=str(device),
        **gpu,
        cores=CORES,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        native_bf16=defaults.native_bf16,
        precision=defaults.precision,
        channels_last=defaults.channels_last,
    )


def bench_train(device: torch.device, dataset: DictConfig, sizes: Sizes, modes: list[str], defaults: Defaults) -> None:
    for mode in modes:
        precision, compile_ = MODES[mode]
        if precision == "bf16" and not defaults.native_bf16:
            emit("train", mode=mode, skipped="no native bf16 here: emulated bf16 runs several times slower")
            continue
        loaders = loaders_for(dataset, device, sizes.batch, compile_, defaults.channels_last)
        for depth in (20, 56):
            warm, run = measure(depth, loaders, device, sizes.batch, precision, compile_, sizes.train_window)
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
    device: torch.device, dataset: DictConfig, sizes: Sizes, defaults: Defaults, depths: tuple[int, ...] = (20, 56)
) -> list[tuple[int, float]]:
    """The paper's 64k steps at cnnlab's defaults, per depth, from a window of steps; returns [(depth, hours)].

    Steps are timed by the Trainer; the rest of the fit (evaluations, checkpoints) is counted per evaluation,
    and the 64k steps have 64 of them. The grid's depths are measured as experiment=degradation_grid runs them.
    """
    grid = depths == GRID_DEPTHS  # the grid evaluates the test split too (curves), over its own window
    figure, window = ("grid", sizes.grid_window) if grid else ("recipe", sizes.window)
    precision, compile_ = defaults.precision, defaults.compile
    loaders = loaders_for(dataset, device, sizes.batch, compile_, defaults.channels_last)
    results = []
    for depth in depths:
        _, run = measure(
            depth, loaders, device, sizes.batch, precision, compile_, window,
            eval_every=PAPER_EVAL_EVERY, eval_test=grid, checkpoint=True,
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


def bench_grid(device: torch.device, dataset: DictConfig, sizes: Sizes, defaults: Defaults) -> None:
    results = bench_recipe(device, dataset, sizes, defaults, GRID_DEPTHS)
    per_depth = {d: round(h, 3) for d, h in results}
    total = 2 * sum(h for _, h in results)  # the plain twin: the same convolutions, measured as the residual net
    emit("grid_total", runs=2 * len(results), seeds=1, hours=round(total, 2), hours_per_run=per_depth)


def bench_step(device: torch.device, sizes: Sizes, defaults: Defaults) -> None:
    precision, channels_last = defaults.precision, defaults.channels_last
    for depth in (20, 56):
        sides = step_sides(depth, device, sizes.batch, sizes.steps, precision, channels_last)
        ours, bare = alternate(*sides, sizes.rounds)
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


def bench_data(device: torch.device, sizes: Sizes, defaults: Defaults) -> None:
    step_ms = step_time_ms(device, defaults.precision, defaults.channels_last, sizes.batch)
    x, y = cifar_like(sizes.data_images)
    ours, theirs = device_loader_pass(x, y, sizes.batch, device), dataloader_pass(x, y, sizes.batch, device)
    a, b = alternate(ours, theirs, sizes.rounds)
    emit(
        "data",
        cnnlab_img_per_s=round(a),
        dataloader_img_per_s=round(b),
        ratio=round(a / b, 1),
        data_share_of_step=round(sizes.batch / a * 1000 / step_ms, 4),
        goal=">= 20x, share <= 3%",
    )


def bench_epoch(device: torch.device, sizes: Sizes, defaults: Defaults) -> None:
    """Read the files, train one epoch on 90%, evaluate on the other 10%: cnnlab's defaults vs the usual way."""
    val_size = sizes.epoch_images // 10
    with cifar_files(sizes.epoch_images, 100) as root:
        ours = partial(epoch_cnnlab, cifar_dataset(root, val_size), device, sizes.batch)
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
        precision=defaults.precision,
        channels_last=defaults.channels_last,
        goal=">= 1.3x without native bf16",
    )


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


def bench_options(device: torch.device, sizes: Sizes, defaults: Defaults) -> None:
    bf16 = ["bf16"] if defaults.native_bf16 else []
    precisions = ["32", *bf16] + (["16"] if device.type == "cuda" else [])
    if not bf16:
        emit("options", note="no native bf16 here: bf16 autocast skipped (measured ~10x slower than 32 on AVX2)")
    for precision in precisions:
        for channels_last in (False, True):
            ms = step_time_ms(device, precision, channels_last, sizes.batch, sizes.steps)
            emit("options", model="resnet20", precision=precision, channels_last=channels_last,
                 batch=sizes.batch, img_per_s=round(sizes.batch / ms * 1000, 1))  # fmt: skip


def bench_packed(device: torch.device, sizes: Sizes, defaults: Defaults, members: list[int], steps: int) -> None:
    for depth, k, exact in itertools.product((20, 56), members, (True, False)):
        sides = packed_sides(depth, k, device, sizes.batch, steps, defaults.precision, defaults.channels_last, exact)
        packed, one_by_one = alternate(*sides, sizes.rounds)
        emit(
            "packed",
            model=f"resnet{depth}",
            members=k,
            exact=exact,  # runtime.pack_exact: layers member by member (true) or grouped (false)
            precision=defaults.precision,
            channels_last=defaults.channels_last,
            packed_img_per_s_per_member=round(packed, 1),
            sequential_img_per_s_per_member=round(one_by_one, 1),
            ratio=round(packed / one_by_one, 3),
        )


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
    parser.add_argument("--members", type=int, nargs="+", default=[2, 4, 8], help="packed: the pack sizes K")
    parser.add_argument("--packed-steps", type=int, default=3, help="packed: optimizer steps per measurement (3)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    sizes = sizes_for(device, args.quick)
    sizes = replace(sizes, **{k: getattr(args, k) for k in SIZE_FLAGS if getattr(args, k) is not None})
    defaults = defaults_for(device)
    with ExitStack() as stack:
        dataset = None
        if {"train", "recipe", "grid"} & set(args.only):  # one CIFAR-size set of files for the three
            dataset = cifar_dataset(stack.enter_context(cifar_files(sizes.images, sizes.test)), sizes.val)
        run = {
            "machine": lambda: bench_machine(device, defaults),
            "train": lambda: bench_train(device, dataset, sizes, args.modes, defaults),
            "recipe": lambda: bench_recipe(device, dataset, sizes, defaults),
            "grid": lambda: bench_grid(device, dataset, sizes, defaults),
            "step": lambda: bench_step(device, sizes, defaults),
            "data": lambda: bench_data(device, sizes, defaults),
            "epoch": lambda: bench_epoch(device, sizes, defaults),
            "startup": lambda: bench_startup(sizes.rounds),
            "options": lambda: bench_options(device, sizes, defaults),
            "packed": lambda: bench_packed(device, sizes, defaults, args.members, args.packed_steps),
        }
        for name in FIGURES:
            if name in args.only:
                run[name]()


if __name__ == "__main__":
    main()
