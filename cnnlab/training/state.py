"""TrainState: everything the training loop knows between two steps, saved and restored as one object.

With the model, optimizer, scheduler, scaler and RNG states, it is all a resumed run needs to continue
bit-identically: where it is (step, epoch, batch), the best evaluation so far (value, step, weights), the
train loss and accuracy summed on the device since the last evaluation, and the time and images counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch the next batch belongs to
    batch: int = 0  # batches of that epoch done
    best: float | None = None  # best monitored value so far
    best_step: int | None = None
    last_eval: int = -1  # step of the latest evaluation
    images: int = 0  # training images seen
    train_seconds: float = 0.0  # time in optimizer steps (evaluation and checkpoints excluded)
    seen: int = 0  # images summed in loss_sum/correct since the last evaluation
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # on the device: no sync per step
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    best_model: dict[str, torch.Tensor] | None = None  # weights of the best evaluation

    def to(self, device: torch.device) -> TrainState:
        self.loss_sum, self.correct = self.loss_sum.to(device), self.correct.to(device)
        return self

    def end_of_batch(self, images: int, steps_per_epoch: int) -> bool:
        """Count one optimizer step; True when it ended an epoch."""
        self.step += 1
        self.batch += 1
        self.images += images
        self.seen += images
        if self.batch < steps_per_epoch:
            return False
        self.epoch, self.batch = self.epoch + 1, 0
        return True

    def improved(self, value: float, higher_is_better: bool) -> bool:
        return self.best is None or (value > self.best if higher_is_better else value < self.best)

    def reset_window(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0

    def state_dict(self, with_best_model: bool = True) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: it deep-copies the weights
        out |= {"loss_sum": self.loss_sum.clone(), "correct": self.correct.clone()}
        out["best_model"] = self.best_model if with_best_model else None
        return out

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], device: torch.device) -> TrainState:
        """The state a checkpoint holds (train_state)."""
        return cls(**saved["train_state"]).to(device)
