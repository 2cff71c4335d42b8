"""Benchmarks for the fast path; not a test. Prints one JSON line per measurement, each a ratio of two things
measured alternately in this process (so machine load affects both sides alike).

    python scripts/bench.py                 # all four, a few minutes on a 2-core CPU
    python scripts/bench.py --only step data --rounds 5

1. step:    cnnlab's Trainer vs a minimal hand-written PyTorch loop (same model, batches, threads, precision,
            memory format), ResNet-20 and ResNet-56 on CIFAR-shaped data. Goal >= 0.97.
2. data:    cnnlab's device-resident loader vs a torchvision DataLoader with PIL transforms
            (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize; num_workers = cores).
            Goal >= 20x, and data time <= 3% of a training step.
3. epoch:   a full epoch over CIFAR-10-format files, cnnlab with its defaults vs the usual recipe
            (DataLoader + PIL transforms, fp32, NCHW, plain SGD loop). Goal >= 1.5x.
4. startup: `python -m cnnlab --cfg job`, and the time to the first optimizer step of the default run.
            Goals <= 2 s and <= 6 s.
Also `options`: ResNet-20 training img/s for each precision x memory format, to choose defaults.
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
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from cnnlab.config import RuntimeConfig, TrainerConfig  # noqa: E402
from cnnlab.data.loader import DeviceLoader  # noqa: E402
from cnnlab.data.sources import load_cifar10  # noqa: E402
from cnnlab.models.resnet import ResNet  # noqa: E402
from cnnlab.tasks.parts import build_loaders  # noqa: E402
from cnnlab.training.trainer import Trainer  # noqa: E402

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def emit(name: str, **fields: object) -> None:
    print(json.dumps({"bench": name, **fields}), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(a, b, rounds: int) -> tuple[float, float]:
    """Median of a() and of b(), called alternately after one warm-up each."""
    a(), b()
    xs, ys = [], []
    for _ in range(rounds):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys)


def quiet_trainer(device: torch.device, run_dir: Path, precision: str, channels_last: bool | str, **kw) -> Trainer:
    """A Trainer that logs, checkpoints and draws nothing: only the loop is measured."""
    runtime = RuntimeConfig(log_every=10**9, checkpoint=False, figures=False, channels_last=channels_last)
    return Trainer(TrainerConfig(batch_size=128, precision=precision, **kw), device, run_dir, runtime=runtime)


def bare_step(model, opt, xb: torch.Tensor, yb: torch.Tensor, precision: str, device: torch.device) -> None:
    """The minimal hand-written PyTorch training step the Trainer is measured against."""
    with autocast(precision, device):
        loss = F.cross_entropy(model(xb).float(), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def cifar_like(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(
        0, 10, (n,), generator=g
    )


def autocast(precision: str, device: torch.device):
    if precision == "32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# ------------------------------------------------------------------------------------------------ 1. step
def bench_step(device: torch.device, rounds: int, steps: int, precision: str, channels_last: bool) -> None:
    for depth in (20, 56):
        ours, bare = measure_step(depth, device, rounds, steps, precision, channels_last)
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
    depth: int, device: torch.device, rounds: int, steps: int, precision: str, channels_last: bool
) -> tuple[float, float]:
    x, y = cifar_like(128 * steps)
    tmp = Path(tempfile.mkdtemp())
    trainer = quiet_trainer(device, tmp, precision, channels_last, epochs=None, max_steps=steps)
    train = DeviceLoader(x, y, 128, CIFAR_MEAN, CIFAR_STD, device, shuffle=True, channels_last=channels_last)
    val = DeviceLoader(x[:8], y[:8], 8, CIFAR_MEAN, CIFAR_STD, device, channels_last=channels_last)
    batches = [(xb.clone(), yb.clone()) for xb, yb in train.batches(0)]  # the bare loop's data is ready-made

    def fresh():
        torch.manual_seed(0)
        model = trainer.prepare(ResNet(depth=depth))
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def cnnlab_step() -> float:
        model, opt = fresh()
        (tmp / "history.jsonl").unlink(missing_ok=True)
        return trainer.fit(model, opt, lambda **_: lambda s: 1.0, train, val)["train_img_per_s"]

    def bare_loop() -> float:
        model, opt = fresh()
        model.train()
        sync(device)
        tic = time.perf_counter()
        for xb, yb in batches:
            bare_step(model, opt, xb, yb, precision, device)
        sync(device)
        return len(x) / (time.perf_counter() - tic)

    return alternate(cnnlab_step, bare_loop, rounds)


# ------------------------------------------------------------------------------------------------ 2. data
class ArrayDataset(torch.utils.data.Dataset):
    """The usual recipe: one PIL image per sample through torchvision transforms."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def usual_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> torch.utils.data.DataLoader:
    from torchvision import transforms as T

    transform = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    )
    ds = ArrayDataset(x.permute(0, 2, 3, 1).numpy(), y.numpy(), transform)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=CORES, persistent_workers=False
    )


def bench_data(device: torch.device, rounds: int, step_ms: float | None) -> None:
    x, y = cifar_like(10_000)
    ours_loader = DeviceLoader(x, y, 128, CIFAR_MEAN, CIFAR_STD, device, shuffle=True, pad=4, flip=True)
    theirs_loader = usual_loader(x, y)
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

    a, b = alternate(ours, theirs, rounds)
    fields = {}
    if step_ms is not None:
        fields["data_share_of_step"] = round(128 / a * 1000 / step_ms, 4)
    emit(
        "data", cnnlab_img_per_s=round(a), dataloader_img_per_s=round(b), ratio=round(a / b, 1), goal=">= 20x", **fields
    )


