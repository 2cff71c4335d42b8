"""The Hydra app: `cnnlab <arguments>` runs one job or, with -m, a multirun; Hydra's errors become one line.

The CLI (`cnnlab.__main__`) and `cnnlab resume` both call `launch` with their argument list: nothing here
reads or writes sys.argv. Hydra's own errors (a wrong type, an unknown key or group option) become cnnlab's
one-line message with exit code 2, like every other config error; HYDRA_FULL_ERROR=1 shows them in full.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from cnnlab.config import CONF_DIR
from cnnlab.config.messages import explain
from cnnlab.config.schema import register
from cnnlab.errors import Refused, UserError


def launch(arguments: Sequence[str]) -> None:
    """Run `cnnlab <arguments>` through Hydra (overrides, -m, --cfg job, --help ...); exit as the CLI does."""
    from hydra._internal.utils import _run_hydra, get_args_parser

    from cnnlab.app.run import main_job

    register()
    # `cnnlab -m ... 2>&1 | tee log` with tee gone (Ctrl-C in a terminal reaches both): the jobs go on
    sys.stdout, sys.stderr = SurvivesClosedPipe(sys.stdout), SurvivesClosedPipe(sys.stderr)
    parser = get_args_parser()
    args = parser.parse_args(list(arguments))
    full_errors = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing, so we can say it in one line
    try:
        _run_hydra(args=args, args_parser=parser, task_function=main_job, config_path=str(CONF_DIR),
                   config_name="config")  # fmt: skip
    except Refused as e:  # the Preflight's: before anything was written
        print(f"cnnlab: error: {e.error}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if full_errors:
            raise
        fail(e, [a for a in args.overrides if not a.startswith("-")])
    finally:
        if not full_errors:
            os.environ.pop("HYDRA_FULL_ERROR", None)


class SurvivesClosedPipe:
    """stdout that a reader going away (`| tee log` or `| head` ended) cannot kill: once the pipe is closed,
    what would be written goes nowhere, and a job mid-way finishes and records how it ended."""

    def __init__(self, stream: Any) -> None:
        self.stream = getattr(stream, "stream", stream)  # not wrapped twice (cnnlab.run twice in one process)

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self.stream = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self.stream = open(os.devnull, "w")  # noqa: SIM115

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def no_trial_completed(error: BaseException) -> bool:
    """Optuna's error when a search ends without one completed trial (its storages' `get_best_trial` says
    "No trials are completed yet."): the one Hydra-plugin message matched by its text."""
    return isinstance(error, ValueError) and str(error).startswith("No trials are completed yet")


def fail(error: Exception, overrides: list[str]) -> None:
    """Exit with an error Hydra raised before or around the job in one line; a bug keeps its traceback."""
    said = one_line(error, overrides)
    if said is None:
        raise error
    print(f"cnnlab: error: {said[0]}", file=sys.stderr)
    sys.exit(said[1])


def one_line(error: BaseException, overrides: list[str]) -> tuple[str, int] | None:
    """What the CLI says of an error and its exit code (2: the input, 1: the jobs), or None for a bug."""
    from hydra.errors import CompactHydraException, HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cnnlab.training.trainer import DivergenceError

    mapped = explain(error, overrides)
    if mapped is not None:
        return str(mapped), 2
    if isinstance(error, (UserError, DivergenceError)):
        return str(error), 2
    if no_trial_completed(error):
        return "no trial of the search completed: the summary below and each trial's status.json say why", 1
    if isinstance(error, (CompactHydraException, HydraException, OmegaConfBaseException)):
        text = " ".join(str(error).split())  # one line
        cause = error.__cause__
        if isinstance(cause, OmegaConfBaseException):
            text += f" ({' '.join(str(cause).split()[:40])})"
        return text, 2 if not isinstance(error, CompactHydraException) or "job" not in type(
            error
        ).__name__.lower() else 1
    return None
