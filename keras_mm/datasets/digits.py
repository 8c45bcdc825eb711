"""The bundled digits, and in-memory arrays as a stream of training batches."""

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
        n_val = round(len(images) * validation_fraction)
        val, train = order[:n_val], order[n_val:]
        if return_labels:
            return (images[train], labels[train]), (images[val], labels[val])
        return images[train], images[val]
    return (images, labels) if return_labels else images



def infinite_batches(images, labels=None, batch_size=128, seed=0, start=0):
    """Shuffled `(images, labels)` (or `images`) numpy batches, forever, reshuffled every pass.

    A backend-independent stream for `fit(..., steps_per_epoch=...)` over in-memory data,
    so that training is counted in steps rather than epochs; every batch is full.

    Args:
        images: array [N, H, W, C].
        labels: optional array [N].
        batch_size: examples per batch (at most N).
        seed: shuffling seed.
        start: the index of the first batch: the stream continues the one that started at
            0 after `start` batches (a resumed run's position), drawing only the skipped
            passes' permutations.

    Example:
    ```python
    images, labels = keras_mm.datasets.load_digits()
    stream = keras_mm.datasets.infinite_batches(images, labels, batch_size=128)
    teacher.fit(stream, steps_per_epoch=100, epochs=20)
    ```
    """
    images = np.asarray(images)
    if not 1 <= batch_size <= len(images):
        raise ValueError(
            f"batch_size must be in [1, {len(images)}] (the number of examples); got "
            f"{batch_size}."
        )
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be an integer >= 0 (a batch index); got {start!r}.")
    rng = np.random.default_rng(seed)
    per_pass = len(images) // batch_size
    for _ in range(start // per_pass):
        rng.permutation(len(images))
    skip = start % per_pass
    while True:
        order = rng.permutation(len(images))
        for batch in range(skip, per_pass):
            index = order[batch * batch_size : (batch + 1) * batch_size]
            yield images[index] if labels is None else (images[index], labels[index])
        skip = 0

