"""Seeds packed into one module (cnnlab.models.packed): each member computes and trains as it would alone."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.api import multirun
from cnnlab.models.mlp import MLP
from cnnlab.models.packed import member_outputs, pack, pack_inputs, pack_tree, unpack_tree, unpackable
from cnnlab.models.resnet import ResNet
from cnnlab.records import checkpoint
from cnnlab.records.status import read_status
from cnnlab.records.tracking import NullLogger
from cnnlab.report import load_runs
from cnnlab.training.packed import PackedLoader
from tests.helpers import cli, run_app, sweep

K = 3


def members(shortcut: str = "A", seed: int = 0) -> list[nn.Module]:
    out = []
    for k in range(K):
        torch.manual_seed(seed + k)
        out.append(ResNet(depth=8, width=4, shortcut=shortcut, in_channels=1, num_classes=5))
    return out


def batches(step: int, size: int = 6) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each member's own batch of step `step` (its own data order)."""
    g = torch.Generator().manual_seed(step)
    return [torch.randn(size, 1, 12, 12, generator=g) for _ in range(K)], [
        torch.randint(0, 5, (size,), generator=g) for _ in range(K)
    ]


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_the_pack_computes_each_member_on_its_own_block(shortcut: str, exact: bool) -> None:
    models = members(shortcut)
    packed = pack(models, exact)
    xs, _ = batches(0)
    for mode in (True, False):  # batch statistics, then running averages
        packed.train(mode)
        for m in models:
            m.train(mode)
        out = member_outputs(packed(pack_inputs(xs)), K)
        for k, (m, x) in enumerate(zip(models, xs, strict=True)):
            if exact:
                assert torch.equal(out[:, k], m(x)), (mode, k)
            else:
                assert torch.allclose(out[:, k], m(x), atol=1e-5), (mode, k)
    assert sum(p.numel() for p in packed.parameters()) == K * sum(p.numel() for p in models[0].parameters())


def test_state_dicts_and_optimizer_states_go_in_and_out_of_the_pack() -> None:
    models = members()
    states = [m.state_dict() for m in models]
    back = unpack_tree(pack_tree(states), K)
    for state, again in zip(states, back, strict=True):
        assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    lone = ResNet(depth=8, width=4, in_channels=1, num_classes=5)
    lone.load_state_dict(unpack_tree(pack(models).state_dict(), K)[1])  # an ordinary checkpoint of member 1
    assert all(torch.equal(a, b) for a, b in zip(lone.state_dict().values(), states[1].values(), strict=True))


@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
@pytest.mark.parametrize(
    ("exact", "memory_format"),
    [(True, torch.contiguous_format), (True, torch.channels_last), (False, torch.contiguous_format)],
)
def test_a_member_trains_in_the_pack_as_it_trains_alone(exact: bool, memory_format, shortcut: str) -> None:
    """SGD at lr 0.1 with momentum and weight decay: exact, over 30 steps the loss curves, weights, BN running
    statistics and momentum buffers taken out of the pack equal the lone runs' bit for bit; fused (grouped
    convolutions), they agree to the order of float sums over 5 steps (later the chaotic run grows it)."""
    models = [m.to(memory_format=memory_format) for m in members(shortcut)]
    alone = [(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)) for m in models]
    packed = pack(models, exact).to(memory_format=memory_format)
    optimizer = torch.optim.SGD(packed.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    curves, packed_curves = [[] for _ in range(K)], [[] for _ in range(K)]
    for step in range(30 if exact else 5):  # fused: float-sum order, which lr 0.1 with momentum grows
        xs, ys = batches(step)
        xs = [x.contiguous(memory_format=memory_format) for x in xs]
        for k, (model, opt) in enumerate(alone):
            loss = F.cross_entropy(model(xs[k]), ys[k])
            opt.zero_grad()
            loss.backward()
            opt.step()
            curves[k].append(loss.item())
        logits = member_outputs(packed(pack_inputs(xs).contiguous(memory_format=memory_format)), K)
        losses = torch.stack([F.cross_entropy(logits[:, k], ys[k]) for k in range(K)])
        optimizer.zero_grad()
        losses.sum().backward()  # each member's gradient is its own loss's
        optimizer.step()
        for k in range(K):
            packed_curves[k].append(losses[k].item())
    assert len({round(c[-1], 3) for c in curves}) == K  # the members differ: a pack of copies would pass too
    out_of_pack = unpack_tree(packed.state_dict(), K)
    momenta = unpack_tree(optimizer.state_dict()["state"], K)
    for k, (model, opt) in enumerate(alone):
        buffers = [
            (state["momentum_buffer"], momenta[k][i]["momentum_buffer"])
            for i, state in opt.state_dict()["state"].items()
        ]
        pairs = [(v, out_of_pack[k][key]) for key, v in model.state_dict().items()] + buffers
        if exact:
            assert curves[k] == packed_curves[k], k
            assert all(torch.equal(a, b) for a, b in pairs), k
        else:
            assert curves[k] == pytest.approx(packed_curves[k], rel=1e-4), k
            assert all(torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4) for a, b in pairs), k


