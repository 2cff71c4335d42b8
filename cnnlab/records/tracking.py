"""Experiment tracking: W&B (offline by default) or nothing. wandb is imported only when used (slow import).

The W&B run lives inside the Hydra run dir, carries the resolved config, and is always finished by
cnnlab.app.run, also when the task raises, so the jobs of a multirun never share a live run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnnlab.errors import BadArgument, CheckpointError


class NullLogger:
    """Tracks nothing; the run dir still gets metrics.json, history.jsonl, checkpoints and figures."""

    run_id: str | None = None

    def start(
        self,
        config: dict[str, Any],
        run_dir: Path,
        name: str,
        group: str | None = None,
        resume_id: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        pass

    def watch(self, model: Any) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def images(self, paths: dict[str, Path], step: int | None = None) -> None:
        pass

    def checkpoint(self, path: Path, aliases: list[str]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


# W&B's folders for artifact staging and its cache: in the run dir (wandb sync uploads the staged files).
RUN_DIR_ENV = {"WANDB_DATA_DIR": "data", "WANDB_CACHE_DIR": "cache", "WANDB_ARTIFACT_DIR": "artifacts"}


class WandbLogger(NullLogger):
    MODES = ("offline", "online", "disabled")

    def __init__(
        self,
        mode: str = "offline",
        project: str = "cnnlab",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        name: str | None = None,
        watch: dict[str, Any] | None = None,
        log_checkpoints: bool = True,
    ) -> None:
        if mode not in self.MODES:
            raise BadArgument("mode", mode, "offline, online or disabled", "offline")
        self.mode, self.project, self.entity, self.group = mode, project, entity, group
        self.tags, self.name = list(tags or []), name
        self.watch_cfg = dict(watch or {})
        self.log_checkpoints = log_checkpoints
        self.run = None

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        return self.run.id if self.run is not None else None

    def start(
        self,
        config: dict[str, Any],
        run_dir: Path,
        name: str,
        group: str | None = None,
        resume_id: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        import wandb

        self.outside = {key: os.environ.get(key) for key in (*RUN_DIR_ENV, "WANDB_SILENT")}  # given back at finish
        os.environ.setdefault("WANDB_SILENT", "true")
        for key, sub in RUN_DIR_ENV.items():  # W&B's staging copies and cache live in the run dir, not in $HOME
            os.environ[key] = str(run_dir / "wandb" / sub)
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group or group,
            tags=[*self.tags, *(tags or [])],
            name=self.name or name,
            config=config,
            dir=str(run_dir),
            mode=self.mode,
            id=resume_id,
            resume="allow" if resume_id else None,
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def watch(self, model: Any) -> None:
        if self.run is not None and self.watch_cfg.get("log"):
            self.run.watch(model, log=self.watch_cfg["log"], log_freq=int(self.watch_cfg.get("freq", 100)))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def images(self, paths: dict[str, Path], step: int | None = None) -> None:
        if self.run is not None:
            import wandb

            self.run.log({k: wandb.Image(str(p)) for k, p in paths.items()}, step=step)

    def checkpoint(self, path: Path, aliases: list[str]) -> None:
        if self.run is not None and self.log_checkpoints:
            import wandb

            artifact = wandb.Artifact(f"model-{self.run.id}", type="model")
            artifact.add_file(str(path), name="model.pt", skip_cache=True)  # staged (a snapshot) in the run dir
            self.run.log_artifact(artifact, aliases=aliases)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
        for key, value in getattr(self, "outside", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def fetch_artifact(reference: str, download_root: Path) -> Path:
    """Download `wandb:<entity>/<project>/<artifact>:<alias>` and return the checkpoint file in it."""
    spec = reference.removeprefix("wandb:")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        raise CheckpointError(
            f"checkpoint={reference} is a W&B artifact, but WANDB_MODE={os.environ['WANDB_MODE']}: downloading "
            "needs the W&B server. Unset WANDB_MODE and log in, or pass a local checkpoint=<path>.pt."
        )
    import wandb

    try:
        artifact = wandb.Api().artifact(spec, type="model")
        folder = Path(artifact.download(root=str(download_root)))
    except Exception as e:  # wandb raises many types: network, auth, not found
        raise CheckpointError(
            f"could not fetch W&B artifact {spec!r} ({type(e).__name__}: {e}). It needs network access and a "
            "W&B login (`wandb login`); use the form wandb:<entity>/<project>/<artifact>:<alias>."
        ) from e
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise CheckpointError(f"W&B artifact {spec!r} holds no .pt checkpoint")
    return files[0]
