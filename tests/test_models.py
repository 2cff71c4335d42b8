import copy

import pytest
import torch

from cnnlab.errors import BadArgument
from cnnlab.models.mlp import MLP
from cnnlab.models.resnet import BasicBlock, ResNet

PAPER_COUNTS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", sorted(PAPER_COUNTS))
def test_parameter_counts_match_he_et_al(depth):
    assert params(ResNet(depth=depth, shortcut="A")) == PAPER_COUNTS[depth]
    assert params(ResNet(depth=depth, residual=False)) == PAPER_COUNTS[depth]
    assert params(ResNet(depth=depth, shortcut="B")) == PAPER_COUNTS[depth] + 2_752


def test_shortcut_c_projects_every_block():
    model = ResNet(depth=20, shortcut="C")
    projections = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 9  # 3 stages x 3 blocks, all used
    assert params(model) > params(ResNet(depth=20, shortcut="B"))


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_forward_shapes_plain_and_residual(residual, batch_norm):
    model = ResNet(depth=8, width=4, residual=residual, batch_norm=batch_norm, in_channels=1, num_classes=7)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 7)
    assert model.features(torch.randn(2, 1, 32, 32)).shape == (2, 16, 8, 8)


def test_plain_twin_has_no_shortcut_and_differs_in_output():
    torch.manual_seed(0)
    res = ResNet(depth=8, width=4)
    plain = ResNet(depth=8, width=4, residual=False)
    plain.load_state_dict(res.state_dict())  # same layers, same parameters
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(res.eval()(x), plain.eval()(x))


@pytest.mark.parametrize("depth,nearest", [(21, "[14, 20, 26]"), (55, "[50, 56, 62]"), (3, "[8, 14]"), (0, "[8, 14]")])
def test_bad_depth_lists_nearest_valid(depth, nearest):
    with pytest.raises(BadArgument) as e:  # a plain ValueError: the config boundary names the key
        ResNet(depth=depth)
    assert e.value.name == "depth" and nearest in str(e.value) and isinstance(e.value, ValueError)


def test_bad_width_and_shortcut():
    with pytest.raises(ValueError, match="width=0"):
        ResNet(width=0)
    with pytest.raises(ValueError, match="shortcut='D'"):
        ResNet(shortcut="D")


def test_mlp_has_no_activation_on_logits():
    model = MLP(in_shape=(1, 28, 28), num_classes=10, hidden=[32, 16], activation="gelu")
    assert isinstance(model[-1], torch.nn.Linear) and model[-1].out_features == 10
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    with pytest.raises(ValueError, match="activation='swish'"):
        MLP(in_shape=(1, 28, 28), num_classes=10, activation="swish")


def test_resnet_parts_are_named_and_run_in_order():
    torch.manual_seed(0)
    model = ResNet(depth=14, width=4, in_channels=1).eval()
    assert [name for name, _ in model.named_children()] == ["stem", "stage1", "stage2", "stage3", "pool", "fc"]
    assert [len(getattr(model, s)) for s in ("stage1", "stage2", "stage3")] == [2, 2, 2]
    x = torch.randn(2, 1, 28, 28)
    by_hand = model.stage3(model.stage2(model.stage1(model.stem(x))))
    assert torch.equal(model.features(x), by_hand)
    assert torch.equal(model(x), model.fc(by_hand.mean(dim=(2, 3))))


def old_layout(model: ResNet) -> dict[str, torch.Tensor]:
    """The state dict a ResNet had before its parts were named: one `features` Sequential, then fc."""
    features = torch.nn.Sequential(*model.stem, *model.stage1, *model.stage2, *model.stage3)
    return {**{f"features.{k}": v for k, v in features.state_dict().items()}, **model.fc.state_dict(prefix="fc.")}


def out_of_place(block, x):
    """BasicBlock.forward written without in-place operations: the reference for the training path."""
    out = torch.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    return torch.relu(out + block.shortcut(x) if block.shortcut is not None else out)


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_in_place_training_path_gives_the_same_outputs_and_gradients(batch_norm, shortcut, monkeypatch):
    torch.manual_seed(0)
    model = ResNet(depth=14, width=8, shortcut=shortcut, batch_norm=batch_norm).train()
    reference = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 5, 9])

    def grads(net):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss.detach(), [p.grad for p in net.parameters()]

    loss, got = grads(model)
    monkeypatch.setattr(BasicBlock, "forward", out_of_place)
    ref_loss, want = grads(reference)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_a_hook_on_batch_norm_keeps_what_it_saw_in_eval():
    torch.manual_seed(0)
    model = ResNet(depth=8, width=8).eval()
    seen = {}
    for name in ("stage1.0.bn1", "stage1.0.bn2"):
        model.get_submodule(name).register_forward_hook(lambda m, i, out, name=name: seen.update({name: out}))
    model(torch.randn(2, 3, 16, 16))
    assert all((out < 0).any() for out in seen.values())  # before the ReLU (and the shortcut's sum), as computed
