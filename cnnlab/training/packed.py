"""The Trainer for K members packed into one module (cnnlab.models.packed): the same flat loop, step by step
for all members at once, with each member's own bookkeeping.

Shared: the step, epoch and batch counters (the members' loaders have one length), the optimizer (elementwise,
so K optimizers in one), the lr schedule and the time. Each member's own: its batches (its seed's permutation and
augmentation), loss and accuracy sums, val split, history.jsonl, best evaluation and checkpoints in its run dir,
and its divergence: a member whose loss turns NaN or inf is recorded as diverged in its status.json and masked out
of the loss; the others go on. A member's checkpoints are ordinary single-run ones (evaluate, cam and resume read
them); the pack resumes from its members' last.pt.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.loader import DeviceLoader
from cnnlab.models.packed import member_outputs, pack_tree, unpack_tree
from cnnlab.records import checkpoint
from cnnlab.records.progress import Progress
from cnnlab.records.rundir import CHECKPOINTS, HISTORY, TRAIN_LOG, append_row, truncate_rows
from cnnlab.records.status import write_status
from cnnlab.training.state import TrainState
from cnnlab.training.trainer import DivergenceError, Parts, Trainer


class PackedLoader:
    """The members' loaders as one: each batch is theirs side by side ((B, K * C, H, W) images, (B, K) labels)."""

    def __init__(self, loaders: Sequence[DeviceLoader]) -> None:
        self.loaders = list(loaders)
        if len({(len(x), x.num_samples, x.batch_size) for x in self.loaders}) != 1:
            raise ValueError("packed members need splits of one size and one batch size")
        self.batch_size, self.num_samples = self.loaders[0].batch_size, self.loaders[0].num_samples

    def __len__(self) -> int:
        return len(self.loaders[0])

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for parts in zip(*(x.batches(epoch, start) for x in self.loaders), strict=True):
            xs, ys = zip(*parts, strict=True)
            fmt = torch.channels_last if xs[0].is_contiguous(memory_format=torch.channels_last) else None
            x = torch.cat(xs, dim=1)
            yield (x.contiguous(memory_format=fmt) if fmt else x), torch.stack(ys, dim=1)


@dataclass
class Member:
    """One member's own part of a packed fit."""

    run_dir: Path
    extra: dict[str, Any]  # stored in its checkpoints: its resolved config, provenance
    overrides: Sequence[str] = ()  # its job's, for its status.json
    best: float | None = None
    best_step: int | None = None
    best_model: dict[str, torch.Tensor] | None = None
    diverged: str | None = None