def test_a_member_whose_loss_turns_nan_spoils_only_itself() -> None:
    models = members()
    packed = pack(models)
    optimizer = torch.optim.SGD(packed.parameters(), lr=0.1, momentum=0.9)
    xs, ys = batches(0)
    xs[1] = xs[1].clone()
    xs[1][0, 0, 0, 0] = float("nan")
    logits = member_outputs(packed(pack_inputs(xs)), K)
    losses = torch.stack([F.cross_entropy(logits[:, k], ys[k]) for k in range(K)])
    assert torch.isnan(losses[1]) and torch.isfinite(losses[[0, 2]]).all()
    optimizer.zero_grad()
    losses.sum().backward()
    optimizer.step()
    after = unpack_tree(packed.state_dict(), K)
    finite = [all(torch.isfinite(v).all() for v in state.values()) for state in after]
    assert finite == [True, False, True]


def test_an_mlp_packs_and_what_cannot_be_packed_says_why() -> None:
    torch.manual_seed(0)
    mlps = [MLP((1, 6, 6), 4, hidden=(8,)) for _ in range(2)]
    xs = [torch.randn(5, 1, 6, 6) for _ in range(2)]
    out = member_outputs(pack(mlps)(pack_inputs(xs)), 2)
    assert all(torch.equal(out[:, k], mlps[k](xs[k])) for k in range(2))
    out = member_outputs(pack(mlps, exact=False)(pack_inputs(xs)), 2)
    assert all(torch.allclose(out[:, k], mlps[k](xs[k]), atol=1e-6) for k in range(2))
    assert "dropout" in (unpackable(MLP((1, 6, 6), 4, hidden=(8,), dropout=0.5)) or "")
    assert "LSTM" in (unpackable(nn.Sequential(nn.LSTM(3, 3))) or "")
    with pytest.raises(ValueError, match="cannot pack this model: .*dropout"):
        pack([MLP((1, 6, 6), 4, hidden=(8,), dropout=0.5)] * 2)


# ---------------------------------------------------------------- launcher=packed, end to end

# fp32 on the CPU at the default lr 0.1 with momentum 0.9: a run chaotic enough that a 1e-7 difference grows to
# percents (its own curve moves 9% within 50 steps when only its thread count changes), so only equal floats pass
SWEEP = ["model=resnet", "model.depth=8", "model.width=4", "seed=0,1", "trainer.max_steps=50", "trainer.eval_every=1",
         "trainer.precision=32", "trainer.batch_size=32", "dataset.val_size=100", "logger=none",
         "runtime.figures=false", "runtime.threads=1"]  # fmt: skip


def history(job: Path) -> list[dict]:
    return [json.loads(line) for line in (job / "history.jsonl").read_text().splitlines()]


