"""task=localize: a trained ResNet made fully convolutional finds digits on large canvases.

The classifier applied at every cell of the last maps (task.method=fully-conv) gives one score map per class. The
canvas class is a pooling of the maps that the black background cannot win; for boxes the maps are taken
relative to those of an empty canvas, so background is zero, and each chosen class gives the connected components
above a fraction of its maximum. It is task=cam's evaluation (cnnlab.vision.canvas_eval) with these defaults; any
other task.method works here too.
"""

from __future__ import annotations

from cnnlab.tasks import cam
from cnnlab.tasks.context import Context, TaskResult


def run(ctx: Context) -> TaskResult:
    return cam.run(ctx)
