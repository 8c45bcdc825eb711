"""Colour-layout features: the mean colour of each cell of a coarse grid over the image."""

import keras

from keras_mm.metrics.feature_extractor import FeatureExtractor


class ColorLayoutFeatures(FeatureExtractor):
    """The mean colour of each cell of a `grid` x `grid` partition of the image.

    A parameter-free feature space for tiny images that Inception-v3 cannot take (it needs
    at least 75x75 pixels), such as the 8x8 captioned shapes of
    `keras_mm.datasets.make_captioned_shapes`: the Fréchet distance in this space compares
    the distributions of colour and of its left/right/top/bottom layout, which is what a
    caption like "a red square on the left" fixes. It says nothing about fine detail, so it
    is a toy-scale stand-in for FID, not a replacement.

    Args:
        image_shape: `(height, width, channels)` of the images; height and width must be
            divisible by `grid`.
        grid: cells per side (2: the four quadrants' mean colours, 4 x channels features).
        batch_size: images per forward pass.

    Example:
    ```python
    extractor = keras_mm.metrics.ColorLayoutFeatures((8, 8, 3))
    extractor(images).shape  # (N, 12)
    ```
    """

    def __init__(self, image_shape=(8, 8, 3), grid=2, batch_size=256):
        height, width, _ = (int(size) for size in image_shape)
        if grid < 1 or height % grid or width % grid:
            raise ValueError(
                f"ColorLayoutFeatures: the image's height and width ({height}x{width}) must be "
                f"divisible by grid={grid}."
            )
        inputs = keras.Input(tuple(int(size) for size in image_shape))
        pooled = keras.layers.AveragePooling2D((height // grid, width // grid))(inputs)
        super().__init__(keras.Model(inputs, keras.layers.Flatten()(pooled)),
                         name="color_layout", batch_size=batch_size)
        self.image_shape = tuple(int(size) for size in image_shape)
        self.grid = grid
