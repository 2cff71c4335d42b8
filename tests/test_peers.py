"""cnnlab's class maps against independent peers: pytorch-grad-cam (the `cam` extra), the papers' formulas
written out with plain autograd, and, for score-cam, the plain forward passes its faster ones replace.

pytorch-grad-cam's conventions (read in its source, grad-cam 1.5.7): it maps the logit of the class
(ClassifierOutputTarget), takes ReLU at the layer's cells, min-max normalizes each map, resizes it to the input
with cv2's bilinear resize (half-pixel centres, as F.interpolate(align_corners=False)) and normalizes again.
Resizing is linear and normalizing affine, so maps compare by their Pearson correlation once cnnlab's are
upsampled the same way. The tests of pytorch-grad-cam skip where it is not installed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data import sources
from cnnlab.models.resnet import ResNet
from cnnlab.vision import make_method
from cnnlab.vision.maps import normalize_per_image
from cnnlab.vision.methods import ScoreCAM

CLOSE = 1 - 1e-4  # the Pearson correlation of two maps that are the same map
MEAN, STD = 0.1307, 0.3081
BLACK = -MEAN / STD  # a black pixel, normalized


@pytest.fixture(scope="module")
def trained() -> tuple[ResNet, torch.Tensor, torch.Tensor]:
    """A ResNet-8 of width 8 after 100 SGD steps on the MNIST sample (~5 s), in eval mode; 8 test digits and its
    classes for them."""
    data = sources.load("mnist_sample")
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.train_y), generator=g)  # the sample's files are sorted by class
    images, labels = (data.train_x[order].float() / 255 - MEAN) / STD, data.train_y[order]
    torch.manual_seed(0)
    model = ResNet(depth=8, width=8, in_channels=1, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(100):
        x, y = images[step * 64 : (step + 1) * 64], labels[step * 64 : (step + 1) * 64]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    test = (data.test_x[:256].float() / 255 - MEAN) / STD
    with torch.no_grad():
        predicted = model(test).argmax(1)
    accuracy = (predicted == data.test_y[:256]).float().mean().item()
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10]) and accuracy > 0.5, (losses[:3], losses[-3:], accuracy)
    model.zero_grad(set_to_none=True)
    return model, test[:8], predicted[:8, None]


@pytest.fixture
def pgc():
    return pytest.importorskip("pytorch_grad_cam")


def at_pixels(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) cell maps -> (B, H, W) at pixels, min-max normalized, as pytorch-grad-cam gives them."""
    maps = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)
    return normalize_per_image(maps)[:, 0]


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Pearson correlation of each image's map in a and in b, (B, H, W) each."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    assert (a.norm(dim=1) > 0).all() and (b.norm(dim=1) > 0).all(), "a constant map: nothing to compare"
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def ours(name: str, model: ResNet, layer: str, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return at_pixels(make_method(name, model, layer)(x, classes).maps, tuple(x.shape[2:]))


def theirs(name: str, model: ResNet, layer: str, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's map through cnnlab's pgc:<Name> wrapper (cnnlab.vision.pgc)."""
    return make_method(f"pgc:{name}", model, layer)(x, classes).maps[:, 0]


def layer_parts(model: ResNet, layer: str) -> tuple[list, list]:
    """The modules before and after `layer`'s output, to run a forward pass by hand, without hooks."""
    parts = [model.stem, model.stage1, model.stage2, model.stage3]
    cut = {"stage2": 3, "stage3": 4}[layer]
    return parts[:cut], parts[cut:]


# ---------------------------------------------------------------- gradient methods against pytorch-grad-cam


@pytest.mark.parametrize("layer", ["stage3", "stage2"])
@pytest.mark.parametrize(
    ("name", "peer"), [("grad-cam", "GradCAM"), ("xgrad-cam", "XGradCAM"), ("layer-cam", "LayerCAM")]
)
def test_gradient_methods_equal_pytorch_grad_cam(trained, pgc, name, peer, layer):
    model, x, classes = trained
    found = correlation(ours(name, model, layer, x, classes), theirs(peer, model, layer, x, classes))
    assert found.min() > CLOSE, found


def test_cam_at_the_last_layer_is_grad_cam_of_pytorch_grad_cam(trained, pgc):
    """At the last layer of GAP + linear the class score's gradient is w_c / (h w) at every cell: Grad-CAM (and
    HiResCAM, sum_k G_k A_k) is ReLU(CAM) / (h w). pytorch-grad-cam has no CAM class; its GradCAM is the peer."""
    model, x, classes = trained
    cam = make_method("cam", model)(x, classes).maps
    grad_cam = make_method("grad-cam", model)(x, classes).maps
    cells = cam.shape[2] * cam.shape[3]
    assert (grad_cam - F.relu(cam) / cells).abs().max() < 1e-6 * grad_cam.abs().max()
    relu_cam = at_pixels(F.relu(cam), tuple(x.shape[2:]))
    for peer in ("GradCAM", "HiResCAM"):
        found = correlation(relu_cam, theirs(peer, model, "stage3", x, classes))
        assert found.min() > CLOSE, (peer, found)


def test_the_comparison_tells_different_maps_apart(trained, pgc):
    """The bar is not loose: grad-cam and layer-cam at stage2, or the maps of another class, are not the same map."""
    model, x, classes = trained
    grad_cam = ours("grad-cam", model, "stage2", x, classes)
    assert correlation(grad_cam, theirs("LayerCAM", model, "stage2", x, classes)).min() < CLOSE
    other = (classes + 1) % 10
    assert correlation(grad_cam, theirs("GradCAM", model, "stage2", x, other)).min() < CLOSE


# ---------------------------------------------------------------- Grad-CAM++: the paper's eq. 19


def grad_cam_plus_plus_by_hand(
    model: ResNet, layer: str, x: torch.Tensor, classes: torch.Tensor, eps: float = 0.0
) -> torch.Tensor:
    """Chattopadhay et al. 2018, eq. 19 with the logit's gradients G at the layer's activations A: alpha =
    G^2 / (2 G^2 + sum_ab A_ab G^3 + eps) (0 where G = 0), weights = sum_ij alpha ReLU(G), map = ReLU(sum_k w_k A_k).
    eps = 0: the paper's; pytorch-grad-cam adds 1e-6."""
    before, after = layer_parts(model, layer)
    a = x
    for part in before:
        a = part(a)
    a = a.detach().requires_grad_()
    out = a
    for part in after:
        out = part(out)
    logits = model.fc(torch.flatten(model.pool(out), 1))
    (g,) = torch.autograd.grad(logits.gather(1, classes).sum(), a)
    a, g = a.detach().double(), g.double()
    total = a.sum(dim=(2, 3), keepdim=True)
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + total * g**3 + eps), 0.0)
    weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * a).sum(1, keepdim=True)).float()