def losses(job: Path) -> list[float]:
    path = job / "history.jsonl"
    return [json.loads(line)["train_loss"] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_packed_sweep_writes_each_members_run_as_the_same_seed_alone(tmp_path: Path, monkeypatch) -> None:
    """launcher=packed: both seeds train as one module, and each job dir holds what a lone run writes, with the
    same loss curve (every step evaluated: train_loss is the step's) and test accuracy; each job's logger (its
    W&B run) gets the series a lone run's gets."""
    logged: dict[str, list] = {}

    def start(self, config, run_dir, *args, **kwargs) -> None:
        self.series = logged.setdefault(str(run_dir), [])

    monkeypatch.setattr(NullLogger, "start", start)
    monkeypatch.setattr(NullLogger, "log", lambda self, metrics, step: self.series.append((step, metrics)))
    packed = multirun([*SWEEP, "runtime.log_every=10", "launcher=packed", f"hydra.sweep.dir={tmp_path / 'packed'}"])
    alone = multirun([*SWEEP, "runtime.log_every=10", f"hydra.sweep.dir={tmp_path / 'alone'}"])
    assert [r.status for r in packed] == ["completed", "completed"]
    assert "jobs 0 1 train together" in (tmp_path / "packed" / "0" / "cnnlab.log").read_text()
    for mine, lone in zip(packed, alone, strict=True):
        assert len(losses(mine.run_dir)) == 50
        assert history(mine.run_dir) == history(lone.run_dir)  # bit for bit: every loss, accuracy, lr
        assert mine.metrics["test_acc"] == lone.metrics["test_acc"]
        series = logged[str(mine.run_dir)]
        assert series == logged[str(lone.run_dir)] and sum("train/loss" in m for _, m in series) == 5
        assert mine.metrics["steps"] == 50 and mine.metrics["seed"] == lone.metrics["seed"]
        for name in ("best.pt", "last.pt"):  # ordinary checkpoints: task=evaluate reads them
            saved = checkpoint.load(mine.run_dir / "checkpoints" / name)
            assert saved["packed"] == 2 and saved["config"]["seed"] == lone.metrics["seed"]
    assert losses(packed[0].run_dir) != losses(packed[1].run_dir)
    rows = load_runs(tmp_path / "packed")
    assert len(rows) == 2  # cnnlab report reads them as any sweep
    evaluated = run_app(tmp_path / "eval", "task=evaluate", f"checkpoint={packed[1].run_dir}/checkpoints/best.pt")
    assert evaluated == pytest.approx(packed[1].metrics["test_acc"])


@pytest.mark.parametrize("bad", [0, 1])
def test_a_member_that_diverges_ends_diverged_and_the_others_complete(tmp_path: Path, monkeypatch, bad: int) -> None:
    """A NaN in one member's batches from step 3 on: its job ends diverged, the other trains on and completes
    (also when the diverged one is the first job, which trains the pack)."""
    real = PackedLoader.batches

    def poisoned(self, epoch: int = 0, start: int = 0):
        for i, (x, y) in enumerate(real(self, epoch, start)):
            if self.loaders[0].shuffle and epoch * len(self) + start + i >= 3:
                x = x.clone()
                half = x.shape[1] // 2
                x[:, half * bad : half * (bad + 1)] = float("nan")  # the bad member's channels
            yield x, y

    monkeypatch.setattr(PackedLoader, "batches", poisoned)
    jobs = multirun([*SWEEP, "trainer.eval_every=5", "launcher=packed", f"hydra.sweep.dir={tmp_path}"])
    good = 1 - bad
    assert jobs[bad].status == "diverged" and jobs[good].status == "completed"
    said = read_status(jobs[bad].run_dir)
    assert "NaN or inf" in said["error"] and "the other members went on" in said["error"]
    assert jobs[good].metrics["steps"] == 50 and jobs[good].metrics["packed"] == 2
    assert "test_acc" not in jobs[bad].metrics and len(losses(jobs[bad].run_dir)) == 0  # evaluated every 5: none
    assert len(losses(jobs[good].run_dir)) == 10  # one run's rows, no second run appended


def test_what_cannot_be_packed_trains_alone_and_says_why(tmp_path: Path) -> None:
    jobs = multirun([*SWEEP, "trainer.max_steps=3", "runtime.checkpoint=false", "launcher=packed",
                     f"hydra.sweep.dir={tmp_path}"])  # fmt: skip
    assert [r.status for r in jobs] == ["completed", "completed"]
    log = (tmp_path / "0" / "cnnlab.log").read_text()
    assert "launcher=packed: job 0 trains alone: runtime.checkpoint=false" in log
    assert "packed" not in jobs[0].metrics


@pytest.mark.slow
def test_a_packed_sweep_killed_then_resumed_ends_as_one_never_killed(tmp_path: Path) -> None:
    """SIGKILL to the whole sweep while the pack trains (its members' last.pt at step 12), then `cnnlab resume`:
    the pack resumes as a pack and every member ends bit-identical to a packed sweep that never stopped."""
    args = ["-m", *SWEEP, "launcher=packed", "trainer.max_steps=30"]  # last.pt at every evaluation: every step
    killed = sweep(tmp_path, *args, f"hydra.sweep.dir={tmp_path / 'killed'}", signal_at="SIGKILL:0:25")  # step 13
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    for job in (tmp_path / "killed" / "0", tmp_path / "killed" / "1"):
        assert read_status(job)["status"] == "running"
        assert checkpoint.load(job / "checkpoints" / "last.pt")["train_state"]["step"] == 12
    resumed = cli("resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "the pack resumes from step 12" in (tmp_path / "killed" / "0" / "cnnlab.log").read_text()
    reference = sweep(tmp_path, *args, f"hydra.sweep.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    for n in ("0", "1"):
        job, same = tmp_path / "killed" / n, tmp_path / "reference" / n
        assert read_status(job)["status"] == "completed"
        assert (job / "history.jsonl").read_text() == (same / "history.jsonl").read_text()
        for name in ("best.pt", "last.pt"):
            mine, theirs = (checkpoint.load(d / "checkpoints" / name)["model"] for d in (job, same))
            assert all(torch.equal(mine[k], theirs[k]) for k in theirs), (n, name)
        metrics = [json.loads((d / "metrics.json").read_text()) for d in (job, same)]
        assert metrics[0]["test_acc"] == metrics[1]["test_acc"] and metrics[0]["test_loss"] == metrics[1]["test_loss"]


@pytest.mark.slow
def test_ctrl_c_on_a_pack_interrupts_every_member_and_says_how_to_resume(tmp_path: Path) -> None:
    """SIGINT while the pack trains: every member's last.pt at that step, status interrupted, exit 130 with
    `cnnlab resume <sweep dir>`; that command finishes the sweep."""
    args = ["-m", *SWEEP, "launcher=packed", "trainer.max_steps=30", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    stopped = sweep(tmp_path, *args, signal_at="SIGINT:0:25")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert f"cnnlab resume {tmp_path / 'sweep'}" in stopped.stderr
    for n in ("0", "1"):
        record = read_status(tmp_path / "sweep" / n)
        assert record["status"] == "interrupted", record
        assert checkpoint.load(tmp_path / "sweep" / n / "checkpoints" / "last.pt")["train_state"]["step"] == 13
    resumed = cli("resume", str(tmp_path / "sweep"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [read_status(tmp_path / "sweep" / n)["status"] for n in ("0", "1")] == ["completed", "completed"]
