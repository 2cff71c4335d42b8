"""Seeds packed into one module (cnnlab.models.packed): each member computes and trains as it would alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.mlp import MLP
from cnnlab.models.packed import member_outputs, pack, pack_inputs, pack_tree, unpack_tree, unpackable
from cnnlab.models.resnet import ResNet

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


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_the_pack_computes_each_member_on_its_own_block(shortcut: str) -> None:
    models = members(shortcut)
    packed = pack(models)
    xs, _ = batches(0)
    for mode in (True, False):  # batch statistics, then running averages
        packed.train(mode)
        for m in models:
            m.train(mode)
        out = member_outputs(packed(pack_inputs(xs)), K)
        for k, (m, x) in enumerate(zip(models, xs, strict=True)):
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


def test_a_member_trains_in_the_pack_as_it_trains_alone() -> None:
    """SGD with momentum and weight decay, 30 steps: the loss curves agree to 1e-4 relative, and so do the
    weights, BN running statistics and momentum buffers taken out of the pack."""
    models = members()
    alone = [(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)) for m in models]
    packed = pack(models)
    optimizer = torch.optim.SGD(packed.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    curves, packed_curves = [[] for _ in range(K)], [[] for _ in range(K)]
    for step in range(30):
        xs, ys = batches(step)
        for k, (model, opt) in enumerate(alone):
            loss = F.cross_entropy(model(xs[k]), ys[k])
            opt.zero_grad()
            loss.backward()
            opt.step()
            curves[k].append(loss.item())
        logits = member_outputs(packed(pack_inputs(xs)), K)
        losses = torch.stack([F.cross_entropy(logits[:, k], ys[k]) for k in range(K)])
        optimizer.zero_grad()
        losses.sum().backward()  # each member's gradient is its own loss's
        optimizer.step()
        for k in range(K):
            packed_curves[k].append(losses[k].item())
    for k in range(K):
        assert curves[k] == pytest.approx(packed_curves[k], rel=1e-4), k
    assert len({round(c[-1], 3) for c in curves}) == K  # the members differ: a pack of copies would pass too
    out_of_pack = unpack_tree(packed.state_dict(), K)
    momenta = unpack_tree(optimizer.state_dict()["state"], K)
    for k, (model, opt) in enumerate(alone):
        for key, value in model.state_dict().items():
            assert torch.allclose(value.float(), out_of_pack[k][key].float(), rtol=1e-3, atol=1e-4), (k, key)
        for index, state in opt.state_dict()["state"].items():
            assert torch.allclose(state["momentum_buffer"], momenta[k][index]["momentum_buffer"], atol=1e-4)


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
    packed = pack(mlps)
    xs = [torch.randn(5, 1, 6, 6) for _ in range(2)]
    out = member_outputs(packed(pack_inputs(xs)), 2)
    assert all(torch.allclose(out[:, k], mlps[k](xs[k]), atol=1e-6) for k in range(2))
    assert "dropout" in (unpackable(MLP((1, 6, 6), 4, hidden=(8,), dropout=0.5)) or "")
    assert "LSTM" in (unpackable(nn.Sequential(nn.LSTM(3, 3))) or "")
    with pytest.raises(ValueError, match="cannot pack this model: .*dropout"):
        pack([MLP((1, 6, 6), 4, hidden=(8,), dropout=0.5)] * 2)
