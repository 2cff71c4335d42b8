"""cnnlab: a Hydra-composed experiment framework for convolutional-network labs. Entry point: `python -m cnnlab`."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra config groups: inside the package in a wheel (cnnlab/conf), the top-level conf/ in a checkout.
_PACKAGED = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[1] / "conf"
