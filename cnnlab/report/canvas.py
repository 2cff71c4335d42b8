"""The localization and class-map benchmark in `cnnlab report`: task=localize and task=cam runs.

A run of several canvas kinds (task.kinds) counts as one run per kind. Per kind, the methods are ranked in one
table (cnnlab.report.ranking), with intervals and the best method's paired comparison against each other one on
the same canvases; per kind one figure shows every method's map and boxes on the same canvases (each run saves
its first canvases' maps in maps.pt, or maps-<kind>.pt). A kind is named by its canvases (single, clutter8,
3digits, cnnlab.data.canvas.kind_name); with task.source=test, the test images of the model's dataset.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.config.schema import MAP_BASELINES
from cnnlab.data.canvas import kind_name
from cnnlab.records import figures
from cnnlab.records.rundir import METRICS
from cnnlab.report.ranking import kind_order, ranked_markdown

TASKS = ("localize", "cam")


@dataclass
class CanvasRun:
    dir: Path
    config: DictConfig
    metrics: dict[str, Any]  # of this kind alone
    kind_of_run: str | None = None  # the kind's name in a run of several kinds
    units: dict[str, torch.Tensor] = field(default_factory=dict)  # per canvas: what the metrics sum (units.csv)

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
        return self.kind_of_run or canvas_kind(self.config)

    @property
    def maps_file(self) -> Path:
        return self.dir / ("maps.pt" if self.kind_of_run is None else f"maps-{self.kind_of_run}.pt")

    @property
    def baseline(self) -> bool:
        return self.method.split(" ")[0] in MAP_BASELINES

    @property
    def canvases(self) -> tuple[Any, ...]:
        """What makes two runs' canvases the same ones (paired comparisons need them)."""
        canvas = self.get("task.canvas", {}) or {}
        keys = ("seed", "size", "fragment", "split")
        return (self.kind, len(self.units.get("digits", ())), *(canvas.get(k) for k in keys), self.get("checkpoint"))


def canvas_kind(config: DictConfig) -> str:
    """single, clutter8, 3digits, 3digits-clutter4 (kind_name); `<dataset> test` for task.source=test."""
    task = config.get("task", {})
    if task.get("source", "canvas") != "canvas":
        return f"{OmegaConf.select(config, 'dataset.name', default='dataset')} test"
    canvas = task.get("canvas", {})
    return kind_name(int(canvas.get("digits", 1)), int(canvas.get("clutter", 0)))


def load_canvas_runs(root: Path) -> list[CanvasRun]:
    """The completed localize and cam runs under root: a dir with metrics.json, whose config is .hydra/config.yaml
    or, for runs without one (in-process, W&B agents), the flat task.* settings of metrics.json."""
    runs = []
    for path in sorted(root.rglob(METRICS)):
        metrics = json.loads(path.read_text())
        config = run_config(path.parent, metrics)
        if OmegaConf.select(config, "task.name", default=None) not in TASKS:
            continue
        if metrics.get("status", "completed") == "completed" and "cls_acc" in metrics:
            runs += per_kind(CanvasRun(path.parent, config, metrics))
    return runs


def per_kind(run: CanvasRun) -> list[CanvasRun]:
    """A run of one kind as it is, a run of several (metrics `<kind>/<key>`) as one run per kind; each with its
    canvases' units from units.csv where the run wrote one."""
    units = read_units(run.dir / "units.csv")
    kinds = run.metrics.get("kinds")
    if not kinds:
        return [CanvasRun(run.dir, run.config, run.metrics, None, next(iter(units.values()), {}))]
    out = []
    for kind in kinds:
        mine = {k.split("/", 1)[1]: v for k, v in run.metrics.items() if k.startswith(f"{kind}/")}
        shared = {k: v for k, v in run.metrics.items() if k.startswith("sanity")}  # on the first kind's canvases
        out.append(CanvasRun(run.dir, run.config, {**shared, **mine}, kind, units.get(kind, {})))
    return out


def read_units(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """units.csv (cnnlab.tasks.cam.write_units) -> kind -> column -> per canvas values (NaN where blank)."""
    if not path.exists():
        return {}
    rows: dict[str, list[dict[str, str]]] = {}
    with open(path, newline="") as lines:
        for row in csv.DictReader(lines):
            rows.setdefault(row.pop("kind"), []).append(row)
    out = {}
    for kind, kept in rows.items():
        keys = [k for k in kept[0] if k != "unit"]
        out[kind] = {
            k: torch.tensor([float(r[k]) if r[k] else float("nan") for r in kept], dtype=torch.float64) for k in keys
        }
    return out


def run_config(job: Path, metrics: dict[str, Any]) -> DictConfig:
    hydra = job / ".hydra" / "config.yaml"
    if hydra.exists():
        return OmegaConf.load(hydra)  # type: ignore[return-value]
    config = OmegaConf.create({"dataset": {"name": metrics.get("dataset")}, "seed": metrics.get("seed")})
    for key, value in metrics.items():
        if key.startswith("task."):
            OmegaConf.update(config, key, value, force_add=True)
    return config


def draw_canvas_figures(root: Path, runs: list[CanvasRun], out: Path) -> list[Path]:
    """Per canvas kind (and seed): one row per method, its maps and boxes on the same first canvases."""
    groups: dict[tuple[str, Any], list[CanvasRun]] = {}
    for run in sorted(runs, key=lambda r: r.method):
        if run.maps_file.exists():
            groups.setdefault((run.kind, run.get("task.canvas.seed", run.get("seed"))), []).append(run)
    paths = []
    for (kind, seed), group in sorted(groups.items(), key=lambda g: kind_order(g[0][0])):
        saved = [torch.load(r.maps_file, weights_only=True) for r in group]
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
    text = ranked_markdown(runs)
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
