"""runtime.profile: a torch.profiler trace of a few training steps, written into <run dir>/profile/."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
WAIT, WARMUP, ACTIVE = 1, 2, 5  # steps: skip the first (allocations), warm up, then record


class _NoProfiler:
    def step(self) -> None:
        pass


@contextmanager
def profiler(enabled: bool, run_dir: Path, device: torch.device) -> Iterator[Any]:
    """A profiler whose step() the loop calls after every optimizer step; a no-op when not enabled."""
    if not enabled:
        yield _NoProfiler()
        return
    folder = run_dir / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    else:  # the profiler's Kineto probes for GPUs and logs a failed probe as an error: not one on a CPU run
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")

    def write(prof: torch.profiler.profile) -> None:
        prof.export_chrome_trace(str(folder / "trace.json"))
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        (folder / "summary.txt").write_text(table + "\n")
        log.info("profile of %d steps: %s (open in Perfetto or chrome://tracing)", ACTIVE, folder / "trace.json")

    schedule = torch.profiler.schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE, repeat=1)
    with torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=write) as prof:
        yield prof
