"""`cnnlab` and `python -m cnnlab`: a run or a multirun (`cnnlab <overrides>`, `cnnlab -m ...`), or a subcommand:
`cnnlab report <dir>`, `cnnlab resume <sweep dir>`, `cnnlab sweep <overrides>` (a W&B sweep YAML)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = arguments[0] if arguments else None
    if command == "report":
        from cnnlab.report import main as subcommand
    elif command == "resume":
        from cnnlab.sweeps.resume import main as subcommand
    elif command == "sweep":
        from cnnlab.sweeps.wandb_yaml import main as subcommand
    else:
        from cnnlab.app.launch import launch

        launch(arguments)
        return
    subcommand(arguments[1:])


if __name__ == "__main__":
    main()
