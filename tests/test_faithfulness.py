"""Faithfulness (deletion, insertion, Average Drop, Increase in Confidence) and the model-randomization check."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab.vision import make_method
from cnnlab.vision.faithfulness import (
    Faithfulness,
    auc,
    blur,
    curves,
    drop_and_increase,
    fractions,
    probe,
    ranks,
)
from cnnlab.vision.sanity import PASS_BELOW, cascade, spearman, top_down
from tests.helpers import run_app, small_resnet

SMALL = ["task.canvas.count=6", "task.canvas.size=64", "task.figure_count=2", "task.faithfulness_count=4"]


def object_scorer(v: torch.Tensor) -> torch.Tensor:
    """A model that sees only the object: class 1's logit grows with the mean ink of the 4x4 top-left corner."""
    ink = v[:, 0, :4, :4].mean(dim=(1, 2))
    return torch.stack([torch.zeros_like(ink), 8 * ink - 4], dim=1).softmax(1)


def object_image() -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, 16, 16): the object (ones) in the top-left corner, faint noise elsewhere; its true map."""
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.1
    x[:, :, :4, :4] = 1.0
    truth = torch.zeros(1, 16, 16)
    truth[:, :4, :4] = 1.0
    return x, truth + 0.01 * torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(1))


def test_steps_and_ranks():
    assert torch.allclose(fractions(4), torch.tensor([0, 1 / 16, 1 / 4, 9 / 16, 1]))
    assert torch.equal(ranks(torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])), torch.tensor([[3, 0, 1, 2]]))
    assert torch.allclose(auc(torch.full((2, 9), 0.7), 8), torch.full((2,), 0.7))  # a flat curve's area


def test_deletion_of_the_object_first_scores_lower_and_insertion_higher():
    x, truth = object_image()
    black, cls = torch.zeros(1, 1, 1), torch.tensor([1])
    good_del, good_ins = curves(object_scorer, x, truth, cls, black, 16)
    bad_del, bad_ins = curves(object_scorer, x, 1 - truth, cls, black, 16)
    assert good_del[0, 0] == bad_del[0, 0] > 0.95  # the whole image: the object is there
    assert auc(good_del, 16) < auc(bad_del, 16) - 0.3  # removing the object first kills the score at once
    assert auc(good_ins, 16) > auc(bad_ins, 16) + 0.3
    assert good_del[0, -1] == bad_del[0, -1] < 0.05  # all deleted: black, class 1 gone
    assert torch.allclose(good_ins[0, -1], good_del[0, 0])  # all inserted: the image again


def test_average_drop_and_increase_in_confidence_by_hand():
    def mean_ink(v: torch.Tensor) -> torch.Tensor:  # probability of class 1 = mean pixel (images in [0, 1])
        m = v.mean(dim=(1, 2, 3))
        return torch.stack([1 - m, m], dim=1)

    x, heat = torch.full((2, 1, 4, 4), 0.5), torch.full((2, 4, 4), 0.5)  # y = 0.5 for either class, o = 0.25
    _, _, y, o = probe(mean_ink, x, heat, torch.tensor([1, 0]), torch.zeros(1, 1, 1), 4)
    assert torch.allclose(y, torch.tensor([0.5, 0.5])) and torch.allclose(o, torch.tensor([0.25, 0.75]))
    drop, increase = drop_and_increase(y, o)
    assert torch.allclose(drop, torch.tensor([0.5, 0.0]))  # class 1: 0.5 -> 0.25; class 0: 0.5 -> 0.75
    assert torch.equal(increase, torch.tensor([0.0, 1.0]))
    faith = Faithfulness(steps=4)
    faith.add(mean_ink, x, heat, torch.tensor([1, 0]), torch.zeros(1, 1, 1))
    summary = faith.summary()
    assert summary["average_drop"] == pytest.approx(25.0) and summary["increase_in_confidence"] == pytest.approx(50)


def test_spearman_of_same_reversed_and_constant_maps():
    a = torch.rand(3, 5, 5)
    assert torch.allclose(spearman(a, a * 2 + 1), torch.ones(3))
    assert torch.allclose(spearman(a, -a), -torch.ones(3))
    assert torch.equal(spearman(a, torch.zeros(3, 5, 5)), torch.zeros(3))  # a map that died says nothing
    assert torch.equal(spearman(torch.zeros(3, 5, 5), torch.zeros(3, 5, 5)), torch.ones(3))  # nothing changed


def test_sanity_flags_a_baseline_and_passes_grad_cam():
    model, x = small_resnet(), torch.randn(4, 1, 32, 32)
    assert top_down(model)[0] == "fc" and top_down(model)[-1] == "stem"
    for name in ("ink", "center"):  # maps of the image or of nothing: the weights do not matter
        out = cascade(lambda m, n=name: make_method(n, m), model, x)
        assert out["sanity_rank_corr"] == pytest.approx(1.0) and out["sanity_pass"] is False
    out = cascade(lambda m: make_method("grad-cam", m), model, x)
    assert out["sanity_rank_corr"] < PASS_BELOW and out["sanity_pass"] is True
    assert out["sanity_rank_corr_fc"] < 0.99  # a new classifier already changes the map
    assert torch.equal(model.fc.weight, small_resnet().fc.weight)  # the trained model is left alone


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grad-cam", "ink"])
def test_cam_writes_faithfulness_and_sanity(tmp_path, mnist_checkpoint, method):
    run_app(tmp_path, "task=cam", f"checkpoint={mnist_checkpoint}", f"task.method={method}", *SMALL)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["deletion_auc"] <= 1 and 0 <= metrics["insertion_auc"] <= 1
    assert 0 <= metrics["average_drop"] <= 100 and 0 <= metrics["increase_in_confidence"] <= 100
    assert isinstance(metrics["sanity_pass"], bool) and "sanity_rank_corr_fc" in metrics
    if method == "ink":
        assert metrics["sanity_rank_corr"] == pytest.approx(1.0) and metrics["sanity_pass"] is False


@pytest.mark.slow
def test_faithfulness_on_test_images(tmp_path, cifar_checkpoint):
    overrides = ["task=cam", f"checkpoint={cifar_checkpoint}", "task.source=test", "task.faithfulness_count=3"]
    run_app(tmp_path, *overrides, "task.method=grad-cam", "task.figure_count=2", "task.sanity_count=2")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["deletion_auc"] <= 1 and "sanity_rank_corr_stem" in metrics


def every_step_probe(score, x, heat, classes, black, steps):
    """The reference: every step of every image scored, one pass each."""
    h, w = x.shape[2:]
    place = ranks(heat).view(-1, 1, h, w)

    def p(v: torch.Tensor) -> torch.Tensor:
        return score(v).gather(1, classes[:, None])[:, 0]

    taken = [place < (f * h * w).round() for f in fractions(steps)]
    deletion = torch.stack([p(torch.where(t, black, x)) for t in taken], dim=1)
    insertion = torch.stack([p(torch.where(t, x, blur(x))) for t in taken], dim=1)
    return deletion, insertion, p(x), p(black + (x - black) * heat[:, None])


def test_probe_scores_each_distinct_image_once_and_gives_every_step():
    x, truth = object_image()
    x = torch.cat([x, x.flip(3), torch.zeros_like(x)])  # noise everywhere, then on a black canvas
    x[1:, :, :, 4:] = 0.0
    heat = torch.cat([truth, truth.flip(2), torch.rand(1, 16, 16)])
    classes, black, seen = torch.tensor([1, 0, 1]), torch.zeros(1, 1, 1), []

    def counting(v: torch.Tensor) -> torch.Tensor:
        seen.append(len(v))
        return object_scorer(v)

    for steps in (1, 4, 16):
        seen.clear()
        got, want = (
            probe(counting, x, heat, classes, black, steps),
            every_step_probe(object_scorer, x, heat, classes, black, steps),
        )
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        assert sum(seen) < 3 * (2 * steps + 2)  # black canvases and the images themselves are scored once
