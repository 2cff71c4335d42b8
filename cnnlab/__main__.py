"""`python -m cnnlab <overrides>` and the `cnnlab` console script: the Hydra entrypoint."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnnlab import CONF_DIR
from cnnlab.errors import UserError
from cnnlab.resolvers import register_resolvers

register_resolvers()


# An absolute path: the `cnnlab` console script imports this module as a package, where a relative one fails.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cnnlab.run import run
    from cnnlab.training.stop import Interrupted

    try:
        return run(cfg)
    except Interrupted as e:  # SIGTERM or Ctrl-C: a checkpoint is written; say how to continue
        print(f"cnnlab: {e}", file=sys.stderr)
        if e.resume_command:
            print(f"cnnlab: resume with: {e.resume_command}", file=sys.stderr)
        sys.exit(e.exit_code)
    except UserError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records this job as failed and goes on
        from cnnlab.callbacks import write_status  # exiting here skips Hydra's on_job_end

        write_status(Path(HydraConfig.get().runtime.output_dir), "failed", list(HydraConfig.get().overrides.task), e)
        print(f"cnnlab: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("report", "sweep"):  # cnnlab report <dir>, cnnlab sweep <overrides>
        import importlib

        importlib.import_module(f"cnnlab.{sys.argv[1]}").main(sys.argv[2:])
        return
    app()


if __name__ == "__main__":
    main()
