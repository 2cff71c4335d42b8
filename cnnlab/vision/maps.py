"""One interface for class maps: a method takes a batch and returns the logits and the maps of the classes asked for.

A method hooks one layer of the model, chosen by name (`stem`, `stage2`, `stage3.1`, ...), for one forward pass;
the hook is removed when the pass is done, also on error. Subclasses supply only how the kept activations (and,
for gradient methods, their gradients) become maps: in the spirit of torch-cam's `torchcam/methods/core.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import BadArgument, CheckpointError

CELL_CENTERS = ("middle", "field")


@dataclass
class ClassMaps:
    """What a method returns for a batch of B images."""

    logits: torch.Tensor  # (B, K) the model's output
    maps: torch.Tensor  # (B, m, h, w): maps[b, j] is the map of class classes[b, j]
    classes: torch.Tensor  # (B, m) long
    stride: int  # input pixels per map cell (1: a map per pixel)

    def full(self, num_classes: int) -> torch.Tensor:
        """(B, K, h, w) with the computed maps at their classes and zeros elsewhere."""
        out = self.maps.new_zeros(self.maps.shape[0], num_classes, *self.maps.shape[2:])
        index = self.classes[:, :, None, None].expand_as(self.maps)
        return out.scatter(1, index, self.maps)


@dataclass
class Pass:
    """One forward pass: its input (with a graph for gradient methods), the logits, the hooked layer's output."""

    x: torch.Tensor
    logits: torch.Tensor
    activations: torch.Tensor | None


