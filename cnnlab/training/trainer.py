"""The one training loop that every task uses: fit with periodic evaluation and checkpoints, and evaluate.

`fit` is one flat loop over batches across epochs, over an explicit TrainState. After each step one function
(`due`) decides whether to evaluate or to checkpoint, and one method writes checkpoints. Hot-loop rules: no
host synchronisation per step (loss and accuracy accumulate on the device and are read at log points),
zero_grad(set_to_none=True), optional channels_last, autocast and torch.compile.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config.schema import RuntimeConfig, TrainerConfig
from cnnlab.data.loader import DeviceLoader
from cnnlab.errors import UserError
from cnnlab.records import checkpoint
from cnnlab.records.progress import Progress
from cnnlab.records.rundir import CHECKPOINTS, HISTORY, append_row, truncate_rows
from cnnlab.records.tracking import NullLogger
from cnnlab.training import hardware
from cnnlab.training.profile import profiler
from cnnlab.training.state import TrainState
from cnnlab.training.stop import Interrupted, stop

log = logging.getLogger(__name__)
Schedule = Callable[..., Callable[[int], float]]


def channels_last_crashes(model: nn.Module, device: torch.device) -> bool:
    """PyTorch's CPU kernels crash (double free) in the backward of channels-last 1x1 stride-2 convolutions with
    fewer than 8 input channels (seen with torch 2.14); such models train in NCHW on the CPU."""
    return device.type == "cpu" and any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8
        for m in model.modules()
    )


BLOWN_UP_LOSS = 1e3  # a cross-entropy no trained or guessing net reaches (a guess among 10 classes: 2.3)


def blown_up(val_loss: float, lr: float) -> str | None:
    """A hint when the loss is finite but huge: the weights blew up, which the NaN/inf guard does not catch."""
    if not val_loss > BLOWN_UP_LOSS:
        return None
    return (
        f"val_loss {val_loss:.3g} is far above a guess's (2.3 for 10 classes): the weights have blown up without "
        f"a NaN (the divergence guard stops only NaN and inf). Lower the learning rate: try optimizer.lr={lr / 10:g}."
    )


class DivergenceError(UserError):
    """The training loss became NaN or inf; `state` is the trainer's state when it was noticed."""

    def __init__(self, message: str, state: TrainState) -> None:
        super().__init__(message)
        self.state = state


def due(state: TrainState, epoch_ended: bool, total: int, every: int | None, save_every: int | None) -> str | None:
    """What to do after this step: "eval" (then a checkpoint), "save" (a checkpoint only) or None."""
    if state.step >= total or (every and state.step % every == 0) or (every is None and epoch_ended):
        return "eval"
    if epoch_ended or (save_every and state.step % save_every == 0):
        return "save"  # every epoch end is a checkpoint
    return None


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process: a recompile (new shape, guard failure) adds one."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def padded(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` with zero rows appended up to `size` rows, in x's memory format."""
    if len(x) >= size:
        return x
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    out = torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])
    return out.contiguous(memory_format=torch.channels_last) if nhwc else out


@dataclass
class Parts:
    """What one fit trains with, besides the state."""

    model: nn.Module
    step_fn: nn.Module | Callable[..., torch.Tensor]  # the model, or its torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    val: DeviceLoader
    test: DeviceLoader | None  # test curves (He et al.'s Figure 6); never picks the checkpoint
    monitor: str
    total: int  # optimizer steps of the whole run
    steps_per_epoch: int
    batch_size: int
    compile_seconds: float | None = None  # the first step's time under runtime.compile (compiling included)
    compile_images: int = 0  # that step's images, left out of the steady-state img/s
    graphs_before: int = 0  # graphs dynamo had compiled in this process before this fit


