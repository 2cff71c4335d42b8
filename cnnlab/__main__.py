"""`python -m cnnlab <overrides>` and the `cnnlab` console script: the Hydra entrypoint.

Hydra's own errors (a wrong type, an unknown key or group option) reach `main` and become cnnlab's one-line
message with exit code 2, like every other config error; HYDRA_FULL_ERROR=1 shows them in full.
"""

from __future__ import annotations

import os
import sys
import traceback

import hydra
from omegaconf import DictConfig

from cnnlab import CONF_DIR
from cnnlab.config import register
from cnnlab.config_errors import explain, renamed
from cnnlab.errors import UserError

register()


# An absolute path: the `cnnlab` console script imports this module as a package, where a relative one fails.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> float | None:
    from cnnlab.run import main_job

    return main_job(cfg)


def main() -> None:
    commands = {"report": "report", "sweep": "sweep", "resume": "sweep_resume"}  # cnnlab resume <sweep dir>
    if len(sys.argv) > 1 and sys.argv[1] in commands:  # cnnlab report <dir>, cnnlab sweep <overrides>
        import importlib

        importlib.import_module(f"cnnlab.{commands[sys.argv[1]]}").main(sys.argv[2:])
        return
    sys.argv[1:] = [rename_deprecated(a) for a in sys.argv[1:]]
    full_errors = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing, so we can say it in one line
    try:
        app()
    except Exception as e:
        if full_errors:
            raise
        fail(e)


def rename_deprecated(arg: str) -> str:
    new = renamed(arg)
    if new is None:
        return arg
    print(
        f"cnnlab: warning: {arg.split('=')[0].lstrip('+~')} is now {new.split('=')[0].lstrip('+~')} "
        "(the old name works until cnnlab 0.3)",
        file=sys.stderr,
    )
    return new


def fail(error: Exception) -> None:
    """Print an error Hydra raised before or around the job as one line; a bug keeps its traceback."""
    from hydra.errors import CompactHydraException, HydraException
    from omegaconf.errors import OmegaConfBaseException

    mapped = explain(error, [a for a in sys.argv[1:] if not a.startswith("-")])
    if mapped is not None:
        print(f"cnnlab: error: {mapped}", file=sys.stderr)
        sys.exit(2)
    if isinstance(error, UserError):
        print(f"cnnlab: error: {error}", file=sys.stderr)
        sys.exit(2)
    if isinstance(error, ValueError) and any(f.name == "best_trial" for f in traceback.extract_tb(error.__traceback__)):
        print("cnnlab: error: no trial of the search completed: the summary below and each trial's status.json "
              "say why", file=sys.stderr)  # fmt: skip
        sys.exit(1)
    if isinstance(error, (CompactHydraException, HydraException, OmegaConfBaseException)):
        text = " ".join(str(error).split())  # one line
        cause = error.__cause__
        if isinstance(cause, OmegaConfBaseException):
            text += f" ({' '.join(str(cause).split()[:40])})"
        print(f"cnnlab: error: {text}", file=sys.stderr)
        sys.exit(2 if not isinstance(error, CompactHydraException) or "job" not in type(error).__name__.lower() else 1)
    raise error


if __name__ == "__main__":
    main()