class ClassMapMethod:
    """Base of every method. `layer`: a module name of the model, None for the method's default.

    uses_layer: "any" (any named module), "last" (only the last convolutional maps: CAM, fully-conv) or
    "none" (baselines). scores: the maps are class scores on the logits' scale (fully-conv), so they are
    compared with those of an empty canvas; other maps are relevance, min-max normalized per image.
    """

    name: ClassVar[str] = ""
    uses_layer: ClassVar[str] = "any"
    gradients: ClassVar[bool] = False
    scores: ClassVar[bool] = False
    threshold: ClassVar[float] = 0.5  # its default box threshold: a fraction of the map's maximum (measured)

    def __init__(self, model: nn.Module, layer: str | None = None, *, black: torch.Tensor | None = None) -> None:
        """`black`: a black pixel as the model sees it, normalized, (C, 1, 1): what a method that hides parts
        of the input (score-cam) puts there, as faithfulness's deletion does. None: 0, the dataset's mean colour."""
        self.model = model
        self.black = black
        self.fc, last = gap_classifier(model)
        self.num_classes = self.fc.out_features
        if self.uses_layer == "none" and layer is not None:
            raise BadArgument("layer", layer, f"null: method {self.name} uses no layer", "null")
        if self.uses_layer == "last" and layer not in (None, last):
            raise BadArgument("layer", layer, f"null or {last}: {self.name} needs the maps the classifier pools", last)
        self.layer = None if self.uses_layer == "none" else (layer or last)
        self.module = None if self.layer is None else find_layer(model, self.layer)

    def __call__(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> ClassMaps:
        """Maps of `classes` ((B, m) or (B,) class indices; None: every class) for the (B, C, H, W) batch `x`."""
        return self.explain(self.forward(x)[0], classes)

    def forward(self, x: torch.Tensor, *others: ClassMapMethod) -> list[Pass]:
        """One forward pass of the model with this method's hook and those of `others` (a Pass each): the canvas
        evaluation takes the score maps and a method's maps from the same pass."""
        if self.gradients:  # the layer's output needs a graph even where the weights are frozen
            x = x.detach().requires_grad_()
        with torch.set_grad_enabled(self.gradients), ExitStack() as hooks:
            kept = [hooks.enter_context(method.hooked()) for method in (self, *others)]
            logits = self.model(x)
        return [Pass(x, logits, k[0] if k else None) for k in kept]

    def explain(self, run: Pass, classes: torch.Tensor | None = None) -> ClassMaps:
        """Maps of `classes` (None: every class) from a forward pass through this method's hook."""
        x = run.x
        classes = class_matrix(classes, len(x), self.num_classes, x.device)
        with torch.set_grad_enabled(self.gradients):
            maps = self.maps(x, run.logits, run.activations, classes)
        stride = 1 if run.activations is None else round(x.shape[-1] / run.activations.shape[-1])
        return ClassMaps(run.logits.detach(), maps.detach(), classes, stride)

    def maps(
        self, x: torch.Tensor, logits: torch.Tensor, activations: torch.Tensor | None, classes: torch.Tensor
    ) -> torch.Tensor:
        """(B, m, h, w) maps of `classes` from the layer's activations (B, C, h, w); subclasses say how."""
        raise NotImplementedError

    @contextmanager
    def hooked(self) -> Iterator[list[torch.Tensor]]:
        """Keep the layer's output while inside; the hook is gone on exit, however the block ends."""
        kept: list[torch.Tensor] = []
        if self.module is None:
            yield kept
            return

        def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            kept.append(output)
            # the network runs on with a copy: an in-place op further on (a ReLU(inplace=True)) cannot change
            # the kept tensor, and gradients still reach it through the copy
            return output.clone()

        handle = self.module.register_forward_hook(keep)
        try:
            yield kept
        finally:
            handle.remove()


def class_matrix(classes: torch.Tensor | None, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """The classes to map as (B, m) indices: every class for None, one per image for a (B,) tensor."""
    if classes is None:
        return torch.arange(num_classes, device=device).expand(batch, -1)
    classes = classes.to(device).long()
    classes = classes[:, None] if classes.dim() == 1 else classes
    if classes.dim() != 2 or len(classes) != batch:
        raise BadArgument("classes", tuple(classes.shape), f"class indices ({batch},) or ({batch}, m)", None)
    return classes


def gap_classifier(model: nn.Module) -> tuple[nn.Linear, str]:
    """The linear classifier after global average pooling and the name of the layer it pools."""
    fc, last = getattr(model, "fc", None), getattr(model, "last_layer", None)
    if not isinstance(fc, nn.Linear) or not isinstance(last, str):
        raise CheckpointError(
            f"{type(model).__name__} has no named convolutional layers followed by a linear `fc`; "
            "localization and CAM need a convolutional network: train one with model=resnet."
        )
    return fc, last


def layer_names(model: nn.Module) -> list[str]:
    """The parts and blocks a map is usually taken at: stem, stage1, stage1.0, ..., stage3."""
    names = list(getattr(model, "layers", ()))
    blocks = [n for n, _ in model.named_modules() if n.count(".") == 1 and n.split(".")[0] in names]
    return names + blocks


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called `name` (any name of model.named_modules(): `stage2`, `stage3.1`, `stage2.0.bn2`)."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        shown = ", ".join(layer_names(model))
        raise BadArgument("layer", name, f"null or a layer name: {shown} (or any submodule)", model.last_layer)
    return modules[name]


def first_cell_center(stride: int, where: str) -> float:
    """Pixel coordinate of the centre of cell 0 of maps with this stride.

    field: the centre of its receptive field. Each stride-2 3x3 convolution (padding 1) centres output cell j
    on input pixel 2j, so cell j sits on pixel stride*j, whose centre is stride*j + 0.5.
    middle: the middle of the cell's stride x stride block, stride*j + stride/2 (where plain bilinear
    upsampling puts it). Where a trained network's evidence peaks is an empirical question: measure both.
    """
    if where not in CELL_CENTERS:
        raise BadArgument("cell_center", where, "middle or field", "middle")
    return 0.5 if where == "field" else stride / 2


def cell_centers(n: int, stride: int, where: str = "field") -> torch.Tensor:
    """Centres of n consecutive cells in continuous pixel coordinates (pixel i spans [i, i + 1))."""
    return stride * torch.arange(n, dtype=torch.float32) + first_cell_center(stride, where)


def upsample_cells(maps: torch.Tensor, stride: int, size: tuple[int, int], where: str = "field") -> torch.Tensor:
    """Bilinear upsampling of (B, K, h, w) cell maps to pixels, each cell landing on its centre.

    where="middle": cell j at stride*(j + 1/2), which is what interpolate(align_corners=False) does.
    where="field": cell j on pixel stride*j, its receptive field's centre (see first_cell_center); the few
    pixels past the last cell repeat its value.
    """
    first_cell_center(stride, where)  # checks `where`
    if where == "middle":
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    h, w = maps.shape[2:]
    inner = (stride * (h - 1) + 1, stride * (w - 1) + 1)
    up = F.interpolate(maps, size=inner, mode="bilinear", align_corners=True)
    pad_h, pad_w = max(0, size[0] - inner[0]), max(0, size[1] - inner[1])
    return F.pad(up, (0, pad_w, 0, pad_h), mode="replicate")[:, :, : size[0], : size[1]]


def normalize_per_image(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each (h, w) map of (B, ..., h, w) to [0, 1], as Zhou et al. do before thresholding."""
    flat = maps.flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps)