class Trainer:
    def __init__(
        self,
        config: TrainerConfig,
        device: torch.device,
        run_dir: Path,
        logger: NullLogger | None = None,
        extra: dict[str, Any] | None = None,
        runtime: RuntimeConfig | None = None,
    ) -> None:
        precision, _ = hardware.resolve_precision(config.precision, device)  # run() has resolved auto already
        self.cfg, self.runtime = replace(config, precision=precision), runtime or RuntimeConfig()
        self.device, self.run_dir = device, Path(run_dir)
        if precision == "bf16" and device.type == "cpu" and not hardware.native_bf16(device):
            log.warning("trainer.precision=bf16 on a CPU without native bf16: expect it several times slower than 32")
        hardware.cuda_settings(device, config.tf32)
        self.logger = logger or NullLogger()
        self.extra = extra or {}  # stored in every checkpoint (the run's config, ...)

    def autocast(self) -> Any:
        if self.cfg.precision == "32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move the model to the device and settle channels_last=auto for it (before loaders are built)."""
        crashes = channels_last_crashes(model, self.device)
        if self.runtime.channels_last == "auto":
            self.runtime = replace(self.runtime, channels_last=not crashes)
            if crashes:
                log.info("channels_last=auto: NCHW, as NHWC 1x1 strided convolutions with < 8 channels crash on CPU")
        elif self.runtime.channels_last and crashes:
            raise ValueError(
                "false or auto for this model on the CPU: PyTorch's CPU kernels crash on channels-last 1x1 strided "
                "convolutions with fewer than 8 input channels (model.width < 8 with shortcut B or C)"
            )
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.runtime.channels_last else model

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: DeviceLoader, predictions: bool = False, forward: Any = None
    ) -> dict[str, Any]:
        """Loss averaged per sample and accuracy, in eval mode, in the loader's fixed order.

        `forward` is the model's torch.compile: the last batch is then padded to the loader's batch size, so
        every batch has one shape and nothing recompiles (in eval mode padding changes no other row).
        """
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        preds = []
        shape = min(loader.batch_size, loader.num_samples)  # a split smaller than a batch is never padded up
        for xb, yb in loader.batches():
            with self.autocast():
                logits = model(xb) if forward is None else forward(padded(xb, shape))[: len(yb)]
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
        schedule: Schedule,
        train: DeviceLoader,
        val: DeviceLoader,
        monitor: str = "val_acc",
        resume: dict[str, Any] | None = None,
        test: DeviceLoader | None = None,
    ) -> dict[str, Any]:
        """Train; return a summary. On return the model holds the weights of the best evaluation."""
        parts = self._parts(model, optimizer, schedule, train, val, monitor, test)
        state = self._start(parts, resume)
        model.train()
        self.logger.watch(model)
        epochs = math.ceil(parts.total / parts.steps_per_epoch)
        with Progress(parts.total, state.step, self.runtime.log_every, epochs) as progress, stop.stepping():
            with profiler(self.runtime.profile, self.run_dir, self.device) as prof:
                tic, log_loss, log_start = time.perf_counter(), torch.zeros_like(state.loss_sum), state.step
                for xb, yb in self._batches(train, state, parts.total):
                    log_loss += self._train_step(parts, state, xb, yb)
                    epoch_ended = state.end_of_batch(len(yb), parts.steps_per_epoch)
                    prof.step()
                    if progress.due(state.step) or state.step >= parts.total:
                        self._log(parts, state, progress, log_loss, state.step - log_start, log_start)
                        log_loss.zero_()
                        log_start = state.step
                    action = due(state, epoch_ended, parts.total, self.cfg.eval_every, self.runtime.checkpoint_every)
                    if action:
                        state.train_seconds += self._elapsed(tic)
                        if action == "eval":
                            self._evaluate_and_record(parts, state, progress)
                        else:
                            self._checkpoint(parts, state)
                        tic = time.perf_counter()
                    if stop.signal_name:  # SIGTERM/Ctrl-C: stop here, between steps, with a checkpoint
                        self._interrupt(parts, state)
            if state.last_eval != state.step:  # no step at all (epochs=0, or resumed at the end)
                self._evaluate_and_record(parts, state, progress)
        if state.best_model is not None:
            model.load_state_dict(state.best_model)
        return {
            "steps": state.step,
            "epochs": state.step / parts.steps_per_epoch,
            f"best_{monitor}": state.best,
            "best_step": state.best_step,
            "train_seconds": state.train_seconds,
            **self._speed(parts, state),
        }

    def _parts(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        train: DeviceLoader,
        val: DeviceLoader,
        monitor: str,
        test: DeviceLoader | None,
    ) -> Parts:
        steps_per_epoch = len(train)
        total = min(
            self.cfg.max_steps if self.cfg.max_steps is not None else math.inf,
            self.cfg.epochs * steps_per_epoch if self.cfg.epochs is not None else math.inf,
        )
        factor = schedule(steps_per_epoch=steps_per_epoch, total_steps=int(total))
        return Parts(
            model=model,
            step_fn=torch.compile(model) if self.runtime.compile else model,
            graphs_before=compiled_graphs() if self.runtime.compile else 0,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "16"),
            val=val,
            test=test,
            monitor=monitor,
            total=int(total),
            steps_per_epoch=steps_per_epoch,
            batch_size=train.batch_size,
        )

    def _start(self, parts: Parts, resume: dict[str, Any] | None) -> TrainState:
        """A fresh state, or the one a checkpoint holds, with everything else it saved restored."""
        if resume is None:
            return TrainState().to(self.device)
        parts.model.load_state_dict(resume["model"])
        parts.optimizer.load_state_dict(resume["optimizer"])
        parts.scheduler.load_state_dict(resume["scheduler"])
        parts.scaler.load_state_dict(resume["scaler"])
        checkpoint.set_rng_states(resume["rng"])
        state = TrainState.from_checkpoint(resume, self.device)
        truncate_rows(self.run_dir / HISTORY, state.step)
        return state

    @staticmethod
    def _batches(train: DeviceLoader, state: TrainState, total: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches from where `state` stands, across epochs, until `total` steps (one flat stream)."""
        while state.step < total:
            for batch in train.batches(state.epoch, start=state.batch):
                yield batch
                if state.step >= total:  # checked after the step: never draw a batch that will not be trained
                    return

    def _train_step(self, parts: Parts, state: TrainState, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the batch loss (on the device) and adds to the state's sums."""
        first = self.runtime.compile and parts.compile_seconds is None  # it compiles: timed apart
        tic = time.perf_counter()
        with self.autocast():
            logits = parts.step_fn(xb)
            loss = F.cross_entropy(logits.float(), yb)
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        loss = loss.detach()
        state.loss_sum += loss * len(yb)
        state.correct += (logits.detach().argmax(1) == yb).sum()
        if first:
            parts.compile_seconds, parts.compile_images = self._elapsed(tic), len(yb)
        return loss

    def _log(
        self, parts: Parts, state: TrainState, progress: Progress, loss_sum: torch.Tensor, steps: int, since: int
    ) -> None:
        """A progress line and the logger's train/loss (the mean of the `steps` losses summed in loss_sum since
        step `since`): one host sync, at log points only."""
        mean_loss = loss_sum.item() / steps
        self._check_finite(parts, state, since + 1, math.isfinite(mean_loss))
        acc = state.correct.item() / max(state.seen, 1)
        epoch = state.epoch + (1 if state.batch else 0)  # people count epochs from 1: "epoch 1/5"
        progress.update(state.step, epoch, mean_loss, acc, batch_size=parts.batch_size)
        self.logger.log({"train/loss": mean_loss, "lr": parts.scheduler.get_last_lr()[0]}, state.step)

    def _check_finite(self, parts: Parts, state: TrainState, since: int, ok: bool | None = None) -> None:
        if ok if ok is not None else bool(torch.isfinite(state.loss_sum)):
            return
        steps = f"at step {state.step}" if since >= state.step else f"between steps {since} and {state.step}"
        kept = " The best checkpoint so far is kept." if state.best_step is not None and self.runtime.checkpoint else ""
        lr = parts.optimizer.defaults["lr"]
        raise DivergenceError(
            f"the training loss became NaN or inf {steps} (lr {parts.scheduler.get_last_lr()[0]:.3g}). Lower the "
            f"learning rate: try optimizer.lr={lr / 10:g} or lower.{kept}",
            state,
        )

    def _evaluate_and_record(self, parts: Parts, state: TrainState, progress: Progress) -> None:
        """Evaluate on val (and test for curves), append to history.jsonl, keep the best, write checkpoints."""
        self._check_finite(parts, state, state.last_eval + 1)
        forward = parts.step_fn if self.runtime.compile else None
        result = self.evaluate(parts.model, parts.val, forward=forward)
        row = {
            "step": state.step,
            "epoch": state.epoch + state.batch / parts.steps_per_epoch,
            "train_loss": state.loss_sum.item() / max(state.seen, 1),
            "train_acc": state.correct.item() / max(state.seen, 1),
            "val_loss": result["loss"],
            "val_acc": result["acc"],
            "lr": parts.scheduler.get_last_lr()[0],
        }
        if parts.test is not None:
            tested = self.evaluate(parts.model, parts.test, forward=forward)
            row |= {"test_loss": tested["loss"], "test_acc": tested["acc"]}
        state.reset_window()
        state.last_eval = state.step
        append_row(self.run_dir / HISTORY, row)
        self.logger.log({f"eval/{k}": v for k, v in row.items() if k != "step"}, step=state.step)
        if state.improved(row[parts.monitor], higher_is_better=not parts.monitor.endswith("loss")):
            state.best, state.best_step = row[parts.monitor], state.step
            state.best_model = {k: v.detach().clone() for k, v in parts.model.state_dict().items()}
            self._save(parts, state, "best")
        self._save(parts, state)
        progress.note(
            f"step {state.step}: val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f} "
            f"(best {parts.monitor} {state.best:.4f})"
        )
        hint = blown_up(row["val_loss"], row["lr"])
        if hint:
            log.warning(hint)

    def _checkpoint(self, parts: Parts, state: TrainState) -> None:
        """last.pt between evaluations (epoch ends, runtime.checkpoint_every); never one of a diverged run."""
        self._check_finite(parts, state, state.last_eval + 1)
        self._save(parts, state)

    def _save(self, parts: Parts, state: TrainState, name: str = "last") -> None:
        """The one place checkpoints are written. last.pt carries the best weights too (to finish a resume)."""
        if not self.runtime.checkpoint:
            return
        checkpoint.save(
            {
                **self.extra,
                "model": parts.model.state_dict(),
                "optimizer": parts.optimizer.state_dict(),
                "scheduler": parts.scheduler.state_dict(),
                "scaler": parts.scaler.state_dict(),
                "train_state": state.state_dict(with_best_model=name == "last"),
                "rng": checkpoint.rng_states(),
                "wandb_id": self.logger.run_id,
            },
            self.run_dir / CHECKPOINTS / f"{name}.pt",
        )

    def _interrupt(self, parts: Parts, state: TrainState) -> None:
        self._save(parts, state)
        last = self.run_dir / CHECKPOINTS / "last.pt"
        raise Interrupted(str(stop.signal_name), state.step, str(last) if self.runtime.checkpoint else None)

    def _speed(self, parts: Parts, state: TrainState) -> dict[str, Any]:
        """Training images/s; under compile without the first step, whose compile time is reported apart."""
        images, seconds = state.images, state.train_seconds
        if parts.compile_seconds is None:
            return {"train_img_per_s": images / max(seconds, 1e-9)}
        return {
            "train_img_per_s": (images - parts.compile_images) / max(seconds - parts.compile_seconds, 1e-9),
            "compile_seconds": parts.compile_seconds,
            "compiled_graphs": compiled_graphs() - parts.graphs_before,  # train + eval, plus any recompile
        }

    def _elapsed(self, tic: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - tic
