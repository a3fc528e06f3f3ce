"""Small image helpers shared by the CLI, training and evaluation: grids and atomic PNG writes."""

import os
import tempfile
from typing import Sequence

import PIL.Image


def make_grid(images: Sequence[PIL.Image.Image], ncols: int = 8, padding: int = 2, fill=(255, 255, 255)) -> PIL.Image.Image:
    """Tile equally sized PIL images row by row."""
    if not images:
        raise ValueError("make_grid needs at least one image.")
    w, h = images[0].size
    ncols = max(1, min(ncols, len(images)))
    nrows = (len(images) + ncols - 1) // ncols
    grid = PIL.Image.new("RGB", (ncols * w + (ncols + 1) * padding, nrows * h + (nrows + 1) * padding), fill)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        grid.paste(image.convert("RGB"), (padding + c * (w + padding), padding + r * (h + padding)))
    return grid


def save_image_atomically(image: PIL.Image.Image, path: str, **save_kwargs):
    """Write to a temporary file beside `path`, then rename: a killed process never leaves half a PNG."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1] or ".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=save_kwargs.pop("format", "PNG"), **save_kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


__all__ = ["make_grid", "save_image_atomically"]
