"""Fixtures shared by several test modules; plain helpers live in tests/helpers.py (no test module imports
another, nor this file: pytest finds these fixtures by name)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.helpers")  # its assert_* helpers report like asserts in a test

from tests.helpers import CANVAS_CLASSIFIER, trained_checkpoint, write_cifar10, write_mnist  # noqa: E402


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "mnist")


@pytest.fixture
def mnist_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_checkpoint(tmp_path_factory, "mnist")


@pytest.fixture(scope="session")
def canvas_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CANVAS_CLASSIFIER trained on the bundled MNIST sample (300 steps of 64: under a minute on one CPU thread)."""
    return trained_checkpoint(tmp_path_factory, "canvas", recipe=CANVAS_CLASSIFIER)


@pytest.fixture
def cifar_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_cifar10(tmp_path_factory.getbasetemp() / "cifar")
    return trained_checkpoint(
        tmp_path_factory, "cifar", "dataset=cifar10", f"dataset.root={root}", "dataset.val_size=50"
    )
