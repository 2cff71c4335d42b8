"""OmegaConf resolvers used by the presets in conf/ (registered before Hydra composes the config)."""

from __future__ import annotations

from omegaconf import OmegaConf


def paper_warmup(depth: int) -> int:
    """He et al. warm ResNet-110 up at lr 0.01 for about 400 iterations; shallower nets need none."""
    return 400 if int(depth) >= 110 else 0


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cnnlab.paper_warmup"):
        OmegaConf.register_new_resolver("cnnlab.paper_warmup", paper_warmup)
