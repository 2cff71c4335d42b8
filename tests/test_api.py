"""The Python API (cnnlab.api): run and multirun as the CLI runs them, compose, load in eval mode, explain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab import api
from cnnlab.errors import UserError

QUIET = ["logger=none", "runtime.figures=false", "runtime.threads=1"]
TINY = ["model=resnet", "model.depth=8", "model.width=8", "trainer.max_steps=60", *QUIET]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> api.Result:
    out = tmp_path_factory.mktemp("api")
    return api.run([*TINY, f"paths.output_dir={out}", "trainer.precision=32"])


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """16 real test digits of the bundled sample, uint8 (B, 28, 28), and their labels."""
    with np.load(Path(cnnlab.__file__).parent / "assets" / "mnist_sample.npz") as arrays:
        return torch.from_numpy(arrays["test_x"][:16].copy()), torch.from_numpy(arrays["test_y"][:16].astype(np.int64))


def test_run_twice_in_one_process_gives_two_results(tmp_path: Path, trained: api.Result) -> None:
    again = api.run([*TINY, f"paths.output_dir={tmp_path}", "trainer.precision=32", "trainer.max_steps=5"])
    for result in (trained, again):
        assert result.status == "completed" and 0 <= result.metrics["test_acc"] <= 1
        assert result.metrics == json.loads((result.run_dir / "metrics.json").read_text())
        assert (result.run_dir / ".hydra" / "config.yaml").is_file()  # the CLI's run dir, as Hydra writes it
    assert again.run_dir != trained.run_dir and again.metrics["steps"] == 5


@pytest.mark.parametrize("bad", ["optimizer.lr=abc", "optimizer.lr=-1", "trainer.lr=0.1", "model=vgg"])
def test_a_bad_override_raises_the_clis_line_and_writes_nothing(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UserError) as e:
        api.run([bad, f"paths.output_dir={tmp_path}", *QUIET])
    assert isinstance(e.value, ValueError) and bad.split("=")[0].lstrip("+") in str(e.value)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_compose_gives_the_validated_config_without_running(tmp_path: Path) -> None:
    cfg = api.compose(["model=resnet", "model.depth=32", f"paths.output_dir={tmp_path}"])
    assert cfg.model.depth == 32 and "hydra" not in cfg
    with pytest.raises(UserError, match="model.depth=33 is not allowed"):
        api.compose(["model=resnet", "model.depth=33"])
    assert list(tmp_path.iterdir()) == []


def test_multirun_gives_a_result_per_job(tmp_path: Path) -> None:
    results = api.multirun([*TINY, "trainer.max_steps=3", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert [r.run_dir.name for r in results] == ["0", "1"]
    assert all(r.status == "completed" and "test_acc" in r.metrics for r in results)


def test_load_gives_an_eval_model_whose_logits_reproduce_test_acc(trained: api.Result, digits) -> None:
    images, labels = digits
    for source in (trained.run_dir, trained.run_dir / "checkpoints" / "best.pt"):
        loaded = api.load(source)
        assert loaded.model.training is False and loaded.path.name == "best.pt"
        assert loaded.classes == [str(c) for c in range(10)]
    logits = loaded.model(loaded.preprocess(images))
    assert logits.shape == (16, 10)
    floats = loaded.model(loaded.preprocess(images.float() / 255))
    torch.testing.assert_close(floats, logits)
    sample = np.load(Path(cnnlab.__file__).parent / "assets" / "mnist_sample.npz")
    x, y = torch.from_numpy(sample["test_x"]), torch.from_numpy(sample["test_y"].astype(np.int64))
    with torch.no_grad():
        acc = float((loaded.model(loaded.preprocess(x)).argmax(1) == y).float().mean())
    assert acc == pytest.approx(trained.metrics["test_acc"], abs=1e-3)


@pytest.mark.parametrize("method", ["cam", "grad-cam", "score-cam"])
def test_explain_gives_maps_and_leaves_the_model_as_it_was(trained: api.Result, digits, method: str) -> None:
    images, labels = digits
    loaded = api.load(trained.run_dir)
    loaded.model.train()  # a caller's model in train mode: explain must not move its batch-norm statistics
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    maps = api.explain(loaded, images, method=method, classes=labels)
    assert maps.shape == (16, 28, 28) and maps.min() >= 0 and maps.max() <= 1
    other = api.explain(loaded, images, method=method, classes=(labels + 1) % 10)
    assert not torch.allclose(maps, other)
    assert loaded.model.training is True
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in loaded.model.parameters())


def test_explain_takes_none_an_int_or_a_vector_of_classes(trained: api.Result, digits) -> None:
    images, _ = digits
    loaded = api.load(trained.run_dir)
    with torch.no_grad():
        predicted = loaded.model(loaded.preprocess(images)).argmax(1)
    torch.testing.assert_close(api.explain(loaded, images), api.explain(loaded, images, classes=predicted))
    torch.testing.assert_close(
        api.explain(loaded, images, classes=3), api.explain(loaded, images, classes=torch.full((16,), 3))
    )
    with pytest.raises(ValueError, match=r"an int or a \(16,\) tensor"):
        api.explain(loaded, images, classes=torch.zeros(16, 1, dtype=torch.long))


def test_class_maps_of_ones_own_png_files(tmp_path: Path, trained: api.Result, digits) -> None:
    """task=cam task.images=<folder>: overlays, and per file the class and probability the model gives them."""
    from PIL import Image

    images, _ = digits
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images[:10]):
        Image.fromarray(image.numpy()).save(folder / f"digit{i}.png")
    Image.fromarray(np.stack([images[0].numpy()] * 3, -1)).save(folder / "zz_rgb.png")  # converted to grey
    result = api.run(["task=cam", f"checkpoint={trained.run_dir}", f"task.images={folder}", *QUIET,
                      f"paths.output_dir={tmp_path / 'out'}", "runtime.figures=true"])  # fmt: skip
    rows = result.metrics["predictions"]
    assert [r["file"] for r in rows] == [*(f"digit{i}.png" for i in range(10)), "zz_rgb.png"]
    loaded = api.load(trained.run_dir)
    with torch.no_grad():
        probabilities = loaded.model(loaded.preprocess(images[:10])).softmax(1)
    assert [r["class"] for r in rows[:10]] == probabilities.argmax(1).tolist()
    assert rows[10]["class"] == rows[0]["class"]  # the same digit, as RGB
    assert [r["probability"] for r in rows[:10]] == pytest.approx(probabilities.max(1).values.tolist(), abs=1e-3)
    csv_lines = (result.run_dir / "predictions.csv").read_text().splitlines()
    assert csv_lines[0] == "file,class,name,probability" and len(csv_lines) == 12
    assert (result.run_dir / "figures" / "cam.png").is_file()


def test_a_sweep_with_a_failing_job_gives_every_result(tmp_path: Path) -> None:
    results = api.multirun([*TINY, "trainer.max_steps=3", "optimizer.lr=0.1,1e12", f"hydra.sweep.dir={tmp_path}"])
    assert [r.status for r in results] == ["completed", "diverged"]


def test_localize_finds_the_boxes_task_localize_finds(tmp_path: Path, trained: api.Result) -> None:
    from cnnlab.data.canvas import make_canvases
    from cnnlab.data.sources import load as load_data

    result = api.run(["task=localize", f"checkpoint={trained.run_dir}", "task.canvas.count=8", *QUIET,
                      "task.faithfulness=false", "task.sanity=false", f"paths.output_dir={tmp_path}"])  # fmt: skip
    saved = torch.load(result.run_dir / "maps.pt", weights_only=False)
    data = load_data("mnist_sample")
    canvases = make_canvases(data.test_x, data.test_y, 8, 128, 1, 0, 8, seed=0)
    assert torch.equal(canvases.images, saved["images"])  # the same canvases
    found = api.localize(api.load(trained.run_dir), canvases.images)
    assert len(found) == 8
    for mine, (boxes, labels) in zip(found, saved["found"], strict=True):
        assert torch.equal(mine["classes"], labels) and torch.allclose(mine["boxes"], boxes)
        assert mine["scores"].shape == labels.shape


def test_multirun_resumes_a_finished_sweep_as_the_cli_does(tmp_path: Path) -> None:
    base = [*TINY, "trainer.max_steps=3", "seed=0,1", f"paths.output_dir={tmp_path}"]
    first = api.multirun(base)
    assert all((r.run_dir.parent / "multirun.yaml").is_file() for r in first)  # a multirun, as the CLI's -m
    written = [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in first]
    again = api.multirun([*base, "runtime.resume=auto"])  # no sweep dir given: the newest sweep of this grid
    assert [r.run_dir for r in again] == [r.run_dir for r in first]
    assert [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in again] == written  # skipped, untouched


def test_a_run_leaves_the_callers_logging_and_environment_as_they_were(tmp_path: Path) -> None:
    import logging
    import os
    import sys

    root = logging.getLogger()
    handlers, stdout = list(root.handlers), sys.stdout
    environment = {k: os.environ.get(k) for k in ("WANDB_SILENT", "WANDB_DATA_DIR", "WANDB_CACHE_DIR")}
    api.run([*TINY, "trainer.max_steps=2", "logger=wandb", f"paths.output_dir={tmp_path}"])
    assert root.handlers == handlers and sys.stdout is stdout
    assert {k: os.environ.get(k) for k in environment} == environment
