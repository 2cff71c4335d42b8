"""Which device and precision a run uses, and the device settings that make it fast.

Library code: a value out of range is a BadArgument about its argument; the caller names the config key.

- `resolve_device`: a device spec (auto, cpu, cuda, cuda:N) to a torch.device, refusing what is not there.
- `resolve_precision`: trainer.precision=auto is bf16 autocast where the device runs bf16 natively (a CUDA GPU
  with bf16; a CPU with AMX or AVX512-BF16), fp32 elsewhere: on a CPU without native bf16, bf16 is emulated and
  several times slower.
- `gpu_lease`: parallel jobs of one sweep on one machine (joblib) spread over the visible GPUs, each job on
  the GPU that holds the fewest of them (file locks in the sweep dir, released when the job ends).
- `cuda_settings`: cudnn.benchmark (the shapes are fixed) and TF32 under trainer.tf32.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from cnnlab.errors import BadArgument

log = logging.getLogger(__name__)


def resolve_device(spec: str, gpu: int | None = None) -> torch.device:
    """runtime.device as a torch.device; `gpu` is the GPU a lease gave this job, for `auto`."""
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", gpu) if gpu is not None else torch.device("cuda")
    device = torch.device(spec)  # the schema allows auto, cpu, cuda and cuda:N only
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadArgument("device", spec, "auto or cpu: this machine has no CUDA GPU", "auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BadArgument("device", spec, f"cuda:0 to cuda:{torch.cuda.device_count() - 1}", "cuda:0")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively (not emulated in fp32 units)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, present since torch 2.1
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def resolve_precision(spec: str, device: torch.device) -> tuple[str, str]:
    """trainer.precision as run on `device` (32, bf16 or 16), and why, for the log."""
    if spec == "16" and device.type != "cuda":
        raise BadArgument("precision", "16", "auto, 32 or bf16 on the CPU (fp16 needs a GPU)", "auto")
    if spec != "auto":
        return spec, "set"
    where = "this GPU" if device.type == "cuda" else "this CPU"
    if native_bf16(device):
        return "bf16", f"auto: {where} runs bf16 natively"
    return "32", f"auto: {where} has no native bf16"


def cuda_settings(device: torch.device, tf32: bool) -> None:
    """Fast CUDA defaults: cudnn picks the fastest kernels for the fixed shapes; TF32 only if asked."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


@contextmanager
def gpu_lease(folder: Path, gpus: int, jobs: int) -> Iterator[int]:
    """The least-used GPU among this sweep's running jobs, held until the block ends.

    Slot k of GPU g is a lock file `<folder>/.gpus/<g>.<k>.lock`; a job takes the first free slot in the order
    (k, g), so with n jobs on G GPUs each GPU carries n / G of them. The OS drops the lock if the job dies.
    """
    locks = Path(folder) / ".gpus"
    locks.mkdir(parents=True, exist_ok=True)
    for k in range(max(jobs, 1)):
        for g in range(gpus):
            handle = (locks / f"{g}.{k}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            try:
                yield g
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
    yield 0  # more jobs running than slots (a crashed job's process still alive): share GPU 0
