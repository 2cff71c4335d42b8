"""cnnlab: a Hydra-composed experiment framework for convolutional-network labs.

From a shell: `cnnlab <overrides>` (or `python -m cnnlab`). From Python: `cnnlab.run([...])`, `cnnlab.multirun`,
`cnnlab.compose`, `cnnlab.load`, `cnnlab.explain`, `cnnlab.localize` (cnnlab.api, imported when first asked for, so that
`import cnnlab` stays light).
"""

from typing import Any

from cnnlab.version import __version__

API = ("run", "multirun", "compose", "load", "explain", "localize", "Result", "Loaded")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from cnnlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
