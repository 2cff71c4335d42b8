"""The one training loop that every task uses: fit with periodic evaluation and checkpoints, and evaluate.

Hot-loop rules: no host synchronisation per step (loss and accuracy accumulate on the device and are read
at log points), zero_grad(set_to_none=True), optional channels_last, autocast and torch.compile.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.loader import DeviceLoader
from cnnlab.errors import ConfigError, UserError
from cnnlab.progress import Progress
from cnnlab.tracking import NullLogger
from cnnlab.training import checkpoint
from cnnlab.training.stop import Interrupted, stop

log = logging.getLogger(__name__)
PRECISIONS = ("32", "bf16", "16")


def channels_last_crashes(model: nn.Module, device: torch.device) -> bool:
    """PyTorch's CPU kernels crash (double free) in the backward of channels-last 1x1 stride-2 convolutions with
    fewer than 8 input channels (seen with torch 2.14); such models train in NCHW on the CPU."""
    return device.type == "cpu" and any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8
        for m in model.modules()
    )


class DivergenceError(UserError):
    """The training loss became NaN or inf; `progress` is the trainer's state when it was noticed."""

    def __init__(self, message: str, progress: dict[str, Any]) -> None:
        super().__init__(message)
        self.progress = progress


def truncate_history(path: Path, step: int) -> None:
    """Keep the evaluations up to `step`: a resumed run redoes the later ones (and drops a line cut by a kill)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(kept))


@dataclass
class TrainerConfig:
    epochs: int | None = 5
    max_steps: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 1000
    eval_every: int | None = None
    log_every: int = 50
    precision: str = "32"
    channels_last: bool | str = "auto"
    compile: bool = False
    checkpoint: bool = True
    checkpoint_every: int | None = None
    figures: bool = True
    eval_test: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> TrainerConfig:
        """The trainer keys this loop uses; the rest (device, threads, resume) belong to cnnlab.run."""
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})

    def __post_init__(self) -> None:
        self.precision = str(self.precision)
        if self.precision not in PRECISIONS:
            raise ConfigError("trainer.precision", self.precision, "32, bf16 or 16", "trainer.precision=32")
        if self.epochs is None and self.max_steps is None:
            raise ConfigError(
                "trainer.epochs", None, "a number of epochs, or set trainer.max_steps", "trainer.epochs=5"
            )
        if self.epochs is not None and self.epochs < 0:
            raise ConfigError("trainer.epochs", self.epochs, "0 or more", "trainer.epochs=5")
        if self.channels_last not in ("auto", True, False):
            raise ConfigError(
                "trainer.channels_last", self.channels_last, "auto, true or false", "trainer.channels_last=auto"
            )
        for key in ("max_steps", "eval_every", "checkpoint_every"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"trainer.{key}", value, "a positive integer or null", f"trainer.{key}=null")
        for key in ("batch_size", "eval_batch_size", "log_every"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"trainer.{key}", getattr(self, key), "a positive integer", f"trainer.{key}=128")


class Trainer:
    def __init__(
        self,
        config: TrainerConfig,
        device: torch.device,
        run_dir: Path,
        logger: NullLogger | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.device, self.run_dir = config, device, Path(run_dir)
        if config.precision == "bf16" and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            log.warning("trainer.precision=bf16 on a CPU without native bf16: expect it several times slower than 32")
        self.logger = logger or NullLogger()
        self.state = state or {}  # extra values stored in every checkpoint (config, wandb id, ...)
        if config.precision == "16" and device.type != "cuda":
            raise ConfigError(
                "trainer.precision",
                "16",
                "32 or bf16 on the CPU (fp16 needs a GPU)",
                "trainer.precision=bf16",
            )

    # ------------------------------------------------------------------ helpers
    def autocast(self) -> Any:
        if self.cfg.precision == "32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move the model to the device and settle channels_last=auto for it (before loaders are built)."""
        crashes = channels_last_crashes(model, self.device)
        if self.cfg.channels_last == "auto":
            self.cfg = replace(self.cfg, channels_last=not crashes)
            if crashes:
                log.info("channels_last=auto: NCHW, as NHWC 1x1 strided convolutions with < 8 channels crash on CPU")
        elif self.cfg.channels_last and crashes:
            raise ConfigError(
                "trainer.channels_last",
                True,
                "false or auto for this model on the CPU: PyTorch's CPU kernels crash "
                "on channels-last 1x1 strided convolutions with fewer than 8 input channels (model.width < 8 with "
                "shortcut B or C)",
                "trainer.channels_last=auto",
            )
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.cfg.channels_last else model

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DeviceLoader, predictions: bool = False) -> dict[str, Any]:
        """Loss averaged per sample and accuracy, in eval mode, in the loader's fixed order."""
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        preds = []
        for xb, yb in loader.batches():
            with self.autocast():
                logits = model(xb)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
            pred = logits.argmax(1)
            correct += (pred == yb).sum()
            if predictions:
                preds.append(pred)
        model.train(was_training)
        n = loader.num_samples
        out: dict[str, Any] = {"loss": loss_sum.item() / n, "acc": correct.item() / n}
        if predictions:
            out["preds"] = torch.cat(preds).cpu()
        return out

    # ------------------------------------------------------------------ training
    def fit(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Callable[..., Callable[[int], float]],
        train: DeviceLoader,
        val: DeviceLoader,
        monitor: str = "val_acc",
        resume: dict[str, Any] | None = None,
        test: DeviceLoader | None = None,
    ) -> dict[str, Any]:
        """Train; return a summary. On return the model holds the weights of the best evaluation."""
        cfg = self.cfg
        steps_per_epoch = len(train)
        total = min(
            cfg.max_steps if cfg.max_steps is not None else math.inf,
            cfg.epochs * steps_per_epoch if cfg.epochs is not None else math.inf,
        )
        total = int(total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, schedule(steps_per_epoch=steps_per_epoch, total_steps=total)
        )
        scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "16")
        step_fn = torch.compile(model) if cfg.compile else model
        higher = not monitor.endswith("loss")
        s = {
            "step": 0,
            "epoch": 0,
            "batch": 0,
            "best": None,
            "best_step": None,
            "train_seconds": 0.0,
            "images": 0,
            "last_eval": -1,  # step of the latest evaluation
        }
        best_state = None
        history_path = self.run_dir / "history.jsonl"
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        if resume is not None:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            scaler.load_state_dict(resume["scaler"])
            s.update({"last_eval": resume["progress"]["step"], **resume["progress"]})
            checkpoint.set_rng_states(resume["rng"])
            best_state = resume.get("best_model")
            if "window" in resume:  # the train loss/accuracy summed since the last evaluation
                loss_sum = resume["window"]["loss_sum"].to(self.device)
                correct = resume["window"]["correct"].to(self.device)
                seen = int(resume["window"]["seen"])
            truncate_history(history_path, s["step"])

        def save(name: str) -> None:
            if not cfg.checkpoint:
                return
            checkpoint.save(
                {
                    **self.state,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "progress": dict(s),
                    "window": {"loss_sum": loss_sum.clone(), "correct": correct.clone(), "seen": seen},
                    "rng": checkpoint.rng_states(),
                    "best_model": best_state if name == "last" else None,
                    "wandb_id": self.logger.run_id,
                },
                self.run_dir / "checkpoints" / f"{name}.pt",
            )

        def check_finite(first_step: int, ok: bool | None = None) -> None:
            if ok if ok is not None else bool(torch.isfinite(loss_sum)):
                return
            steps = f"at step {s['step']}" if first_step >= s["step"] else f"between steps {first_step} and {s['step']}"
            kept = " The best checkpoint so far is kept." if s["best_step"] is not None and cfg.checkpoint else ""
            raise DivergenceError(
                f"the training loss became NaN or inf {steps} (lr {scheduler.get_last_lr()[0]:.3g}). Lower the "
                f"learning rate, e.g. optimizer.lr={optimizer.defaults['lr'] / 10:g}.{kept}",
                dict(s),
            )

        def interrupt() -> None:
            save("last")
            last = self.run_dir / "checkpoints" / "last.pt"
            raise Interrupted(str(stop.signal_name), s["step"], str(last) if cfg.checkpoint else None)

        def evaluate_and_record() -> None:
            nonlocal loss_sum, correct, seen, best_state
            check_finite(s["last_eval"] + 1)
            result = self.evaluate(model, val)
            row = {
                "step": s["step"],
                "epoch": s["epoch"] + s["batch"] / steps_per_epoch,
                "train_loss": loss_sum.item() / max(seen, 1),
                "train_acc": correct.item() / max(seen, 1),
                "val_loss": result["loss"],
                "val_acc": result["acc"],
                "lr": scheduler.get_last_lr()[0],
            }
            if test is not None:  # test curves, as He et al.'s Figure 6 plots (never used to pick a checkpoint)
                tested = self.evaluate(model, test)
                row |= {"test_loss": tested["loss"], "test_acc": tested["acc"]}
            loss_sum.zero_()
            correct.zero_()
            seen = 0
            s["last_eval"] = s["step"]
            with history_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self.logger.log({f"eval/{k}": v for k, v in row.items() if k != "step"}, step=s["step"])
            value = row[monitor]
            if s["best"] is None or (value > s["best"] if higher else value < s["best"]):
                s["best"], s["best_step"] = value, s["step"]
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                save("best")
            save("last")
            progress.note(
                f"step {s['step']}: val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f} "
                f"(best {monitor} {s['best']:.4f})"
            )

        model.train()
        self.logger.watch(model)
        with Progress(total=total, start=s["step"], log_every=cfg.log_every) as progress, stop.stepping():
            while s["step"] < total:
                tic = time.perf_counter()
                window_loss, window_start = torch.zeros((), device=self.device), s["step"]
                for xb, yb in train.batches(s["epoch"], start=s["batch"]):
                    with self.autocast():
                        logits = step_fn(xb)
                        loss = F.cross_entropy(logits.float(), yb)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    s["step"] += 1
                    s["batch"] += 1
                    n = len(yb)
                    loss_sum += loss.detach() * n
                    window_loss += loss.detach()
                    correct += (logits.detach().argmax(1) == yb).sum()
                    seen += n
                    s["images"] += n
                    if progress.due(s["step"]) or s["step"] >= total:
                        mean_loss = window_loss.item() / (s["step"] - window_start)  # one sync per log point
                        check_finite(window_start + 1, math.isfinite(mean_loss))
                        progress.update(
                            s["step"],
                            s["epoch"],
                            mean_loss,
                            correct.item() / seen,
                            batch_size=train.batch_size,
                        )
                        self.logger.log({"train/loss": mean_loss, "lr": scheduler.get_last_lr()[0]}, s["step"])
                        window_loss.zero_()
                        window_start = s["step"]
                    eval_now = cfg.eval_every is not None and s["step"] % cfg.eval_every == 0
                    if eval_now or (cfg.checkpoint_every and s["step"] % cfg.checkpoint_every == 0):
                        s["train_seconds"] += self._elapsed(tic)
                        if eval_now:
                            evaluate_and_record()
                        else:
                            check_finite(s["last_eval"] + 1)
                            save("last")
                        tic = time.perf_counter()
                    if stop.signal_name:  # SIGTERM/Ctrl-C: stop here, between steps, with a checkpoint
                        interrupt()
                    if s["step"] >= total:
                        break
                s["train_seconds"] += self._elapsed(tic)
                if s["batch"] >= steps_per_epoch:
                    s["epoch"] += 1
                    s["batch"] = 0
                    if cfg.eval_every is None:
                        evaluate_and_record()
                    else:
                        check_finite(s["last_eval"] + 1)
                        save("last")  # every epoch end is a checkpoint
            if s["last_eval"] != s["step"]:
                evaluate_and_record()
            if stop.signal_name:
                interrupt()
        if best_state is not None:
            model.load_state_dict(best_state)
        return {
            "steps": s["step"],
            "epochs": s["step"] / steps_per_epoch,
            f"best_{monitor}": s["best"],
            "best_step": s["best_step"],
            "train_seconds": s["train_seconds"],
            "train_img_per_s": s["images"] / max(s["train_seconds"], 1e-9),
        }

    def _elapsed(self, tic: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - tic
