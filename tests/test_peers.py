"""Peers as tests: where conventions agree, cnnlab's maps equal pytorch-grad-cam's (the `cam` extra), and
Grad-CAM++ equals the paper's formula written out here.

pytorch-grad-cam min-max normalizes each map and resizes it to the input (bilinear); cnnlab's maps stay at the
layer's cells, so they are compared after the same resize, by correlation per image.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.sources import load
from cnnlab.models.resnet import ResNet
from cnnlab.vision import make_method

pytest.importorskip("pytorch_grad_cam")

CLOSE = 1e-4  # 1 - correlation


@pytest.fixture(scope="module")
def trained():
    """A tiny ResNet trained for 80 SGD steps on the bundled MNIST sample, and 16 test digits with its classes."""
    torch.manual_seed(0)
    data = load("mnist_sample")
    model = ResNet(depth=8, width=8, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train = (data.train_x[:2560].float() / 255 - 0.5) / 0.5
    losses = []
    for step in range(80):
        xb, yb = train[step % 20 * 128 :][:128], data.train_y[step % 20 * 128 :][:128]
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    x = (data.test_x[:16].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])  # it learned: the maps mean something
    return model, x, predicted


def at_pixels(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W) as pytorch-grad-cam makes them: min-max per image, then a bilinear resize."""
    flat = maps.flatten(1)
    low, high = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    scaled = (maps - low) / (high - low + 1e-7)
    return F.interpolate(scaled[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Pearson correlation of each pair of maps; NaN where either map is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def ours(name: str, model, x, classes, layer=None) -> torch.Tensor:
    return make_method(name, model, layer)(x, classes[:, None]).maps[:, 0].float()


def theirs(name: str, model, x, classes, layer=None) -> torch.Tensor:
    return make_method(f"pgc:{name}", model, layer)(x, classes[:, None]).maps[:, 0].float()


def assert_same_maps(mine: torch.Tensor, peer: torch.Tensor, close: float = CLOSE) -> None:
    corr = correlation(at_pixels(mine, tuple(peer.shape[1:])), peer)
    defined = ~corr.isnan()
    assert defined.sum() >= len(corr) // 2, "most maps must be non-constant for the comparison to mean anything"
    assert (1 - corr[defined]).max() < close, corr


@pytest.mark.parametrize("layer", [None, "stage2"])
@pytest.mark.parametrize(
    ("name", "peer"), [("grad-cam", "GradCAM"), ("xgrad-cam", "XGradCAM"), ("layer-cam", "LayerCAM")]
)
def test_gradient_methods_equal_pytorch_grad_cam(trained, name, peer, layer):
    model, x, classes = trained
    assert_same_maps(ours(name, model, x, classes, layer), theirs(peer, model, x, classes, layer))


def test_cam_at_the_last_layer_is_pytorch_grad_cams_grad_cam(trained):
    # at the last layer of a GAP + linear net, Grad-CAM = ReLU(CAM) / (h w): the same map after min-max
    model, x, classes = trained
    assert_same_maps(ours("cam", model, x, classes).clamp(min=0), theirs("GradCAM", model, x, classes))


def test_a_different_method_is_not_within_the_tolerance(trained):
    # the check can fail: at an inner layer Layer-CAM weighs each position, Grad-CAM the channel's mean gradient
    model, x, classes = trained
    corr = correlation(at_pixels(ours("layer-cam", model, x, classes, "stage2"), (28, 28)),
                       theirs("GradCAM", model, x, classes, "stage2"))  # fmt: skip
    assert (1 - corr[~corr.isnan()]).max() > CLOSE
    other = (classes + 1) % 10  # another class's map
    corr = correlation(at_pixels(ours("grad-cam", model, x, other), (28, 28)), theirs("GradCAM", model, x, classes))
    assert (1 - corr[~corr.isnan()]).max() > CLOSE


def paper_grad_cam_plus_plus(model, x, classes, layer: str) -> torch.Tensor:
    """Chattopadhay et al. 2018, eq. 19 with the exponential's derivatives: alpha = G^2 / (2 G^2 + sum_ab A G^3),
    weights = sum_ij alpha ReLU(G), map = ReLU(sum_k weights_k A_k); G by plain autograd."""
    kept = []
    hook = model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.append(o))
    x = x.detach().requires_grad_()
    logits = model(x)
    hook.remove()
    a = kept[0]
    (g,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), a)
    a, g = a.detach().double(), g.double()
    g2, g3 = g**2, g**3
    denominator = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(denominator != 0, g2 / denominator, 0.0)
    weights = (alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (weights * a).sum(1).clamp(min=0)


@pytest.mark.parametrize("layer", ["stage3", "stage2"])
def test_grad_cam_plus_plus_is_the_papers_formula(trained, layer):
    model, x, classes = trained
    mine = ours("grad-cam++", model, x, classes, layer).double()
    paper = paper_grad_cam_plus_plus(model, x, classes, layer)
    assert paper.abs().amax() > 0
    assert ((mine - paper).abs().amax(dim=(1, 2)) <= 1e-5 * paper.abs().amax(dim=(1, 2)).clamp(min=1e-12)).all()
    # pytorch-grad-cam writes the same formula with 1e-7 added to its float32 denominator: at the last layer a
    # cell's gradients are ~1e-3, so G^2 ~ 1e-6 and the epsilon moves the map a little (measured up to 2e-4)
    assert_same_maps(mine.float(), theirs("GradCAMPlusPlus", model, x, classes, layer), close=1e-3)