@pytest.mark.parametrize("layer", ["stage3", "stage2"])
def test_grad_cam_plus_plus_is_the_papers_eq_19(trained, layer):
    model, x, classes = trained
    expected = grad_cam_plus_plus_by_hand(model, layer, x, classes)
    found = make_method("grad-cam++", model, layer)(x, classes).maps
    assert expected.amax() > 0
    assert ((found - expected).abs().amax(dim=(1, 2, 3)) <= 1e-5 * expected.abs().amax(dim=(1, 2, 3))).all()


@pytest.mark.parametrize("layer", ["stage3", "stage2"])
def test_grad_cam_plus_plus_against_pytorch_grad_cam(trained, pgc, layer):
    """pytorch-grad-cam's GradCAMPlusPlus is eq. 19 with 1e-6 added to the denominator (grad_cam_plusplus.py):
    it equals that formula written out here (1 - correlation ~1e-14), not eq. 19 itself. The epsilon is not small
    next to 2 G^2 where |G| is ~1e-2 and less (the logit's gradient at one cell; at the last layer of GAP + linear
    G = w_c / (h w)): it lowers alpha there, so its maps differ from eq. 19's, and cnnlab's, by a 1 - correlation
    of up to 7e-5 at stage3 and 8e-6 at stage2 on this model: within 1e-3 here, not always within 1e-4."""
    model, x, classes = trained
    size = tuple(x.shape[2:])
    library = theirs("GradCAMPlusPlus", model, layer, x, classes)
    with_eps = at_pixels(grad_cam_plus_plus_by_hand(model, layer, x, classes, eps=1e-6), size)
    assert correlation(with_eps, library).min() > 1 - 1e-9
    mine = ours("grad-cam++", model, layer, x, classes)
    assert correlation(mine, library).min() > 1 - 1e-3
    assert correlation(mine, with_eps).min() < correlation(library, with_eps).min()  # the epsilon is the difference


# ---------------------------------------------------------------- Score-CAM: pytorch-grad-cam's is another method


