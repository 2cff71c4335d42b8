"""Progress of training and of every long phase: a rich bar on a terminal, log lines otherwise (files, CI, SLURM).

The images/s figure is the rate since the previous update, and none is shown for the first update after a
start: that window holds the warm-up (first kernels, allocations) and would understate the speed ~10x.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

log = logging.getLogger("cnnlab")
T = TypeVar("T")


class Progress:
    def __init__(
        self,
        total: int,
        start: int = 0,
        log_every: int = 50,
        epochs: int | None = None,
        console: Console | None = None,
    ) -> None:
        self.total, self.start, self.log_every, self.epochs = total, start, log_every, epochs
        self.console = console or Console(stderr=True)
        self.interactive = self.console.is_terminal
        self.bar: RichProgress | None = None
        self.last_step, self.last_time = start, time.perf_counter()
        self.updates = 0

    def __enter__(self) -> Progress:
        if self.interactive:
            self.bar = RichProgress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} {task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.start()
            self.task = self.bar.add_task(
                "train", total=self.total, completed=self.start, epoch=self._epoch(1), loss=0.0, acc=0.0, rate=""
            )
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _epoch(self, epoch: int) -> str:
        return f"{epoch}/{self.epochs}" if self.epochs else str(epoch)

    def due(self, step: int) -> bool:
        """Whether to read the device-side metrics at this step (every step costs a host sync)."""
        every = max(1, min(self.log_every, 10)) if self.interactive else self.log_every
        return step % every == 0

    def rate(self, step: int, batch_size: int) -> str:
        """Images/s since the previous update ('' for the first window, which holds the warm-up)."""
        now = time.perf_counter()
        ips = (step - self.last_step) / max(now - self.last_time, 1e-9) * batch_size
        self.last_step, self.last_time = step, now
        self.updates += 1
        return f"{ips:,.0f} img/s" if self.updates > 1 else ""

    def update(self, step: int, epoch: int, loss: float, acc: float, batch_size: int = 1) -> None:
        rate = self.rate(step, batch_size)
        if self.bar is not None:
            self.bar.update(self.task, completed=step, epoch=self._epoch(epoch), loss=loss, acc=acc, rate=rate)
        else:
            shown = f" ({rate})" if rate else ""
            log.info("step %d/%d epoch %s loss %.4f acc %.4f%s", step, self.total, self._epoch(epoch), loss, acc, shown)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.log(message)
        else:
            log.info(message)


def tracked(batches: Iterable[T], total: int, what: str, console: Console | None = None) -> Iterator[T]:
    """A long phase over `total` images given in batches (class maps of canvases or test images, with their
    faithfulness): a rich bar with the count, rate and time left on a terminal, else a log line every ~10%."""
    console = console or Console(stderr=True)
    if console.is_terminal:
        columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with RichProgress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(what, total=total)
            for batch in batches:
                yield batch
                bar.advance(task, len(batch))  # type: ignore[arg-type]
        return
    done, shown, start = 0, 0, time.perf_counter()
    for batch in batches:
        yield batch
        done += len(batch)  # type: ignore[arg-type]
        if done * 10 // max(total, 1) > shown or done >= total:
            shown = done * 10 // max(total, 1)
            rate = done / max(time.perf_counter() - start, 1e-9)
            log.info("%s: %d/%d (%.1f/s)", what, done, total, rate)
