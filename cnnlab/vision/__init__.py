"""Class maps and their evaluation: one interface (maps), cnnlab's methods, baselines, pytorch-grad-cam's zoo
(pgc), boxes from maps, and the one canvas evaluation that scores them all."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import BadArgument
from cnnlab.vision.baselines import BASELINES
from cnnlab.vision.maps import ClassMapMethod, ClassMaps, layer_names
from cnnlab.vision.methods import OWN
from cnnlab.vision.pgc import PREFIX, LibraryMethod

METHODS: dict[str, type[ClassMapMethod]] = {m.name: m for m in (*OWN, *BASELINES)}

__all__ = ["METHODS", "ClassMapMethod", "ClassMaps", "layer_names", "make_method"]


def make_method(
    name: str, model: nn.Module, layer: str | None = None, black: torch.Tensor | None = None
) -> ClassMapMethod:
    """The method called `name` (a key of METHODS, or pgc:<Name> for pytorch-grad-cam's) on `model` at `layer`;
    `black`: the normalized value of a black pixel (see ClassMapMethod)."""
    if name.startswith(PREFIX):
        return LibraryMethod(model, layer, name=name[len(PREFIX) :], black=black)
    if name not in METHODS:
        raise BadArgument("method", name, f"one of {', '.join(METHODS)}, or pgc:<Name> (pytorch-grad-cam)", "cam")
    return METHODS[name](model, layer, black=black)
