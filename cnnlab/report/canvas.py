"""The localization and class-map benchmark in `cnnlab report`: task=localize and task=cam runs.

One table, method x canvas kind x metric, and per canvas kind one figure with every method's map and boxes on
the same canvases (each run saves its first canvases' maps in maps.pt, cnnlab.tasks.cam). A canvas kind is read
from task.canvas: single (1 digit, no clutter), cluttered, N digits; with task.source=test, the test images of
the model's dataset. A method whose maps survive re-initializing every weight (vision.sanity) is flagged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.records import figures

TASKS = ("localize", "cam")
METRICS = (
    "cls_acc",
    "loc_acc",
    "mean_iou",
    "center_err_px",
    "pointing_acc",
    "box_precision",
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "increase_in_confidence",
    "sanity_rank_corr",
)
SHORT = {"deletion_auc": "del_auc", "insertion_auc": "ins_auc", "increase_in_confidence": "inc_conf"}
SHORT |= {"average_drop": "avg_drop", "sanity_rank_corr": "sanity_corr"}


@dataclass
class CanvasRun:
    dir: Path
    config: DictConfig
    metrics: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return OmegaConf.select(self.config, key, default=default, throw_on_resolution_failure=False)

    @property
    def method(self) -> str:
        """The method, with its layer and box threshold where the run set them."""
        layer, threshold = self.get("task.layer"), self.get("task.threshold")
        name = str(self.get("task.method", self.get("task.name")))
        return name + (f" @{layer}" if layer else "") + (f" t={threshold}" if threshold is not None else "")

    @property
    def kind(self) -> str:
        return canvas_kind(self.config)


def canvas_kind(config: DictConfig) -> str:
    """single, cluttered, 3 digits, 3 digits cluttered; `<dataset> test` for task.source=test."""
    task = config.get("task", {})
    if task.get("source", "canvas") != "canvas":
        return f"{OmegaConf.select(config, 'dataset.name', default='dataset')} test"
    canvas = task.get("canvas", {})
    digits, clutter = int(canvas.get("digits", 1)), int(canvas.get("clutter", 0))
    name = "single" if digits == 1 else f"{digits} digits"
    return f"{name} cluttered" if clutter and digits > 1 else "cluttered" if clutter else name


def load_canvas_runs(root: Path) -> list[CanvasRun]:
    """The completed localize and cam runs under root: a dir with metrics.json, whose config is .hydra/config.yaml
    or, for runs without one (in-process, W&B agents), the flat task.* settings of metrics.json."""
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        config = run_config(path.parent, metrics)
        if OmegaConf.select(config, "task.name", default=None) not in TASKS:
            continue
        if metrics.get("status", "completed") == "completed" and "cls_acc" in metrics:
            runs.append(CanvasRun(path.parent, config, metrics))
    return runs


def run_config(job: Path, metrics: dict[str, Any]) -> DictConfig:
    hydra = job / ".hydra" / "config.yaml"
    if hydra.exists():
        return OmegaConf.load(hydra)  # type: ignore[return-value]
    config = OmegaConf.create({"dataset": {"name": metrics.get("dataset")}, "seed": metrics.get("seed")})
    for key, value in metrics.items():
        if key.startswith("task."):
            OmegaConf.update(config, key, value, force_add=True)
    return config


def kind_order(kind: str) -> tuple[int, str]:
    return (["single", "cluttered"].index(kind) if kind in ("single", "cluttered") else 2, kind)


def cell(run: CanvasRun, key: str) -> str:
    value = run.metrics.get(key)
    if value is None:
        return "-"
    text = f"{value:.2f}" if key in ("center_err_px", "average_drop", "increase_in_confidence") else f"{value:.3f}"
    return f"**{text} fails**" if key == "sanity_rank_corr" and run.metrics.get("sanity_pass") is False else text


def canvas_markdown(runs: list[CanvasRun]) -> str:
    """The benchmark table (markdown), then the methods that fail the sanity check."""
    runs = sorted(runs, key=lambda r: (kind_order(r.kind), r.method))
    keys = [k for k in METRICS if any(k in r.metrics for r in runs)]
    head = ["canvases", "method", *(SHORT.get(k, k) for k in keys)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([r.kind, r.method, *(cell(r, k) for k in keys)]) + " |" for r in runs]
    text = "## Localization and class maps\n\n" + "\n".join(lines) + "\n"
    text += "\nlower is better: center_err_px, del_auc (deletion AUC), avg_drop; higher: the others but sanity_corr\n"
    failed = sorted({r.method for r in runs if r.metrics.get("sanity_pass") is False})
    if failed:
        text += (
            f"\n> sanity: {', '.join(failed)}: the maps keep their rank order (|rank corr| >= 0.5) with every "
            "weight re-initialized (Adebayo et al. 2018): they do not explain the model.\n"
        )
    return text


def draw_canvas_figures(root: Path, runs: list[CanvasRun], out: Path) -> list[Path]:
    """Per canvas kind (and seed): one row per method, its maps and boxes on the same first canvases."""
    groups: dict[tuple[str, Any], list[CanvasRun]] = {}
    for run in sorted(runs, key=lambda r: r.method):
        if (run.dir / "maps.pt").exists():
            groups.setdefault((run.kind, run.get("task.canvas.seed", run.get("seed"))), []).append(run)
    paths = []
    for (kind, seed), group in sorted(groups.items(), key=lambda g: kind_order(g[0][0])):
        saved = [torch.load(r.dir / "maps.pt", weights_only=True) for r in group]
        n = min(len(s["images"]) for s in saved)
        if n == 0:
            continue
        n = max(k for k in (1, 2, 4, 8) if k <= n)  # a divisor of the grid's 8 columns: methods never share a row
        slug = kind.replace(" ", "-") + (f"-seed{seed}" if len({k for k, _ in groups}) < len(groups) else "")
        paths.append(method_grid(group, saved, n, out / f"canvas-{slug}.png", f"{kind} (seed {seed})"))
    return paths


def method_grid(group: list[CanvasRun], saved: list[dict], n: int, path: Path, title: str) -> Path:
    """Rows: methods; columns: the same n canvases (n = 1, 2, 4 or 8: a method never spans two rows)."""
    images = torch.cat([s["images"][:n] for s in saved])
    heat = torch.cat([s["overlays"][:n].float() for s in saved])
    found = [_Boxes(*b) for s in saved for b in s["found"][:n]]
    truth = [b for s in saved for b in s["truth"][:n]] if all(s["truth"] is not None for s in saved) else None
    captions = [run.method for run in group for _ in range(n)]
    boxes = _Truth([b for b, _ in truth], [c for _, c in truth]) if truth else None
    return figures.box_grid(images, heat, boxes, found, path, f"{title}: green true, red predicted", captions)


@dataclass
class _Boxes:
    boxes: torch.Tensor
    labels: torch.Tensor


@dataclass
class _Truth:
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]


def write_canvas(root: Path, figures_on: bool = True) -> tuple[str, list[Path]]:
    """The markdown section and figures of the localize and cam runs under root ("" and [] when none)."""
    runs = load_canvas_runs(root)
    if not runs:
        return "", []
    paths = draw_canvas_figures(root, runs, root / "figures") if figures_on else []
    text = canvas_markdown(runs)
    text += "".join(f"\n![{p.stem}](figures/{p.name})\n" for p in paths)
    return text, paths


def report_canvas(root: Path, figures_on: bool = True, append: bool = False) -> bool:
    """Write the localize and cam runs' section into root/results.md (after the classify tables when `append`)
    and print it; False when there are none."""
    text, paths = write_canvas(root, figures_on)
    if not text:
        return False
    results = root / "results.md"
    before = results.read_text() + "\n" if append and results.exists() else f"# Results: {root.name}\n\n"
    results.write_text(before + text)
    print(text)
    print(f"wrote {results}" + "".join(f", {p}" for p in paths))
    return True
