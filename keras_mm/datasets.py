"""Datasets: the bundled digits (scikit-learn, no download), TFDS image datasets, captions.

Images come out as float32 in [-1, 1], channels last.
"""

import numpy as np


def load_digits(return_labels=True, validation_fraction=0.0, seed=0):
    """scikit-learn's 1,797 real 8x8 handwritten digits, scaled to [-1, 1], shape [N, 8, 8, 1].

    Ships with scikit-learn (no download).

    Args:
        return_labels: also return the int32 labels.
        validation_fraction: hold out this fraction (stratified by shuffling with `seed`).
        seed: shuffling seed for the split.

    Returns:
        `(images, labels)` (or `images`); with `validation_fraction > 0`,
        `((train_images, train_labels), (val_images, val_labels))`.

    Example:
    ```python
    images, labels = keras_mm.datasets.load_digits()
    images.shape  # (1797, 8, 8, 1)
    ```
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as error:  # pragma: no cover - dependency message
        raise ImportError(
            "The bundled digits come from scikit-learn: pip install 'keras-mm[data]'."
        ) from error
    data = sk_load_digits()
    images = (data.images.astype("float32") / 8.0 - 1.0)[..., None]
    labels = data.target.astype("int32")
    if validation_fraction:
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
        order = np.random.default_rng(seed).permutation(len(images))
        n_val = int(round(len(images) * validation_fraction))
        val, train = order[:n_val], order[n_val:]
        if return_labels:
            return (images[train], labels[train]), (images[val], labels[val])
        return images[train], images[val]
    return (images, labels) if return_labels else images
