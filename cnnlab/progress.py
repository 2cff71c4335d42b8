"""Training progress: a rich progress bar on a terminal, plain log lines otherwise (files, CI, SLURM)."""

from __future__ import annotations

import logging
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

log = logging.getLogger("cnnlab")


class Progress:
    def __init__(self, total: int, start: int = 0, log_every: int = 50, console: Console | None = None) -> None:
        self.total, self.start, self.log_every = total, start, log_every
        self.console = console or Console(stderr=True)
        self.interactive = self.console.is_terminal
        self.bar: RichProgress | None = None
        self.last_step, self.last_time = start, time.perf_counter()

    def __enter__(self) -> Progress:
        if self.interactive:
            self.bar = RichProgress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} {task.fields[ips]:.0f} img/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.start()
            self.task = self.bar.add_task(
                "train", total=self.total, completed=self.start, epoch=0, loss=0.0, acc=0.0, ips=0.0
            )
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.stop()

    def due(self, step: int) -> bool:
        """Whether to read the device-side metrics at this step (every step costs a host sync)."""
        every = max(1, min(self.log_every, 10)) if self.interactive else self.log_every
        return step % every == 0

    def update(self, step: int, epoch: int, loss: float, acc: float, batch_size: int | None = None) -> None:
        now = time.perf_counter()
        ips = (step - self.last_step) / max(now - self.last_time, 1e-9) * (batch_size or 1)
        self.last_step, self.last_time = step, now
        if self.bar is not None:
            self.bar.update(self.task, completed=step, epoch=epoch, loss=loss, acc=acc, ips=ips)
        else:
            log.info("step %d/%d epoch %d loss %.4f acc %.4f (%.0f img/s)", step, self.total, epoch, loss, acc, ips)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.log(message)
        else:
            log.info(message)
