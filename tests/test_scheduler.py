import pytest

from cnnlab.training import scheduler


def test_multistep_in_epochs_and_steps():
    by_epoch = scheduler.multistep(steps_per_epoch=10, total_steps=100, milestones=[2, 5], unit="epoch")
    assert [by_epoch(s) for s in (0, 19, 20, 49, 50)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    by_step = scheduler.multistep(steps_per_epoch=10, total_steps=100, milestones=[32], unit="step")
    assert by_step(31) == 1 and by_step(32) == pytest.approx(0.1)


def test_warmup_linear_and_constant():
    lin = scheduler.constant(steps_per_epoch=1, total_steps=100, warmup_steps=10, warmup_factor=0.1)
    assert lin(0) == pytest.approx(0.1) and lin(5) == pytest.approx(0.55) and lin(10) == 1
    const = scheduler.multistep(
        steps_per_epoch=1,
        total_steps=2000,
        milestones=[1000],
        warmup_steps=400,
        warmup_factor=0.1,
        warmup_mode="constant",
        unit="step",
    )
    assert const(399) == pytest.approx(0.1) and const(400) == 1


def test_cosine_reaches_min_factor():
    cos = scheduler.cosine(steps_per_epoch=1, total_steps=100, min_factor=0.01)
    assert cos(0) == pytest.approx(1) and cos(50) == pytest.approx(0.505) and cos(100) == pytest.approx(0.01)


def test_bad_unit_is_rejected():
    with pytest.raises(ValueError, match="unit="):
        scheduler.multistep(steps_per_epoch=1, total_steps=1, unit="iteration")
