"""The version of cnnlab: written here once (pyproject.toml reads it); run records and W&B carry it."""

__version__ = "0.1.0"
