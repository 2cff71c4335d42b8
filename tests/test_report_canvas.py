"""`cnnlab report` on localize and cam runs: one table method x canvas kind x metric, sanity flags, one figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cnnlab.report.canvas import canvas_kind, load_canvas_runs, report_canvas, write_canvas
from tests.helpers import run_app


def fake_run(path: Path, method: str, digits: int = 1, clutter: int = 0, **metrics: object) -> Path:
    (path / ".hydra").mkdir(parents=True)
    task = {"name": "cam", "method": method, "layer": None, "canvas": {"digits": digits, "clutter": clutter}}
    OmegaConf.save(OmegaConf.create({"task": task, "seed": 0}), path / ".hydra" / "config.yaml")
    (path / ".hydra" / "overrides.yaml").write_text(f"- task=cam\n- task.method={method}\n")
    base = {"status": "completed", "cls_acc": 0.9, "loc_acc": 0.8, "deletion_auc": 0.1, "sanity_rank_corr": 0.1}
    (path / "metrics.json").write_text(json.dumps({**base, "sanity_pass": True, **metrics}))
    return path


def test_canvas_kinds_are_named_from_the_canvas_settings():
    def kind(**task: object) -> str:
        return canvas_kind(OmegaConf.create({"task": task, "dataset": {"name": "cifar10"}}))

    assert kind(canvas={"digits": 1, "clutter": 0}) == "single"
    assert kind(canvas={"digits": 1, "clutter": 8}) == "clutter8"
    assert kind(canvas={"digits": 3, "clutter": 0}) == "3digits"
    assert kind(canvas={"digits": 3, "clutter": 4}) == "3digits-clutter4"
    assert kind(source="test", canvas={"digits": 1}) == "cifar10 test"


def test_the_table_has_every_method_and_kind_and_flags_failed_sanity(tmp_path):
    fake_run(tmp_path / "0", "grad-cam", loc_acc=0.82)
    fake_run(tmp_path / "1", "ink", sanity_rank_corr=1.0, sanity_pass=False)
    fake_run(tmp_path / "2", "grad-cam", clutter=8, loc_acc=0.75)
    fake_run(tmp_path / "3", "cam", digits=3)
    (tmp_path / "4" / ".hydra").mkdir(parents=True)  # a classify run: not this section's
    OmegaConf.save(OmegaConf.create({"task": {"name": "classify"}}), tmp_path / "4" / ".hydra" / "config.yaml")
    (tmp_path / "4" / "metrics.json").write_text(json.dumps({"status": "completed", "test_acc": 0.9, "cls_acc": 1}))
    assert len(load_canvas_runs(tmp_path)) == 4
    text, paths = write_canvas(tmp_path)
    sections = {part.split("\n")[0].split(" (")[0]: part for part in text.split("### ")[1:]}
    assert list(sections) == ["single", "clutter8", "3digits"]
    rows = {kind: [r for r in part.splitlines() if r.startswith("| ") and "method" not in r] for kind, part in
            sections.items()}  # fmt: skip
    assert [r.split(" | ")[0] for r in rows["single"]] == ["| grad-cam", "| ink (baseline)"]  # baselines marked
    assert "0.820" in rows["single"][0] and "0.750" in rows["clutter8"][0] and "del_auc" in text
    assert (
        "**1.000 fails**" in rows["single"][1]
        and "> sanity: ink:" in text
        and "grad-cam" not in text.split("> sanity")[1]
    )
    assert paths == []  # fake runs saved no maps: no figure


def test_report_with_canvas_runs_only_writes_results_md(tmp_path):
    fake_run(tmp_path / "0", "center", sanity_rank_corr=1.0, sanity_pass=False)
    assert report_canvas(tmp_path, figures_on=False)
    assert "| center (baseline) |" in (tmp_path / "results.md").read_text()
    assert not report_canvas(tmp_path / "0" / ".hydra")  # no runs there


@pytest.mark.slow
def test_two_real_cam_runs_make_one_table_and_one_figure(tmp_path, mnist_checkpoint):
    small = ["task.canvas.count=4", "task.canvas.size=64", "task.figure_count=3", "task.faithfulness_count=2"]
    for i, method in enumerate(["grad-cam", "ink"]):
        run_app(tmp_path / str(i), "task=cam", f"checkpoint={mnist_checkpoint}", f"task.method={method}", *small)
    text, paths = write_canvas(tmp_path)
    assert "| grad-cam |" in text and "| ink (baseline) |" in text and "> sanity: ink" in text
    assert [p.name for p in paths] == ["canvas-single.png"] and paths[0].read_bytes()[:4] == b"\x89PNG"


def test_cnnlab_report_reads_localize_and_cam_runs(tmp_path, capsys):
    from cnnlab.report import report

    fake_run(tmp_path / "0", "grad-cam")
    fake_run(tmp_path / "1", "ink", sanity_rank_corr=1.0, sanity_pass=False)
    assert report(tmp_path, figures=False) == []  # no classify runs
    text = (tmp_path / "results.md").read_text()
    assert "### single" in text and "| grad-cam |" in text and "> sanity: ink" in text
    assert "| grad-cam |" in capsys.readouterr().out


def write_units(path: Path, kind: str, located: list[float], deletion: list[float]) -> None:
    rows = ["kind,unit,deletion_auc,digits,located"]
    rows += [f"{kind},{i},{d},1,{v}" for i, (v, d) in enumerate(zip(located, deletion, strict=True))]
    (path / "units.csv").write_text("\n".join(rows) + "\n")


def test_the_best_method_is_compared_canvas_by_canvas_with_each_other(tmp_path):
    n = 200
    good = fake_run(tmp_path / "0", "grad-cam", deletion_auc=0.05, loc_acc=0.9)
    write_units(good, "single", [1.0] * 180 + [0.0] * 20, [0.05] * n)
    worse = fake_run(tmp_path / "1", "ink", deletion_auc=0.25, loc_acc=0.9)
    write_units(worse, "single", [1.0] * 180 + [0.0] * 20, [0.25] * n)  # the same boxes, a worse deletion
    text, _ = write_canvas(tmp_path)
    ranked = [r.split(" | ")[0] for r in text.splitlines() if r.startswith(("| grad-cam |", "| ink (baseline) |"))]
    assert ranked == ["| grad-cam", "| ink (baseline)"]  # the lower deletion AUC first
    compared = next(r for r in text.splitlines() if r.startswith("| ink |"))
    assert "grad-cam minus each other method" in text
    cells = [c.strip() for c in compared.strip("|").split("|")]
    assert cells[1].startswith("-0.2000 [-0.2000, -0.2000]") and float(cells[2]) < 0.01  # deletion: a sure win
    assert cells[3].startswith("+0.0000") and float(cells[4]) == 1.0  # the same boxes: no difference claimed


def test_runs_on_other_canvases_are_not_compared(tmp_path):
    good = fake_run(tmp_path / "0", "grad-cam", deletion_auc=0.05)
    write_units(good, "single", [1.0] * 10, [0.05] * 10)
    other = fake_run(tmp_path / "1", "cam", deletion_auc=0.1)
    write_units(other, "single", [1.0] * 12, [0.1] * 12)  # 12 canvases, not the same 10
    text, _ = write_canvas(tmp_path)
    assert "minus each other method" not in text


def test_a_run_of_several_kinds_is_a_row_in_each_kind(tmp_path):
    run = fake_run(tmp_path / "0", "grad-cam")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics |= {"kinds": ["single", "3digits"], "single/loc_acc": 0.91, "3digits/loc_acc": 0.77}
    metrics |= {"single/cls_acc": 0.9, "3digits/cls_acc": 0.8}
    (run / "metrics.json").write_text(json.dumps(metrics))
    runs = load_canvas_runs(tmp_path)
    assert [(r.kind, r.metrics["loc_acc"]) for r in runs] == [("single", 0.91), ("3digits", 0.77)]
    assert all(r.metrics["sanity_pass"] is True for r in runs)  # the run's sanity check stays with each
