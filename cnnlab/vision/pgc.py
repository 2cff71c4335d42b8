"""`pgc:<Name>`: the class-map methods of pytorch-grad-cam (the optional extra `cam`), behind cnnlab's interface.

The library is imported only when such a method is built. Its maps come per pixel (stride 1), min-max
normalized and resized to the input; one call per column of the classes asked for.
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cnnlab.errors import BadArgument
from cnnlab.vision.baselines import BASELINES
from cnnlab.vision.maps import ClassMapMethod, ClassMaps, class_matrix
from cnnlab.vision.methods import OWN

PREFIX = "pgc:"
INSTALL = 'pip install -e ".[cam]"'


def library(method: str) -> Any:
    """The pytorch_grad_cam module, or a BadArgument about `method` that says how to install it."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise BadArgument(
            "method", method, f"pytorch-grad-cam is not installed: pgc: methods need the `cam` extra ({INSTALL})", "cam"
        ) from None
    return pytorch_grad_cam


def library_methods(method: str = "pgc:GradCAM") -> dict[str, type]:
    """Name -> class of every CAM method pytorch-grad-cam exports."""
    pgc = library(method)
    from pytorch_grad_cam.base_cam import BaseCAM

    return {n: c for n, c in vars(pgc).items() if isinstance(c, type) and issubclass(c, BaseCAM) and c is not BaseCAM}


class LibraryMethod(ClassMapMethod):
    """pytorch-grad-cam's method `name` at `layer`; hooks are the library's, released when each call ends."""

    gradients = True  # most of the library's methods need them; the library turns them off where not

    def __init__(self, model: nn.Module, layer: str | None = None, *, name: str, **kwargs: Any) -> None:
        methods = library_methods(PREFIX + name)
        if name not in methods:
            theirs = ", ".join(PREFIX + n for n in sorted(methods))
            ours = ", ".join(m.name for m in (*OWN, *BASELINES))
            raise BadArgument(
                "method", PREFIX + name, f"pytorch-grad-cam's {theirs}; or cnnlab's {ours}", "pgc:GradCAM"
            )
        super().__init__(model, layer, **kwargs)  # `black` is unused: the library masks the normalized input
        self.name, self.library_class = PREFIX + name, methods[name]

    def __call__(self, x: Tensor, classes: Tensor | None = None) -> ClassMaps:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        classes = class_matrix(classes, len(x), self.num_classes, x.device)
        with torch.no_grad():
            logits = self.model(x)
        columns = []
        # some of the library's methods (ScoreCAM) draw a progress bar per image on stderr: hidden
        chatty = "tqdm" in vars(sys.modules[self.library_class.__module__])
        quiet = contextlib.redirect_stderr(io.StringIO()) if chatty else contextlib.nullcontext()
        with self.library_class(model=self.model, target_layers=[self.module]) as method, quiet:
            for column in classes.T.tolist():
                columns.append(method(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in column]))
        maps = torch.from_numpy(np.stack(columns, axis=1)).float().to(x.device)
        return ClassMaps(logits, maps, classes.long(), stride=1)
