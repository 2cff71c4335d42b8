"""cnnlab.vision: the class-map interface, its methods against identities from their papers, hooks, baselines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.config.schema import MAP_BASELINES, MAP_METHODS
from cnnlab.models.resnet import ResNet
from cnnlab.vision import METHODS, make_method
from cnnlab.vision.canvas_eval import SharedPass
from cnnlab.vision.maps import ClassMaps, normalize_per_image
from cnnlab.vision.methods import CAM, FullyConv, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, XGradCAM
from tests.helpers import small_resnet


def test_the_registry_is_the_schemas_list_of_names():
    assert tuple(METHODS) == MAP_METHODS + MAP_BASELINES


def test_cam_plus_bias_is_the_fully_convolutional_score_map():
    model, x = small_resnet(), torch.randn(3, 1, 40, 40)
    cams, scores = CAM(model)(x), FullyConv(model)(x)
    assert cams.stride == scores.stride == 4 and cams.maps.shape == (3, 10, 10, 10)
    assert (cams.maps + model.fc.bias.view(1, -1, 1, 1) - scores.maps).abs().max() < 1e-5


def test_grad_cam_at_the_last_layer_is_relu_cam_over_the_cells():
    model, x = small_resnet(), torch.randn(2, 1, 32, 32)
    cam = CAM(model)(x).maps
    grad = GradCAM(model)(x).maps
    assert grad.shape == (2, 10, 8, 8)
    assert (grad - torch.relu(cam) / 64).abs().max() < 1e-6
    assert GradCAM(model, "stage1.0")(x).maps.shape == (2, 10, 32, 32)  # a block before any stride


def test_xgrad_cam_and_layer_cam_equal_grad_cam_at_the_last_layer():
    model, x = small_resnet(), torch.randn(2, 1, 32, 32)
    grad = GradCAM(model)(x).maps
    # XGrad-CAM's weights sum(A G) / sum(A) are G itself where G is constant over the cells
    assert (XGradCAM(model)(x).maps - grad).abs().max() < 1e-5
    with torch.no_grad():  # Layer-CAM's ReLU(G) is G where every classifier weight is positive
        model.fc.weight.abs_()
    assert (LayerCAM(model)(x).maps - GradCAM(model)(x).maps).abs().max() < 1e-6


def test_grad_cam_plus_plus_at_the_last_layer_has_its_closed_form():
    model, x = small_resnet(), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a = model.features(x)  # (B, C, h, w)
    cells = a.shape[2] * a.shape[3]
    g = model.fc.weight[:, None, :, None, None] / cells  # (K, 1, C, 1, 1): the same at every cell
    total = a.sum(dim=(2, 3), keepdim=True)
    # alpha = g^2 / (2 g^2 + sum(A) g^3) at every cell, summed over the cells with ReLU(g)
    weights = cells * torch.relu(g) * g**2 / (2 * g**2 + total * g**3)
    expected = torch.relu((weights * a).sum(dim=2)).transpose(0, 1)
    assert (GradCAMPlusPlus(model)(x).maps - expected).abs().max() < 1e-5


@pytest.mark.parametrize("black", [None, -0.4242])  # None: hidden pixels are 0; else the given (black) value
def test_score_cam_weights_are_the_class_probability_of_the_masked_image(black):
    model, x = small_resnet(), torch.randn(2, 1, 16, 16)
    given = None if black is None else torch.full((1, 1, 1), black)
    found = ScoreCAM(model, "stage2", black=given)(x, torch.tensor([[3], [7]]))
    e = 0.0 if black is None else black
    for b, c in enumerate((3, 7)):
        with torch.no_grad():
            a = model.stage2(model.stage1(model.stem(x[b : b + 1])))[0]  # (C, 8, 8), without hooks
            masks = normalize_per_image(F.interpolate(a[None], size=(16, 16), mode="bilinear")[0])
            probs = torch.stack([model(e + (x[b : b + 1] - e) * m).softmax(1)[0, c] for m in masks])
        expected = torch.relu((probs[:, None, None] * a).sum(0))
        assert (found.maps[b, 0] - expected).abs().max() < 1e-5


def by_hand_grad_cam(model: ResNet, x: torch.Tensor, upto: list, rest: list) -> torch.Tensor:
    """Grad-CAM at the output of `upto` (modules run in order), with no hooks: run the parts by hand."""
    with torch.no_grad():
        a = x
        for part in upto:
            a = part(a)
    a = a.clone().requires_grad_(True)
    h = a
    for part in rest:
        h = part(h)
    logits = model.fc(torch.flatten(model.pool(h), 1))
    maps = []
    for c in range(logits.shape[1]):
        (g,) = torch.autograd.grad(logits[:, c].sum(), a, retain_graph=True)
        maps.append(torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1)))
    return torch.stack(maps, 1).detach()


def test_a_mid_network_map_is_that_layers_even_when_an_in_place_op_follows():
    model, x = small_resnet(), torch.randn(2, 1, 16, 16)
    model.stem.relu = torch.nn.ReLU(inplace=True)  # overwrites the norm's output, as the old stem's did
    stem_bn = [model.stem.conv, model.stem.bn]
    expected = by_hand_grad_cam(model, x, stem_bn, [torch.nn.ReLU(), model.stage1, model.stage2, model.stage3])
    found = GradCAM(model, "stem.bn")(x).maps
    assert (found - expected).abs().max() < 1e-5
    after_relu = by_hand_grad_cam(model, x, [*stem_bn, torch.nn.ReLU()], [model.stage1, model.stage2, model.stage3])
    assert (found - after_relu).abs().max() > 1e-3  # what the old hook returned: not the same map
    mid = by_hand_grad_cam(model, x, [model.stem, model.stage1, model.stage2], [model.stage3])
    assert (GradCAM(model, "stage2")(x).maps - mid).abs().max() < 1e-5


def test_hooks_are_removed_after_a_call_and_after_an_error():
    model = small_resnet()
    for name in ("cam", "grad-cam", "score-cam"):
        method = make_method(name, model, None if name == "cam" else "stage2")
        method(torch.randn(1, 1, 16, 16))
        with pytest.raises(RuntimeError):
            method(torch.randn(1, 3, 16, 16))  # three channels into a one-channel stem
        assert all(not m._forward_hooks for m in model.modules())


def test_maps_of_the_classes_asked_for_in_their_order():
    model, x = small_resnet(), torch.randn(2, 1, 16, 16)
    every = GradCAM(model, "stage2")(x)
    some = GradCAM(model, "stage2")(x, torch.tensor([[3, 1], [0, 0]]))
    assert torch.equal(some.classes, torch.tensor([[3, 1], [0, 0]]))
    assert torch.allclose(some.maps[0], every.maps[0, [3, 1]], atol=1e-6)
    assert torch.allclose(some.maps[1], every.maps[1, [0, 0]], atol=1e-6)
    full = some.full(10)
    assert torch.equal(full[0, 3], some.maps[0, 0]) and full[0, 5].abs().max() == 0


def test_class_maps_full_puts_each_map_at_its_class():
    maps = ClassMaps(torch.zeros(1, 4), torch.tensor([[[[1.0]], [[2.0]]]]), torch.tensor([[2, 0]]), stride=1)
    assert maps.full(4)[0, :, 0, 0].tolist() == [2.0, 0.0, 1.0, 0.0]


def test_baselines_know_nothing_of_the_class():
    model = small_resnet()
    x = -torch.ones(2, 1, 16, 16)
    x[0, 0, 2:6, 10:13] = 2.0  # ink
    ink = make_method("ink", model)(x, torch.tensor([[1, 4], [2, 2]]))
    assert ink.stride == 1 and torch.equal(ink.maps[0, 0], x[0, 0]) and torch.equal(ink.maps[0, 1], x[0, 0])
    center = make_method("center", model)(x).maps[0, 0]
    assert divmod(int(center.argmax()), 16) in {(7, 7), (7, 8), (8, 7), (8, 8)}
    assert torch.allclose(center, center.flip(0)) and torch.allclose(center, center.T)
    first, again = make_method("random", model)(x).maps, make_method("random", model)(x).maps
    assert torch.equal(first, again) and first.min() >= 0 and first.max() <= 1  # same seed, same maps
    with torch.no_grad():
        assert torch.equal(make_method("random", model)(x).logits, model(x))


@pytest.mark.parametrize(
    ("name", "layer", "says"),
    [
        ("cam", "stage2", "layer='stage2' is not allowed: null or stage3"),
        ("grad-cam", "stage4", "layer='stage4' is not allowed: null or a layer name: stem, stage1, stage2, stage3"),
        ("ink", "stage2", "method ink uses no layer"),
        ("gradcam", None, "method='gradcam' is not allowed: one of fully-conv, cam, grad-cam"),
    ],
)
def test_bad_method_or_layer_names_what_is_allowed(name, layer, says):
    with pytest.raises(ValueError, match=says):
        make_method(name, small_resnet(), layer)


def test_library_methods_match_cnnlabs_where_both_compute_the_same_map():
    pytest.importorskip("pytorch_grad_cam")
    model, x = small_resnet(), torch.randn(2, 1, 16, 16)
    classes = torch.tensor([[3], [5]])
    # not grad-cam++: the library adds 1e-6 to alpha's denominator 2 G^2 + ..., which G ~ 1e-3 makes a 2% change
    for own, theirs in (("grad-cam", "GradCAM"), ("xgrad-cam", "XGradCAM"), ("layer-cam", "LayerCAM")):
        mine = normalize_per_image(make_method(own, model, "stage1")(x, classes).maps)  # stride 1: no resizing
        found = make_method(f"pgc:{theirs}", model, "stage1")(x, classes)
        assert found.stride == 1 and (found.maps - mine).abs().max() < 1e-4, own
    assert all(not m._forward_hooks for m in model.modules())


def test_library_method_errors(monkeypatch):
    pytest.importorskip("pytorch_grad_cam")
    with pytest.raises(ValueError, match="method='pgc:NoSuchCAM' is not allowed: .*pgc:HiResCAM.*pgc:ScoreCAM"):
        make_method("pgc:NoSuchCAM", small_resnet())
    monkeypatch.setitem(__import__("sys").modules, "pytorch_grad_cam", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"pytorch-grad-cam is not installed.*pip install -e \"\.\[cam\]\""):
        make_method("pgc:ScoreCAM", small_resnet())


@pytest.mark.parametrize(("name", "layer"), [("cam", None), ("grad-cam", None), ("layer-cam", "stage2"), ("ink", None)])
def test_one_shared_pass_gives_the_scores_and_maps_of_separate_calls(name, layer):
    model, x = small_resnet(), torch.randn(3, 1, 32, 32)
    method, scorer = make_method(name, model, layer), FullyConv(model)
    shared = SharedPass(method, scorer, x)
    assert torch.equal(shared.scores, scorer(x).maps)
    classes = shared.scores.mean(dim=(2, 3)).topk(2).indices  # chosen from the scores, as on canvases
    got, want = shared.maps(classes), method(x, classes)
    assert torch.equal(got.maps, want.maps) and torch.equal(got.classes, want.classes) and got.stride == want.stride
    assert torch.equal(SharedPass(scorer, scorer, x).maps(classes).maps, scorer(x).maps)  # fully-conv: every class


@pytest.mark.parametrize("name", ["cam", "grad-cam", "score-cam"])
def test_one_class_per_image_may_be_a_vector(name: str) -> None:
    from cnnlab.errors import BadArgument
    from cnnlab.vision import make_method

    model = small_resnet().eval()
    x = torch.randn(3, 1, 28, 28)
    method = make_method(name, model)
    classes = torch.tensor([1, 4, 7])
    torch.testing.assert_close(method(x, classes).maps, method(x, classes[:, None]).maps)
    with pytest.raises(BadArgument, match=r"class indices \(3,\) or \(3, m\)"):
        method(x, torch.zeros(2, dtype=torch.long))
