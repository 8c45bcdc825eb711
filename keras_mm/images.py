"""Image grids: tile a batch of images into one picture and write it as a PNG."""

import math
import os

import numpy as np


def image_grid(images, ncols=None, padding=1, scale=1):
    """Tile a batch of images into one uint8 array.

    Args:
        images: array-like [N, H, W, C] (C = 1 or 3) or [N, H, W]: floats in [-1, 1]
            (clipped) or uint8 in [0, 255].
        ncols: images per row; default ceil(sqrt(N)).
        padding: pixels of black between tiles and around the grid.
        scale: integer upscaling factor of each pixel (nearest neighbour), for small images.

    Returns:
        uint8 array [rows * (H + padding) + padding, ...] of shape [h, w] for one channel
        and [h, w, 3] for three.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(
            "images must be a non-empty batch [N, H, W, C] with C = 1 or 3 (or [N, H, W]); "
            f"got shape {images.shape}."
        )
    if images.dtype != np.uint8:
        images = np.round((np.clip(images.astype("float32"), -1.0, 1.0) + 1.0) * 127.5)
        images = images.astype(np.uint8)
    if int(scale) < 1:
        raise ValueError(f"scale must be an integer >= 1; got {scale}.")
    images = images.repeat(int(scale), axis=1).repeat(int(scale), axis=2)
    num, height, width, channels = images.shape
    ncols = min(num, ncols or math.ceil(math.sqrt(num)))
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1; got {ncols}.")
    nrows = math.ceil(num / ncols)
    grid = np.zeros(
        (nrows * (height + padding) + padding, ncols * (width + padding) + padding, channels),
        np.uint8,
    )
    for index, image in enumerate(images):
        row, col = divmod(index, ncols)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid[..., 0] if channels == 1 else grid


def save_image_grid(images, path, ncols=None, padding=1, scale=1):
    """Write a batch of images as one PNG grid (see `image_grid` for the arguments).

    Example:
    ```python
    images = teacher.sample(labels=list(range(10)), num_steps=64, seed=0)
    keras_mm.images.save_image_grid(keras.ops.convert_to_numpy(images), "grid.png", scale=4)
    ```

    Returns:
        `path`.
    """
    from PIL import Image

    grid = image_grid(images, ncols=ncols, padding=padding, scale=scale)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