def step_time_ms(device: torch.device, precision: str, channels_last: bool, steps: int = 5) -> float:
    x, y = cifar_like(128)
    model = ResNet(depth=20).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    xb = ((x.float() / 255 - 0.5) / 0.25).to(device).contiguous(memory_format=fmt)
    yb = y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    times = []
    for _ in range(steps + 1):
        sync(device)
        tic = time.perf_counter()
        bare_step(model, opt, xb, yb, precision, device)
        sync(device)
        times.append(time.perf_counter() - tic)
    return statistics.median(times[1:]) * 1000


# ------------------------------------------------------------------------------------------------ 3. epoch
def bench_epoch(device: torch.device, rounds: int, images: int, precision: str, channels_last: bool) -> None:
    from omegaconf import OmegaConf

    from tests.conftest import write_cifar10

    with tempfile.TemporaryDirectory() as tmp:
        write_cifar10(Path(tmp), per_batch=images // 5, n_test=100)
        dataset = OmegaConf.create(
            {
                "name": "cifar10",
                "root": tmp,
                "download": False,
                "shape": [3, 32, 32],
                "num_classes": 10,
                "mean": CIFAR_MEAN,
                "std": CIFAR_STD,
                "val_size": 100,
                "augment": {"pad": 4, "flip": True},
            }
        )
        trainer_cfg, runtime_cfg = TrainerConfig(batch_size=128), RuntimeConfig(channels_last=channels_last)
        data = load_cifar10(Path(tmp), download=False)

        def ours() -> float:
            tic = time.perf_counter()
            loaders = build_loaders(
                dataset, trainer_cfg, runtime_cfg, 0, device
            )  # reading the files is part of the epoch
            torch.manual_seed(0)
            trainer = quiet_trainer(device, Path(tmp), precision, channels_last, epochs=1)
            model = trainer.prepare(ResNet(depth=20))
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
            (Path(tmp) / "history.jsonl").unlink(missing_ok=True)
            trainer.fit(model, opt, lambda **_: lambda s: 1.0, loaders.train, loaders.val)
            sync(device)
            return time.perf_counter() - tic

        def usual() -> float:
            tic = time.perf_counter()
            loader = usual_loader(data.train_x[100:], data.train_y[100:])
            torch.manual_seed(0)
            model = ResNet(depth=20).to(device)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
            model.train()
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            sync(device)
            return time.perf_counter() - tic

        a, b = alternate(ours, usual, rounds)
        emit(
            "epoch",
            images=len(data.train_y) - 100,
            cnnlab_s=round(a, 2),
            usual_recipe_s=round(b, 2),
            ratio=round(b / a, 2),
            precision=precision,
            channels_last=channels_last,
            goal=">= 1.5x",
        )


# ------------------------------------------------------------------------------------------------ 4. startup
def bench_startup(rounds: int) -> None:
    env = {**os.environ, "WANDB_MODE": "offline"}

    def cfg_job() -> float:
        tic = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cnnlab", "--cfg", "job"], cwd=ROOT, env=env, check=True, capture_output=True
        )
        return time.perf_counter() - tic

    def first_step() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            tic = time.perf_counter()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cnnlab",
                    f"hydra.run.dir={tmp}",
                    "runtime.log_every=1",
                    "trainer.max_steps=1",
                    "runtime.figures=false",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            took = None
            for line in proc.stdout:
                if took is None and "step 1/1" in line:
                    took = time.perf_counter() - tic
            proc.wait()
            return took if took is not None else float("nan")

    a, b = alternate(cfg_job, first_step, rounds)
    emit("startup", cfg_job_s=round(a, 2), first_step_s=round(b, 2), goals="<= 2 s, <= 6 s")


def bench_options(device: torch.device) -> None:
    precisions = ["32"]
    if device.type == "cuda":
        precisions += ["bf16", "16"]
    elif torch.ops.mkldnn._is_mkldnn_bf16_supported():
        precisions.append("bf16")
    else:
        emit("options", note="no native bf16 on this CPU: bf16 autocast skipped (measured ~10x slower than 32)")
    for precision in precisions:
        for channels_last in (False, True):
            ms = step_time_ms(device, precision, channels_last)
            emit(
                "options",
                model="resnet20",
                precision=precision,
                channels_last=channels_last,
                img_per_s=round(128 / ms * 1000, 1),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["options", "step", "data", "epoch", "startup"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per step measurement")
    parser.add_argument("--epoch-images", type=int, default=4000)
    parser.add_argument("--precision", default=None, help="default: cnnlab's default for the device")
    parser.add_argument("--channels-last", default=None, choices=["true", "false"])
    args = parser.parse_args()
    device = torch.device(args.device)
    precision, channels_last = defaults_for(device)
    precision = args.precision or precision
    channels_last = channels_last if args.channels_last is None else args.channels_last == "true"
    emit(
        "machine",
        device=str(device),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        precision=precision,
        channels_last=channels_last,
    )
    if "options" in args.only:
        bench_options(device)
    if "step" in args.only:
        bench_step(device, args.rounds, args.steps, precision, channels_last)
    if "data" in args.only:
        bench_data(device, args.rounds, step_time_ms(device, precision, channels_last))
    if "epoch" in args.only:
        bench_epoch(device, args.rounds, args.epoch_images, precision, channels_last)
    if "startup" in args.only:
        bench_startup(args.rounds)


def defaults_for(device: torch.device) -> tuple[str, bool]:
    """The precision and memory format a default cnnlab run uses on `device` (trainer.precision/channels_last)."""
    from cnnlab.training.trainer import channels_last_crashes

    return TrainerConfig.precision, not channels_last_crashes(ResNet(depth=20), device)


if __name__ == "__main__":
    main()
