"""The report's section for an Optuna search (`python -m cnnlab -m hparams_search=<preset>`).

A sweep is a search when its jobs ran under hydra-optuna-sweeper (their .hydra/hydra.yaml names it as the
sweeper). The section lists the trials best first by the value the sweeper optimized (the task's monitor,
e.g. val_acc, in the study's direction), gives the best trial as a command line that runs it again, and draws
the value over trials with the best so far (figures/search.png). Job dir names are trial numbers
(cnnlab.sweeps.search.TrialDirs), so a study continued in its sweep dir is reported whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab.config.overrides import values
from cnnlab.records.figures import pyplot, save_figure
from cnnlab.report.runs import Run

FIGURE = "search.png"


@dataclass
class Trial:
    number: int
    run: Run
    value: float | None  # the monitored value; None when the trial failed or has not finished

    def setting(self, key: str) -> str:
        return self.run.overridden.get(key, "")


@dataclass
class Search:
    study: str
    monitor: str
    maximize: bool
    keys: list[str]  # the searched keys: the table's columns
    trials: list[Trial]  # best first; failed and unfinished ones last, by number

    @property
    def best(self) -> Trial | None:
        return self.trials[0] if self.trials and self.trials[0].value is not None else None


def sweeper_config(runs: Sequence[Run]) -> DictConfig | None:
    """hydra.sweeper of the first job that ran under the Optuna sweeper, or None (not a search)."""
    for run in runs:
        path = run.dir / ".hydra" / "hydra.yaml"
        if path.exists():
            sweeper = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper")
            return sweeper if sweeper is not None and "optuna" in str(sweeper.get("_target_", "")).lower() else None
    return None


def load_search(runs: Sequence[Run]) -> Search | None:
    """The trials of an Optuna search, best first; None when the runs are not one."""
    sweeper = sweeper_config(runs)
    if sweeper is None or not runs:
        return None
    monitor = str(runs[0].get("task.monitor") or "val_acc")
    maximize = str(sweeper.get("direction", "maximize")).lower().endswith("maximize")
    trials = [Trial(_number(run, i), run, _value(run, monitor)) for i, run in enumerate(runs)]
    done = sorted((t for t in trials if t.value is not None), key=lambda t: t.value, reverse=maximize)  # type: ignore[arg-type, return-value]
    rest = sorted((t for t in trials if t.value is None), key=lambda t: t.number)
    name = str(sweeper.get("study_name") or "optuna")
    return Search(name, monitor, maximize, searched_keys(sweeper, runs), done + rest)


def _number(run: Run, index: int) -> int:
    return int(run.dir.name) if run.dir.name.isdigit() else index


def _value(run: Run, monitor: str) -> float | None:
    value = (run.metrics or {}).get(monitor)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def searched_keys(sweeper: DictConfig, runs: Sequence[Run]) -> list[str]:
    """The sweeper's searched params (interval, choice, range), then any other key whose value varies."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.to_container(sweeper.get("params") or {})
    lines = [f"{k}={v}" for k, v in params.items()]  # type: ignore[union-attr]
    keys = [o.get_key_element() for o in OverridesParser.create().parse_overrides(lines) if o.is_sweep_override()]
    seen: dict[str, set[str]] = {}
    for run in runs:
        for key, value in values(run.overrides).items():
            seen.setdefault(key, set()).add(value)
    return keys + [k for k, v in seen.items() if len(v) > 1 and k not in keys]


def command(trial: Trial) -> str:
    """The command that runs this trial again as a single run: its overrides without the search preset."""
    overrides = [o for o in trial.run.overrides if not o.startswith(("hparams_search=", "hydra."))]
    return " ".join(["python -m cnnlab", *(_quoted(o) for o in overrides)])


def _quoted(override: str) -> str:
    return f"'{override}'" if any(c in override for c in " []{}()*?$,'\"") else override


def markdown(search: Search, figure: Path | None, root: Path) -> str:
    goal = "highest" if search.maximize else "lowest"
    completed = sum(t.value is not None for t in search.trials)
    lines = [
        f"## Search: {search.study}",
        "",
        f"Optuna, {len(search.trials)} trials ({completed} completed), best first by {search.monitor} ({goal} first).",
        "",
    ]
    if search.best is not None:
        best = search.best
        lines += [f"Best: trial {best.number}, {search.monitor} {best.value:.4f}. Run it again:", ""]
        lines += ["```bash", command(best), "```", ""]
    headers = ["trial", search.monitor, "test_acc", *search.keys, "status"]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cells(t, search.keys)) + " |" for t in search.trials]
    if figure is not None:
        lines += ["", f"![{search.monitor} over trials]({figure.relative_to(root).as_posix()})"]
    return "\n".join(lines) + "\n"


def _cells(trial: Trial, keys: Sequence[str]) -> list[str]:
    test = (trial.run.metrics or {}).get("test_acc")
    value = "" if trial.value is None else f"{trial.value:.4f}"
    status = trial.run.status + (f": {trial.run.reason}" if trial.run.reason else "")
    return [str(trial.number), value, "" if test is None else f"{test:.4f}", *(trial.setting(k) for k in keys), status]


def plot(search: Search, path: Path) -> Path | None:
    """The monitored value of each completed trial, in trial order, and the best so far."""
    done = sorted((t for t in search.trials if t.value is not None), key=lambda t: t.number)
    if not done:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    numbers, values = [t.number for t in done], [t.value for t in done]
    pick = max if search.maximize else min
    best = [pick(values[: i + 1]) for i in range(len(values))]  # type: ignore[type-var]
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, best, where="post", label="best so far")
    ax.set(xlabel="trial", ylabel=search.monitor, title=f"{search.study}: {search.monitor} over trials")
    ax.legend()
    return save_figure(fig, path)


def write_search(root: Path, runs: Sequence[Run], figures: bool = True) -> list[Path]:
    """For an Optuna search: append its section to results.md, print it; returns the figure written, if any."""
    search = load_search(runs)
    if search is None:
        return []
    figure = plot(search, root / "figures" / FIGURE) if figures else None
    text = markdown(search, figure, root)
    with open(root / "results.md", "a") as f:
        f.write("\n" + text)
    print_search(search)
    return [figure] if figure is not None else []


def print_search(search: Search) -> None:
    print(f"search {search.study}: {len(search.trials)} trials, best first by {search.monitor}")
    for trial in search.trials[:10]:
        value = trial.run.status if trial.value is None else f"{trial.value:.4f}"
        print(f"  trial {trial.number:>3}  {value:>8}  " + " ".join(f"{k}={trial.setting(k)}" for k in search.keys))
    if search.best is not None:
        print(f"best: trial {search.best.number} ({search.monitor} {search.best.value:.4f}): {command(search.best)}")