class PackedTrainer(Trainer):
    def __init__(self, members: Sequence[Member], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, run_dir=members[0].run_dir, **kwargs)
        self.members = list(members)
        self.alive = torch.ones(len(self.members), dtype=torch.bool, device=self.device)

    @property
    def k(self) -> int:
        return len(self.members)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: PackedLoader, predictions: bool = False, forward: Any = None
    ) -> dict[str, Any]:
        """Each member's loss per sample and accuracy on its own split: lists of K."""
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros(self.k, device=self.device)
        correct = torch.zeros(self.k, device=self.device, dtype=torch.long)
        for xb, yb in loader.batches():
            with self.autocast():
                logits = member_outputs(model(xb), self.k).float()
            loss_sum += torch.stack([F.cross_entropy(logits[:, k], yb[:, k], reduction="sum") for k in range(self.k)])
            correct += (logits.argmax(2) == yb).sum(0)
        model.train(was_training)
        n = loader.num_samples
        return {"loss": [v / n for v in loss_sum.tolist()], "acc": [c / n for c in correct.tolist()]}  # as alone

    def _start(self, parts: Parts, resume: Sequence[dict[str, Any]] | None) -> TrainState:
        """A fresh state (sums of K), or the one the members' last.pt hold, packed."""
        if resume is None:
            state = TrainState(loss_sum=torch.zeros(self.k), correct=torch.zeros(self.k, dtype=torch.long))
            return state.to(self.device)
        saved = [r["train_state"] for r in resume]
        shared = {**saved[0], "best_model": None, "best": None, "best_step": None}  # the bests are the members'
        shared["loss_sum"] = torch.stack([s["loss_sum"] for s in saved])
        shared["correct"] = torch.stack([s["correct"] for s in saved])
        packed = {**resume[0], "model": pack_tree([r["model"] for r in resume]), "train_state": shared,
                  "optimizer": pack_tree([r["optimizer"] for r in resume])}  # fmt: skip
        state = super()._start(parts, packed)  # as a lone run resumes: weights, optimizer, schedule, RNG
        for member, s in zip(self.members, saved, strict=True):
            member.best, member.best_step, member.best_model = s["best"], s["best_step"], s["best_model"]
            truncate_rows(member.run_dir / HISTORY, state.step)
            truncate_rows(member.run_dir / TRAIN_LOG, state.step)
        return state

    def _train_step(self, parts: Parts, state: TrainState, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimizer step of every member: the sum of their mean losses (a diverged member's masked out), so
        each member's gradient is its own loss's. Returns the K batch losses."""
        with self.autocast():
            logits = member_outputs(parts.step_fn(xb), self.k).float()
            # member by member as a lone run computes its loss (one (B, classes, K) loss sums in another order)
            losses = torch.stack([F.cross_entropy(logits[:, k], yb[:, k]) for k in range(self.k)])
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(torch.where(self.alive, losses, 0.0).sum()).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        losses = losses.detach()
        state.loss_sum += losses * len(yb)
        state.correct += (logits.detach().argmax(2) == yb).sum(0)
        return losses

    def _log(
        self, parts: Parts, state: TrainState, progress: Progress, loss_sum: torch.Tensor, steps: int, since: int
    ) -> None:
        means = [v / steps for v in loss_sum.tolist()]  # one host sync
        self._check_finite(parts, state, since + 1, [math.isfinite(v) for v in means])
        alive = [i for i, m in enumerate(self.members) if m.diverged is None]
        accs = state.correct.tolist()
        epoch = state.epoch + (1 if state.batch else 0)
        mean_loss = sum(means[i] for i in alive) / len(alive)
        acc = sum(accs[i] for i in alive) / len(alive) / max(state.seen, 1)
        progress.update(state.step, epoch, mean_loss, acc, batch_size=parts.batch_size)
        lr = parts.scheduler.get_last_lr()[0]
        for i in alive:  # what a lone run's logger gets here: the member's W&B run replays it (tasks/classify)
            append_row(self.members[i].run_dir / TRAIN_LOG, {"step": state.step, "train/loss": means[i], "lr": lr})

    def _check_finite(self, parts: Parts, state: TrainState, since: int, ok: Any = None) -> None:
        """Members whose loss is no longer finite: each is recorded as diverged and leaves the pack; the run
        stops only when none is left."""
        finite = ok if isinstance(ok, list) else torch.isfinite(state.loss_sum).tolist()
        steps = f"at step {state.step}" if since >= state.step else f"between steps {since} and {state.step}"
        lr = parts.optimizer.defaults["lr"]
        for i, (member, good) in enumerate(zip(self.members, finite, strict=True)):
            if good or member.diverged is not None:
                continue
            kept = " The best checkpoint so far is kept." if member.best_step is not None else ""
            member.diverged = (
                f"the training loss became NaN or inf {steps} (lr {parts.scheduler.get_last_lr()[0]:.3g}), in a "
                f"pack of {self.k}: the other members went on. Lower the learning rate: try optimizer.lr={lr / 10:g}"
                f" or lower.{kept}"
            )
            self.alive[i] = False
            write_status(member.run_dir, "diverged", member.overrides, DivergenceError(member.diverged, state),
                         step=state.step, packed=True)  # fmt: skip
        if not any(m.diverged is None for m in self.members):
            raise DivergenceError(self.members[0].diverged or "every member diverged", state)

    def _evaluate_and_record(self, parts: Parts, state: TrainState, progress: Progress) -> None:
        """Evaluate every member on its val split; its history row, best and checkpoints in its run dir."""
        self._check_finite(parts, state, state.last_eval + 1)
        result = self.evaluate(parts.model, parts.val)
        tested = self.evaluate(parts.model, parts.test) if parts.test is not None else None
        train_loss = [v / max(state.seen, 1) for v in state.loss_sum.tolist()]  # divided as a lone run divides
        train_acc = [c / max(state.seen, 1) for c in state.correct.tolist()]
        state.reset_window()  # before best.pt is written, as the Trainer does
        state.last_eval = state.step
        weights = optimizers = None
        for i, member in enumerate(self.members):
            if member.diverged is not None:
                continue
            row = {"step": state.step, "epoch": state.epoch + state.batch / parts.steps_per_epoch,
                   "train_loss": train_loss[i], "train_acc": train_acc[i], "val_loss": result["loss"][i],
                   "val_acc": result["acc"][i], "lr": parts.scheduler.get_last_lr()[0]}  # fmt: skip
            if tested is not None:
                row |= {"test_loss": tested["loss"][i], "test_acc": tested["acc"][i]}
            append_row(member.run_dir / HISTORY, row)
            value, higher = row[parts.monitor], not parts.monitor.endswith("loss")
            if member.best is None or (value > member.best if higher else value < member.best):
                weights = weights or unpack_tree(parts.model.state_dict(), self.k)
                optimizers = optimizers or unpack_tree(parts.optimizer.state_dict(), self.k)
                member.best, member.best_step, member.best_model = value, state.step, weights[i]
                self._save_member(parts, state, i, "best", weights[i], optimizers[i])
        self._save(parts, state)
        shown = " ".join(f"{a:.4f}" for a, m in zip(result["acc"], self.members, strict=True) if m.diverged is None)
        progress.note(f"step {state.step}: val_acc of the {int(self.alive.sum())} members {shown}")

    def _save(self, parts: Parts, state: TrainState, name: str = "last") -> None:
        """Every living member's last.pt: an ordinary checkpoint, with its best weights (to finish a resume)."""
        if not self.runtime.checkpoint:
            return
        weights = unpack_tree(parts.model.state_dict(), self.k)
        optimizers = unpack_tree(parts.optimizer.state_dict(), self.k)
        for i, member in enumerate(self.members):
            if member.diverged is None:
                self._save_member(parts, state, i, name, weights[i], optimizers[i])

    def _save_member(self, parts: Parts, state: TrainState, i: int, name: str, weights: dict, optimizer: dict) -> None:
        if not self.runtime.checkpoint:
            return
        member = self.members[i]
        own = replace(state, loss_sum=state.loss_sum[i], correct=state.correct[i], best=member.best,
                      best_step=member.best_step, best_model=member.best_model)  # fmt: skip
        checkpoint.save(
            {
                **member.extra,
                "model": weights,
                "optimizer": optimizer,
                "scheduler": parts.scheduler.state_dict(),
                "scaler": parts.scaler.state_dict(),
                "train_state": own.state_dict(with_best_model=name == "last"),
                "rng": checkpoint.rng_states(),
                "wandb_id": None,
                "packed": self.k,
            },
            member.run_dir / CHECKPOINTS / f"{name}.pt",
        )
