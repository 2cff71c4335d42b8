"""Image files of one's own (PNG, JPEG): read as the uint8 batch a model of a given input shape takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(path: Path) -> list[Path]:
    """`path` itself, or the PNG and JPEG files of a folder, sorted by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise ValueError(f"{path} holds no {', '.join(SUFFIXES)} files")
    return files


def read_images(files: list[Path], shape: list[int]) -> tuple[torch.Tensor, str | None]:
    """uint8 (B, C, H, W) for input `shape` (C, H, W): each file converted to C channels (grey or RGB) and, if
    its size differs, resized to H x W; and a line saying what was converted (None when nothing was)."""
    from PIL import Image

    channels, height, width = shape
    mode = "L" if channels == 1 else "RGB"
    arrays, converted, resized = [], 0, 0
    for file in files:
        with Image.open(file) as image:
            converted += image.mode != mode
            image = image.convert(mode)
            if image.size != (width, height):
                resized += 1
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            arrays.append(np.asarray(image, dtype=np.uint8).reshape(height, width, channels))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    said = []
    if converted:
        said.append(f"{converted} of {len(files)} images converted to {'grey' if channels == 1 else 'RGB'}")
    if resized:
        said.append(f"{resized} resized to {height}x{width}, the model's input")
    return batch, "; ".join(said) or None
