"""A multilayer perceptron on flattened images; no activation on the logits."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from cnnlab.errors import BadArgument

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Sequential):
    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (512, 256),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise BadArgument("activation", activation, f"one of {', '.join(ACTIVATIONS)}", "relu")
        if any(int(h) <= 0 for h in hidden):
            raise BadArgument("hidden", list(hidden), "positive layer sizes", [512, 256])
        if not 0.0 <= dropout < 1.0:
            raise BadArgument("dropout", dropout, "a probability in [0, 1)", 0.1)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(in_shape)
        for size in hidden:
            layers += [nn.Linear(width, int(size)), ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = int(size)
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
