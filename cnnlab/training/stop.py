"""SIGTERM and Ctrl-C: the training loop finishes its step, writes a checkpoint and stops, so the run resumes.

A signal only sets a flag while the Trainer is stepping (it checks the flag between steps, where the state is
consistent); outside the loop, or on a second signal, it stops at once. Either way the run ends with
`Interrupted`, a KeyboardInterrupt, so no `except Exception` swallows it and a multirun stops too.

In a submitit job (launcher=slurm, submitit_local) the signals are Ctrl-C and submitit's pre-emption signal
(SIGUSR2, or $SUBMITIT_PREEMPT_SIGNAL), which SLURM sends `signal_delay_s` before the time limit and on
pre-emption. SIGTERM stays with submitit, which ignores it: SLURM may send it ahead of the pre-emption signal.
After the checkpoint, `hand_over` gives the signal to submitit's own handler, which requeues the job and exits.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def submitit_signal() -> signal.Signals | None:
    """submitit's pre-emption signal inside a submitit job; None elsewhere."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `exit_code` is 128 + the signal number, as a shell reports it."""

    def __init__(self, signal_name: str, step: int | None = None, checkpoint: str | None = None) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        self.resume_command: str | None = None  # filled in by cnnlab.app.run, which knows the overrides
        self.exit_code = 128 + int(getattr(signal, signal_name, signal.SIGINT))
        where = f" at step {step}" if step is not None else ""
        saved = f"; checkpoint written to {checkpoint}" if checkpoint else ""
        super().__init__(f"interrupted by {signal_name}{where}{saved}")


class StopRequest:
    """Set by SIGTERM/SIGINT while `handling()` is active; the Trainer polls it with `stepping()` around its loop."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.polled = False
        self._submitit: tuple[signal.Signals, Callable[[int, FrameType | None], object]] | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.polled and self.signal_name is None:
            self.signal_name = name  # the loop checkpoints and raises at the next step boundary
            return
        raise Interrupted(self.signal_name or name)

    @contextmanager
    def handling(self) -> Iterator[StopRequest]:
        """Route SIGTERM and SIGINT here for the duration (main thread only; elsewhere signals stay as they are)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.signal_name = None
        preempt = submitit_signal()
        signals = (signal.SIGINT, preempt) if preempt is not None else SIGNALS
        previous = {s: signal.signal(s, self._handle) for s in signals}
        handler = previous.get(preempt) if preempt is not None else None
        self._submitit = (preempt, handler) if preempt is not None and callable(handler) else None
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def hand_over(self, interrupted: Interrupted) -> None:
        """After a stop on submitit's pre-emption signal: submitit's handler requeues the job and exits."""
        if self._submitit is not None and interrupted.signal_name == self._submitit[0].name:
            preempt, handler = self._submitit
            handler(preempt, None)

    @contextmanager
    def stepping(self) -> Iterator[StopRequest]:
        """While inside, a first signal only sets `signal_name`; the caller must check it between steps."""
        self.polled = True
        try:
            yield self
        finally:
            self.polled = False


stop = StopRequest()
