"""Config: the schemas (each key's type, range and default, once), their checks, and the one-line messages."""

from pathlib import Path

# The YAML config groups: inside the package in a wheel (cnnlab/conf), the top-level conf/ in a checkout.
_PACKAGED = Path(__file__).resolve().parents[1] / "conf"
CONF_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2] / "conf"
