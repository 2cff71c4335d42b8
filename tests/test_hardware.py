"""Device, precision and compile: trainer.precision=auto with the bf16 capability faked both ways, the GPU
lease of parallel sweep jobs with the GPU count faked, and torch.compile without recompiles."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from cnnlab.app.resume import check_same_run, resumed_precision
from cnnlab.config.schema import RuntimeConfig, TrainerConfig
from cnnlab.data.loader import DeviceLoader
from cnnlab.errors import BadArgument, ConfigError
from cnnlab.models.resnet import ResNet
from cnnlab.tasks.context import RunInfo
from cnnlab.training import hardware
from cnnlab.training.hardware import gpu_lease, resolve_precision
from cnnlab.training.scheduler import constant
from cnnlab.training.trainer import Trainer, compiled_graphs
from tests.helpers import cli, run_app

CPU = torch.device("cpu")


@pytest.fixture(params=[True, False], ids=["native", "emulated"])
def bf16_native(request, monkeypatch) -> bool:
    monkeypatch.setattr(hardware, "native_bf16", lambda device: request.param)
    return request.param


def test_auto_is_bf16_only_where_native(bf16_native):
    precision, why = resolve_precision("auto", CPU)
    assert precision == ("bf16" if bf16_native else "32")
    assert ("runs bf16 natively" if bf16_native else "no native bf16") in why


@pytest.mark.parametrize("spec", ["32", "bf16"])
def test_explicit_precision_is_honoured(bf16_native, spec):
    assert resolve_precision(spec, CPU) == (spec, "set")


def test_fp16_on_the_cpu_is_refused(tmp_path):
    with pytest.raises(BadArgument, match="precision='16' is not allowed: auto, 32 or bf16 on the CPU"):
        resolve_precision("16", CPU)  # the library names its argument; the app names the key, before any work:
    proc = cli("trainer.precision=16", "runtime.device=cpu", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "cnnlab: error: trainer.precision='16' is not allowed" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_this_cpu_reports_what_torch_reports():
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert hardware.native_bf16(CPU) == (native and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_a_run_uses_and_records_the_resolved_precision(tmp_path, bf16_native, caplog):
    overrides = ("model=resnet", "model.depth=8", "model.width=4", "trainer.max_steps=2", "runtime.figures=false")
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        run_app(tmp_path, *overrides)
    expected = "bf16" if bf16_native else "32"
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == expected
    assert f"precision {expected} (auto: this CPU" in caplog.text
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["config"]["trainer"]["precision"] == expected


def test_an_explicit_precision_wins_over_auto(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)
    run_app(tmp_path, "trainer.max_steps=1", "trainer.precision=32", "runtime.figures=false")
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == "32"


def test_resume_refuses_auto_resolving_to_another_precision(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: False)
    with pytest.raises(ConfigError, match=r"bf16, the precision the checkpoint trained in .*trainer.precision=bf16"):
        resumed_precision("bf16", "auto", "cpu")
    assert resumed_precision("32", "auto", "cpu") == "32"
    saved = {"trainer": {"precision": "bf16"}, "runtime": {"device": "auto"}}
    with pytest.raises(ConfigError, match="trainer.precision"):
        check_same_run(saved, {"trainer": {"precision": "auto"}, "runtime": {"device": "auto"}}, Path("x/last.pt"))


def test_resume_continues_in_an_explicitly_set_precision(caplog):
    with caplog.at_level(logging.WARNING):
        check_same_run({"trainer": {"precision": "bf16"}}, {"trainer": {"precision": "32"}}, Path("x/last.pt"))
    assert "will not be bit-exact" in caplog.text


# ------------------------------------------------------------------ GPUs shared among parallel jobs


def test_parallel_jobs_spread_over_the_gpus(tmp_path):
    with gpu_lease(tmp_path, 2, 4) as a, gpu_lease(tmp_path, 2, 4) as b, gpu_lease(tmp_path, 2, 4) as c:
        assert (a, b, c) == (0, 1, 0)
        with gpu_lease(tmp_path, 2, 4) as d:
            assert d == 1
    with gpu_lease(tmp_path, 2, 4) as a:  # every lease was released when its job ended
        assert a == 0
        with gpu_lease(tmp_path, 2, 4) as b:
            assert b == 1


def test_a_finished_job_frees_its_gpu_for_the_next(tmp_path):
    with gpu_lease(tmp_path, 3, 3) as a:
        with gpu_lease(tmp_path, 3, 3) as b:
            pass
        with gpu_lease(tmp_path, 3, 3) as c:  # b's GPU is free again: the next job takes it, not a busy one
            assert (a, b, c) == (0, 1, 1)


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_auto_device_in_a_joblib_sweep_leases_a_gpu(tmp_path, four_gpus):
    from cnnlab.app.run import job_device

    info = RunInfo(run_dir=tmp_path / "0", multirun=True, sweep_dir=tmp_path, parallel_jobs=8)
    with job_device("auto", info) as first, job_device("auto", info) as second:
        assert (first, second) == (torch.device("cuda", 0), torch.device("cuda", 1))
    alone = RunInfo(run_dir=tmp_path / "1", multirun=True, sweep_dir=tmp_path, parallel_jobs=1)
    with job_device("auto", alone) as device:  # one job at a time (basic launcher, SLURM): the default GPU
        assert device == torch.device("cuda")
    with job_device("cuda:3", info) as device:  # an explicit device is never moved
        assert device == torch.device("cuda", 3)


# ------------------------------------------------------------------ torch.compile


def test_drop_last_keeps_one_batch_shape_and_the_epoch_order():
    x, y = torch.randint(0, 255, (10, 1, 4, 4), dtype=torch.uint8), torch.arange(10)
    full = DeviceLoader(x, y, 4, [0.5], [0.5], shuffle=True, seed=1)
    dropped = DeviceLoader(x, y, 4, [0.5], [0.5], shuffle=True, seed=1, drop_last=True)
    assert (len(full), len(dropped)) == (3, 2)
    kept = [yb for _, yb in dropped.batches(epoch=2)]
    assert [len(yb) for yb in kept] == [4, 4]
    assert all(torch.equal(a, b) for a, b in zip(kept, [yb for _, yb in full.batches(epoch=2)], strict=False))


def _compiled_fit(tmp_path: Path, epochs: int, drop_last: bool) -> dict:
    torch.manual_seed(0)
    x, y = torch.randint(0, 255, (70, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (70,))
    train = DeviceLoader(x[:50], y[:50], 16, [0.5], [0.5], shuffle=True, drop_last=drop_last)  # 50 = 3 x 16 + 2
    val = DeviceLoader(x[50:], y[50:], 16, [0.5], [0.5])  # 20 = 16 + 4: the last one is padded
    config = TrainerConfig(epochs=epochs, batch_size=16, precision="32", drop_last=drop_last)
    trainer = Trainer(config, CPU, tmp_path, runtime=RuntimeConfig(compile=True, checkpoint=False, channels_last=False))
    model = trainer.prepare(ResNet(depth=8, width=4, in_channels=1, num_classes=10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return trainer.fit(model, opt, constant, train, val)


def test_compile_does_not_recompile_across_epochs(tmp_path, monkeypatch):
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real(model, backend="eager"))  # dynamo's graphs, no codegen
    torch._dynamo.reset()
    one = _compiled_fit(tmp_path, epochs=1, drop_last=True)
    torch._dynamo.reset()
    three = _compiled_fit(tmp_path, epochs=3, drop_last=True)
    assert one["compiled_graphs"] == three["compiled_graphs"] > 0  # train and eval graphs, made once
    assert three["compile_seconds"] > 0 and three["train_img_per_s"] > 0
    torch._dynamo.reset()
    partial = _compiled_fit(tmp_path, epochs=3, drop_last=False)  # the partial batch's shape: a recompile
    assert partial["compiled_graphs"] > three["compiled_graphs"]
    assert compiled_graphs() >= partial["compiled_graphs"]


def test_drop_last_follows_runtime_compile(tmp_path):
    from tests.helpers import make_config

    assert make_config(tmp_path, ["runtime.compile=true"]).trainer.drop_last is True
    assert make_config(tmp_path, []).trainer.drop_last is False


@pytest.mark.slow
def test_a_compiled_run_with_a_partial_last_batch(tmp_path):
    """The real compiler (inductor): epochs of 7,000 images in batches of 128 (54 full, 88 images dropped)."""
    run_app(tmp_path, "model=mlp", "trainer.epochs=2", "runtime.compile=true", "runtime.figures=false")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 * 54
    assert metrics["compiled_graphs"] <= 3  # train, eval, and eval's padded batch size at most: never per epoch
    assert metrics["compile_seconds"] > 0
