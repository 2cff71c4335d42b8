"""cnnlab: a Hydra-composed experiment framework for convolutional-network labs. Entry point: `python -m cnnlab`."""

__version__ = "0.1.0"
