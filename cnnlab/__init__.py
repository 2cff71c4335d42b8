"""cnnlab: a Hydra-composed experiment framework for convolutional-network labs. Entry point: `python -m cnnlab`."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra config tree beside the package (an editable install keeps it there).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