def pgc_score_cam_by_hand(model: ResNet, layer: str, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """What pytorch-grad-cam's ScoreCAM computes (its score_cam.py): masks upsampled with align_corners=True,
    min-max normalized with + 1e-8; hidden pixels are 0 of the normalized input (the mean colour); the score
    of a masked image is the class's logit; the weights are their softmax over the layer's channels."""
    before, _ = layer_parts(model, layer)
    with torch.no_grad():
        a = x
        for part in before:
            a = part(a)
        up = F.interpolate(a, size=x.shape[2:], mode="bilinear", align_corners=True)
        low, high = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        up = (up - low) / (high - low + 1e-8)
        scores = torch.stack(
            [model(image[None] * mask[:, None])[:, c] for image, mask, c in zip(x, up, classes[:, 0], strict=True)]
        )
        weights = scores.softmax(dim=1)[:, :, None, None]
        return F.relu((weights * a).sum(1, keepdim=True))


def test_pytorch_grad_cams_score_cam_is_another_method(trained, pgc):
    """Pins the convention difference the README states: pgc's ScoreCAM is reproduced by its formula; cnnlab's
    score-cam (class probability of the masked image, towards black, no softmax over channels) is not it."""
    model, x, classes = trained
    by_hand = at_pixels(pgc_score_cam_by_hand(model, "stage2", x, classes), tuple(x.shape[2:]))
    library = theirs("ScoreCAM", model, "stage2", x, classes)
    assert correlation(by_hand, library).min() > CLOSE
    black = torch.full((1, 1, 1), BLACK)
    cnnlab = at_pixels(make_method("score-cam", model, "stage2", black)(x, classes).maps, tuple(x.shape[2:]))
    assert correlation(cnnlab, library).min() < CLOSE


# ---------------------------------------------------------------- Score-CAM: box forwards = plain forwards


def score_cam_by_hand(model: ResNet, layer: str, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Score-CAM with one plain forward pass per masked image (what ScoreCAM.maps computed before it skipped work)."""
    method = make_method("score-cam", model, layer, torch.full((x.shape[1], 1, 1), BLACK))
    run = method.forward(x)[0]
    a = run.activations
    with torch.no_grad():
        masks = normalize_per_image(F.interpolate(a, size=x.shape[2:], mode="bilinear", align_corners=False))
        masked = [BLACK + (image[None] - BLACK) * m[:, None] for image, m in zip(x, masks, strict=True)]
        probs = torch.stack([model(images).softmax(1) for images in masked])
        weights = probs.gather(2, classes[:, None, :].expand(-1, a.shape[1], -1))
        return F.relu(torch.einsum("bcm,bchw->bmhw", weights, a))


def canvases(channels: int, height: int, width: int) -> torch.Tensor:
    """Black canvases with bright patches at the borders, in a corner, in the middle, one pixel, none."""
    x = torch.full((6, channels, height, width), BLACK)
    g = torch.Generator().manual_seed(0)
    for b, (y, x0, h, w) in enumerate([(0, 0, 8, 9), (height - 7, width - 5, 7, 5), (10, 0, 6, 12), (6, 7, 9, 9)]):
        x[b, :, y : y + h, x0 : x0 + w] = torch.rand(channels, h, w, generator=g) * 3
    x[4, :, height - 1, width - 1] = 2.0
    return x  # the last canvas is all black: every mask gives the black canvas


@pytest.mark.parametrize(
    "kind",
    [
        dict(shortcut="A", size=(40, 40), channels=1),
        dict(shortcut="B", size=(37, 29), channels=1),
        dict(shortcut="C", size=(33, 41), channels=3),
        dict(shortcut="A", size=(32, 32), channels=1, residual=False),
        dict(shortcut="A", size=(36, 36), channels=1, batch_norm=False),
    ],
)
def test_score_cam_computes_what_plain_forward_passes_compute(kind):
    """On cnnlab's ResNet, score-cam runs each masked image only in the box where it differs from the black
    canvas (cnnlab.vision.methods.ScoreCAM.resnet_runner): the same maps, at every layer, whatever the shortcut."""
    torch.manual_seed(0)
    (height, width), channels = kind["size"], kind["channels"]
    model = ResNet(
        depth=8,
        width=4,
        shortcut=kind["shortcut"],
        residual=kind.get("residual", True),
        batch_norm=kind.get("batch_norm", True),
        in_channels=channels,
        num_classes=5,
    ).eval()
    for m in model.modules():  # BN statistics and affine parameters as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.3, 0.3)
    x, classes = canvases(channels, height, width), torch.arange(5).expand(6, -1)
    black = torch.full((channels, 1, 1), BLACK)
    for layer in ("stem", "stage1", "stage2", "stage3", "stage2.0.bn2"):
        method = make_method("score-cam", model, layer, black)
        assert method.resnet_runner(black.expand_as(x[0])) is not None  # the box forwards are the ones tested
        found = method(x, classes).maps
        expected = score_cam_by_hand(model, layer, x, classes)
        assert (normalize_per_image(found) - normalize_per_image(expected)).abs().max() < 1e-5, layer
        assert (found - expected).abs().max() <= 1e-5 * expected.abs().max(), layer


def test_score_cam_falls_back_to_plain_forward_passes():
    """A model in training mode, or with a hook that must see every pass, runs as it is (not box by box)."""
    model = ResNet(depth=8, width=4, in_channels=1, num_classes=5).eval()
    canvas = torch.full((1, 16, 16), BLACK)
    method = ScoreCAM(model, "stage2", black=canvas[:, :1, :1])
    assert method.resnet_runner(canvas) is not None
    handle = model.stage1[0].conv1.register_forward_hook(lambda *_: None)
    assert method.resnet_runner(canvas) is None
    handle.remove()
    model.stage3.train()
    assert method.resnet_runner(canvas) is None
