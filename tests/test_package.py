"""cnnlab as an installed package: the wheel holds the config groups and runs from any directory; users add
config groups of their own; a run writes nothing outside its run dir."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["trainer.max_steps=20", "runtime.threads=1"]


def test_the_wheel_lists_every_package_and_the_config_groups() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cnnlab").rglob("__init__.py")}
    assert set(setuptools["packages"]) == packages | {"cnnlab.conf"}
    assert setuptools["package-dir"] == {"cnnlab.conf": "conf"}
    groups = {p.parent.name for p in (ROOT / "conf").glob("*/*.yaml")} - {"local"}
    assert groups and all((ROOT / "conf" / g).is_dir() for g in groups)  # "*/*.yaml" takes one level of groups
    assert not list((ROOT / "conf").glob("*/*/*.yaml")), "package-data takes conf/<group>/<option>.yaml only"


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, exe: list[str] | None = None):
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    command = [*(exe or [sys.executable, "-m", "cnnlab"]), *args]
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


def test_a_users_own_config_groups_from_their_search_path(tmp_path: Path) -> None:
    """conf of one's own: a model option and an experiment preset, found through hydra.searchpath."""
    mine = tmp_path / "my_conf"
    (mine / "model").mkdir(parents=True)
    (mine / "experiment").mkdir()
    (mine / "model" / "tiny_resnet.yaml").write_text(
        "defaults:\n  - /schema_model_resnet@_here_\n  - _self_\n"
        "depth: 8\nwidth: 4\nin_channels: ${dataset.shape.0}\n"
        "num_classes: ${cnnlab.outputs:${dataset.num_classes},${dataset.background}}\n"
    )
    (mine / "experiment" / "quick.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: tiny_resnet\n  - _self_\ntrainer:\n  max_steps: 3\n"
    )
    where = f"hydra.searchpath=[file://{mine}]"
    shown = run([where, "experiment=quick", "--cfg", "job"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "depth: 8" in shown.stdout and "width: 4" in shown.stdout and "max_steps: 3" in shown.stdout
    bad = run([where, "model=tiny_resnet", "model.depth=9", "hydra.run.dir=run"], cwd=tmp_path)
    assert bad.returncode == 2 and "model.depth=9 is not allowed" in bad.stderr  # its schema's ranges hold
    assert not (tmp_path / "run").exists()


def large_files(folder: Path, limit: int = 100_000, skip: Path | None = None) -> list[str]:
    return [
        f"{p} ({p.stat().st_size} B)"
        for p in folder.rglob("*")
        if p.is_file() and p.stat().st_size > limit and (skip is None or skip not in p.parents)
    ]


def test_a_default_run_writes_nothing_large_outside_its_run_dir(tmp_path: Path) -> None:
    """W&B (offline) stages its checkpoint artifacts and caches in the run dir, not under $HOME."""
    home, work, tmp = tmp_path / "home", tmp_path / "work", tmp_path / "tmp"
    for folder in (home, work, tmp):
        folder.mkdir()
    result = run([*QUICK, "hydra.run.dir=run"], cwd=work, env={"HOME": str(home), "TMPDIR": str(tmp)})
    assert result.returncode == 0, result.stderr[-2000:]
    staged = list((work / "run" / "wandb").rglob("*")) if (work / "run" / "wandb").is_dir() else []
    assert any(p.is_file() and p.stat().st_size > 100_000 for p in staged)  # the checkpoints W&B will upload
    assert large_files(home) == [] and large_files(tmp) == []
    assert large_files(work, skip=work / "run") == []


@pytest.mark.slow
@pytest.mark.ci
def test_the_wheel_installed_in_a_fresh_venv_runs_from_an_empty_dir(tmp_path: Path) -> None:
    """The acceptance of the package: build the wheel, install it (not editable) into a new venv that borrows
    this one's dependencies, and run the README's commands from an empty directory."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # the test venv's packages
    wheel = next(wheels.glob("cnnlab-*.whl"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run(["-c", "import cnnlab.config as c; print(c.CONF_DIR)"], cwd=empty, exe=[str(python)])
    assert where.stdout.strip().startswith(site), where.stdout  # the wheel's copy, not this checkout
    cnnlab = [str(venv / "bin" / "cnnlab")]
    main = run([*QUICK, "hydra.run.dir=run"], cwd=empty, exe=cnnlab)
    assert main.returncode == 0 and (empty / "run" / "metrics.json").is_file(), main.stderr[-2000:]
    assert run(["--help"], cwd=empty, exe=[str(python), "-m", "cnnlab"]).returncode == 0
    preset = run(["experiment=canvas_classifier", "--cfg", "job"], cwd=empty, exe=cnnlab)
    assert preset.returncode == 0 and "background: 0.25" in preset.stdout, preset.stderr[-2000:]
    sweep = run(["-m", *QUICK, "trainer.max_steps=3", "seed=0,1", "hydra.sweep.dir=sweep"], cwd=empty, exe=cnnlab)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    report = run(["report", "sweep"], cwd=empty, exe=cnnlab)
    assert report.returncode == 0 and (empty / "sweep" / "results.md").is_file(), report.stderr[-2000:]
    resumed = run(["resume", "sweep"], cwd=empty, exe=cnnlab)
    assert resumed.returncode == 0 and "2 completed (skipped)" in resumed.stderr, resumed.stderr[-2000:]
