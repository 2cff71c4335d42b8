"""Faithfulness (deletion, insertion, Average Drop, Increase in Confidence, map size, ADCC) and the
model-randomization check. The metrics are pinned on hand-made inputs whose answer is known: a synthetic canvas of
three ink blobs on black, and a scorer whose class-c probability is the ink left of blob c."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab.vision import make_method
from cnnlab.vision.faithfulness import (
    KEYS,
    Faithfulness,
    adcc,
    auc,
    blur,
    coherency,
    drop_and_increase,
    probe,
    ranks,
    schedule,
)
from cnnlab.vision.sanity import PASS_BELOW, cascade, spearman, top_down
from tests.helpers import run_app, small_resnet

SMALL = ["task.canvas.count=6", "task.canvas.size=64", "task.figure_count=2", "task.faithfulness_count=4"]
BLACK = torch.zeros(1, 1, 1)


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


# three 4x4 blobs of ink 1 on a black 32x32 canvas, on the same rows: row-major order interleaves them
BLOBS = torch.zeros(3, 32, 32)
for _c, _col in enumerate((2, 14, 24)):
    BLOBS[_c, 10:14, _col : _col + 4] = 1.0


def canvas(n: int = 3) -> torch.Tensor:
    """(n, 1, 32, 32): the same canvas of three blobs n times (one per class explained)."""
    return BLOBS.sum(0).expand(n, 1, 32, 32).clone()


def blob_scorer(v: torch.Tensor) -> torch.Tensor:
    """(n, 3): class c's probability is the fraction of blob c's ink left (inside its square)."""
    return ((v[:, 0, None] * BLOBS).sum(dim=(2, 3)) / BLOBS.sum(dim=(1, 2))).clamp(0, 1)


def scores(x: torch.Tensor, heat: torch.Tensor, classes: torch.Tensor, steps: int = 12):
    """(B,) deletion and insertion AUCs, and the probe."""
    p = probe(blob_scorer, x, heat, classes, BLACK, steps)
    return auc(p.deletion, p.deletion_at), auc(p.insertion, p.insertion_at), p


CLASSES = torch.arange(3)
PERFECT = BLOBS.clone()  # the map of class c: blob c's ink, nothing else


def test_ranks_schedule_and_auc_by_hand():
    assert torch.equal(ranks(torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])), torch.tensor([[3, 0, 1, 2]]))
    # map order: pixels 1 (weight 0), 2 (2), 3 (1), 0 (1); total 4, goals 0, 1, 2, 3, 4
    s = schedule(torch.tensor([[[0.1, 0.9], [0.5, 0.3]]]), torch.tensor([[[1.0, 0.0], [2.0, 1.0]]]), 4)
    assert torch.equal(s.taken, torch.tensor([[0, 2, 2, 3, 4]]))  # the free pixel goes with the first inked one
    assert torch.equal(s.changed, torch.tensor([[0, 1, 1, 2, 3]]))
    assert torch.allclose(s.at, torch.tensor([[0, 0.5, 0.5, 0.75, 1]]))  # the fraction actually taken
    flat = schedule(torch.rand(2, 3, 3), torch.zeros(2, 3, 3), 4)  # nothing to change: uniform x, none changed
    assert torch.allclose(flat.at, torch.linspace(0, 1, 5).expand(2, 5)) and not flat.changed.any()
    assert torch.allclose(auc(torch.full((2, 9), 0.7), torch.linspace(0, 1, 9)), torch.full((2,), 0.7))
    assert torch.allclose(auc(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0, 0.25, 1]])), torch.tensor(0.125))


def test_perfect_map_beats_the_ink_mask_and_the_inverted_map():
    x = canvas()
    good_del, good_ins, good = scores(x, PERFECT, CLASSES)
    ink_del, ink_ins, _ = scores(x, x[:, 0], CLASSES)  # the image itself: every blob's ink at once
    bad_del, bad_ins, _ = scores(x, 1 - PERFECT, CLASSES)  # black and the other blobs first
    # the perfect map: blob c's 16 pixels are 1/3 of the ink, gone linearly by x = 1/3, so 1/2 * 1/3
    assert torch.allclose(good_del, torch.full((3,), 1 / 6))
    assert torch.allclose(good.deletion[:, :5], torch.tensor([1, 0.75, 0.5, 0.25, 0]).expand(3, 5))
    assert torch.allclose(bad_del, torch.full((3,), 2 / 3 + 1 / 6))  # the other blobs cost 2/3 before it
    # the ink mask takes a row of each blob in turn: 3 units of ink per unit of blob c, blob c gone at 11/12, 1, 1
    assert torch.allclose(ink_del, torch.tensor([5 / 12, 1 / 2, 7 / 12]))
    assert (good_del < ink_del - 0.2).all() and (ink_del < bad_del - 0.2).all()
    assert (good_ins > ink_ins + 0.1).all() and (ink_ins > bad_ins + 0.1).all()
    assert torch.allclose(good.deletion[:, 0], torch.ones(3)) and torch.allclose(good.insertion[:, -1], torch.ones(3))


def test_no_map_beats_the_perfect_one():
    """The perfect curve is the lower envelope (each unit of x takes at most 3 units of blob c): the ink mask,
    the map of ones and random maps can tie it at best."""
    x = canvas()
    best, _, _ = scores(x, PERFECT, CLASSES)
    g = torch.Generator().manual_seed(0)
    maps = [x[:, 0], torch.ones(3, 32, 32)] + [torch.rand(3, 32, 32, generator=g) for _ in range(10)]
    maps += [(PERFECT + 0.5 * torch.rand(3, 32, 32, generator=g)).clamp(max=1) for _ in range(10)]  # near-perfect
    deletion, _, _ = scores(canvas(3 * len(maps)), torch.cat(maps), CLASSES.repeat(len(maps)))  # one probe
    assert (deletion >= best.repeat(len(maps)) - 1e-6).all()
    assert (deletion[:3] > best + 0.2).all()  # the ink mask does not tie


def test_map_of_ones_is_row_major_order_and_worse_than_perfect():
    x = canvas()
    ones_del, ones_ins, ones = scores(x, torch.ones(3, 32, 32), CLASSES)
    row_major = (1 - torch.arange(32 * 32) / (32 * 32)).view(1, 32, 32).expand(3, 32, 32)
    rm_del, rm_ins, rm = scores(x, row_major, CLASSES)
    assert torch.equal(ones.deletion, rm.deletion) and torch.equal(ones.insertion, rm.insertion)
    assert torch.equal(ones_del, rm_del) and torch.equal(ones_ins, rm_ins)
    ink_del, _, _ = scores(x, x[:, 0], CLASSES)
    assert torch.allclose(ones_del, ink_del)  # black pixels are free: ones delete the ink in the ink mask's order
    good_del, good_ins, _ = scores(x, PERFECT, CLASSES)
    assert (ones_del > good_del + 0.2).all() and (ones_ins < good_ins - 0.1).all()


def test_black_pixels_cost_nothing_on_the_x_axis():
    x = canvas()
    black_first = torch.where(x[:, 0] > 0, 0.5 * PERFECT, 1.0)  # every black pixel, then blob c, then the others
    first, _, p = scores(x, black_first, CLASSES)
    good, _, q = scores(x, PERFECT, CLASSES)
    assert torch.equal(p.deletion, q.deletion) and torch.allclose(p.deletion_at, q.deletion_at)
    assert torch.allclose(first, good)
    # counted in pixels, 1008 black pixels first would have kept the score at 1 for 98% of the curve


def test_nothing_to_delete_gives_a_flat_curve():
    x = torch.cat([torch.zeros(1, 1, 32, 32), canvas(1)])  # an empty canvas beside a full one
    heat = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
    p = probe(object_scorer, x, heat, torch.tensor([1, 1]), BLACK, 8)
    for curve, at in ((p.deletion, p.deletion_at), (p.insertion, p.insertion_at)):
        assert torch.isfinite(curve).all() and torch.isfinite(at).all()
        assert torch.allclose(curve[0], p.y[0].expand(9))  # blurred black is black: insertion changes nothing too
        assert torch.allclose(at[0], torch.linspace(0, 1, 9))
        assert torch.allclose(auc(curve, at)[0], p.y[0])
    faith = Faithfulness(steps=8)
    faith.add(object_scorer, x, heat, torch.tensor([1, 1]), BLACK)
    assert all(torch.isfinite(torch.tensor(v)) for v in faith.summary().values())


def test_deletion_of_the_object_first_scores_lower_and_insertion_higher():
    x, truth = object_image()
    cls = torch.tensor([1])
    good = probe(object_scorer, x, truth, cls, BLACK, 16)
    bad = probe(object_scorer, x, 1 - truth, cls, BLACK, 16)
    assert good.deletion[0, 0] == bad.deletion[0, 0] > 0.95  # the whole image: the object is there
    assert auc(good.deletion, good.deletion_at) < auc(bad.deletion, bad.deletion_at) - 0.3
    assert auc(good.insertion, good.insertion_at) > auc(bad.insertion, bad.insertion_at) + 0.3
    assert good.deletion[0, -1] == bad.deletion[0, -1] < 0.05  # all deleted: black, class 1 gone
    assert torch.allclose(good.insertion[0, -1], good.deletion[0, 0])  # all inserted: the image again


def test_average_drop_and_increase_in_confidence_by_hand():
    def mean_ink(v: torch.Tensor) -> torch.Tensor:  # probability of class 1 = mean pixel (images in [0, 1])
        m = v.mean(dim=(1, 2, 3))
        return torch.stack([1 - m, m], dim=1)

    x, heat = torch.full((2, 1, 4, 4), 0.5), torch.full((2, 4, 4), 0.5)  # y = 0.5 for either class, o = 0.25
    p = probe(mean_ink, x, heat, torch.tensor([1, 0]), BLACK, 4)
    assert torch.allclose(p.y, torch.tensor([0.5, 0.5])) and torch.allclose(p.o, torch.tensor([0.25, 0.75]))
    drop, increase = drop_and_increase(p.y, p.o)
    assert torch.allclose(drop, torch.tensor([0.5, 0.0]))  # class 1: 0.5 -> 0.25; class 0: 0.5 -> 0.75
    assert torch.equal(increase, torch.tensor([0.0, 1.0]))
    faith = Faithfulness(steps=4)
    faith.add(mean_ink, x, heat, torch.tensor([1, 0]), BLACK)
    summary = faith.summary()
    assert summary["average_drop"] == pytest.approx(25.0) and summary["increase_in_confidence"] == pytest.approx(50)
    assert summary["map_size"] == pytest.approx(0.5) and "adcc" not in summary and "coherency" not in summary


def test_coherency_and_adcc_by_hand():
    a = torch.rand(3, 5, 5)
    assert torch.allclose(coherency(a, a), torch.ones(3)) and torch.allclose(coherency(a, 2 * a + 1), torch.ones(3))
    assert torch.allclose(coherency(a, -a), torch.zeros(3), atol=1e-6)
    ones = torch.ones(3, 5, 5)
    assert torch.equal(coherency(ones, ones), torch.ones(3)) and torch.equal(coherency(ones, a), torch.full((3,), 0.5))
    # two disjoint blobs of p = 16/1024 of the pixels: r = -p / (1 - p) = -1/63
    assert coherency(BLOBS[:1], BLOBS[1:2]).item() == pytest.approx((1 - 1 / 63) / 2)
    got = adcc(torch.tensor([1.0, 0.5, 0.0, 1.0]), torch.tensor([0.0, 0.5, 0.1, 1.0]), torch.tensor([0, 0.5, 0, 0]))
    assert torch.allclose(got, torch.tensor([1.0, 0.5, 0.0, 0.0]))  # harmonic mean; 0 where a term is 0


def test_map_of_ones_wins_average_drop_but_not_adcc():
    x = canvas()
    faith = Faithfulness(steps=12)
    faith.add(blob_scorer, x, torch.ones(3, 32, 32), CLASSES, BLACK, remap=lambda v, c: torch.ones(len(v), 32, 32))
    summary = faith.summary()
    assert summary["average_drop"] == 0 and summary["increase_in_confidence"] == 0  # x times ones is x
    assert summary["map_size"] == 1 and summary["coherency"] == 1 and summary["adcc"] == 0
    assert tuple(summary) == KEYS  # every key, in KEYS' order


def test_adcc_of_a_small_perfect_map_by_hand():
    """Blob c at 0.5: x times it keeps half of blob c (drop 1/2), its size is 8/1024, and a remap that finds blob c
    in the masked image agrees with it (coherency 1)."""
    x, heat = canvas(), 0.5 * PERFECT

    def remap(v: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        found = v[:, 0] * BLOBS[classes]
        return found / found.flatten(1).amax(1)[:, None, None]

    faith = Faithfulness(steps=12)
    faith.add(blob_scorer, x, heat, CLASSES, BLACK, remap=remap)
    got = faith.per_image()
    size, drop = 8 / 1024, 0.5
    assert torch.allclose(got["map_size"], torch.full((3,), size))
    assert torch.allclose(got["average_drop"], torch.full((3,), 100 * drop))
    assert torch.allclose(got["coherency"], torch.ones(3))
    assert torch.allclose(got["adcc"], torch.full((3,), 3 / (1 + 1 / (1 - size) + 1 / (1 - drop))))
    # a remap that finds the next blob instead: coherency (1 - 1/63) / 2
    faith = Faithfulness(steps=12)
    faith.add(blob_scorer, x, heat, CLASSES, BLACK, remap=lambda v, c: BLOBS[(c + 1) % 3])
    coherent = (1 - 1 / 63) / 2
    assert torch.allclose(faith.per_image()["coherency"], torch.full((3,), coherent))
    want = 3 / (1 / coherent + 1 / (1 - size) + 1 / (1 - drop))
    assert faith.summary()["adcc"] == pytest.approx(want)


def test_per_image_values_average_to_the_summary():
    faith = Faithfulness(steps=6)
    g = torch.Generator().manual_seed(0)
    for n in (3, 2):  # two batches
        heat = torch.rand(n, 32, 32, generator=g)
        faith.add(blob_scorer, canvas(n), heat, CLASSES[:n], BLACK, remap=lambda v, c, h=heat: h.flip(2))
    per, summary = faith.per_image(), faith.summary()
    assert tuple(per) == tuple(summary) == KEYS
    assert all(v.shape == (5,) and v.dtype == torch.float32 for v in per.values())
    assert all(float(per[k].mean()) == pytest.approx(summary[k]) for k in KEYS)
    with pytest.raises(ValueError, match="remap"):  # adcc of some images only would not line up
        faith.add(blob_scorer, canvas(1), heat[:1], CLASSES[:1], BLACK)
    assert Faithfulness(steps=4).summary() == {} and Faithfulness(steps=4).per_image() == {}


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
    """The reference: every step of every image built from the rule (a Python loop) and scored, one pass each."""
    b, _, h, w = x.shape

    def p(v: torch.Tensor, i: int) -> torch.Tensor:
        return score(v[None])[0, classes[i]]

    def steps_of(i: int, replacement: torch.Tensor, shown_is_x: bool):
        order = heat[i].flatten().argsort(descending=True, stable=True).tolist()
        weight = (x[i] - replacement).abs().sum(0).flatten().double()
        total = float(weight.sum())
        curve, at = [], []
        for k in range(steps + 1):
            taken = 0
            while k < steps and taken < h * w and float(weight[order[:taken]].sum()) < k / steps * total:
                taken += 1
            taken = h * w if k == steps else taken
            mask = torch.zeros(h * w, dtype=torch.bool)
            mask[order[:taken]] = True
            mask = mask.view(1, h, w)
            image = torch.where(mask, x[i], replacement) if shown_is_x else torch.where(mask, replacement, x[i])
            curve.append(p(image, i))
            fraction = float(weight[order[:taken]].sum()) / total if total > 0 else k / steps
            at.append(0.0 if k == 0 else 1.0 if k == steps else fraction)
        return torch.stack(curve), torch.tensor(at)

    start = blur(x)
    deleted = [steps_of(i, black.expand_as(x[i]), False) for i in range(b)]
    inserted = [steps_of(i, start[i], True) for i in range(b)]
    y = torch.stack([p(x[i], i) for i in range(b)])
    o = torch.stack([p(black[0] + (x[i] - black[0]) * heat[i], i) for i in range(b)])
    return (
        torch.stack([d[0] for d in deleted]),
        torch.stack([d[0] for d in inserted]),
        torch.stack([d[1] for d in deleted]),
        torch.stack([d[1] for d in inserted]),
        y,
        o,
    )


def test_probe_scores_each_distinct_image_once_and_gives_every_step():
    x, truth = object_image()
    x = torch.cat([x, x.flip(3), torch.zeros_like(x), torch.zeros_like(x)])  # noise everywhere, then on black
    x[1:3, :, :, 4:] = 0.0
    heat = torch.cat([truth, truth.flip(2), torch.rand(2, 16, 16)])  # the last: nothing to delete
    classes, seen = torch.tensor([1, 0, 1, 1]), []

    def counting(v: torch.Tensor) -> torch.Tensor:
        seen.append(len(v))
        return object_scorer(v)

    for steps in (1, 4, 16):
        seen.clear()
        got = probe(counting, x, heat, classes, BLACK, steps)
        want = every_step_probe(object_scorer, x, heat, classes, BLACK, steps)
        assert all(torch.allclose(g, v, atol=1e-6) for g, v in zip(got, want, strict=True))
        assert sum(seen) < 3 * (2 * steps + 2)  # black canvases and the images themselves are scored once
        # x, the black canvas, o and the blurred start of the 2 inked images, their inner steps; the black images'
        # steps and o are all x (nothing to delete, blurred black is black)
        assert sum(seen) <= 4 + 1 + 2 + 2 + 2 * 2 * (steps - 1)
