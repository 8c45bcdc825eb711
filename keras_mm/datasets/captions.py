"""A synthetic captioned dataset, and captions encoded once into text-conditioning tables."""

import numpy as np

SHAPE_COLORS = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
}
SHAPES = ("square", "circle")
SHAPE_POSITIONS = ("left", "right")
CAPTION_TEMPLATES = (
    "a {color} {shape} on the {position}",
    "a {color} {shape} on the {position} side",
    "{color} {shape}, {position}",
)


def make_captioned_shapes(
    num_examples, image_size=8, background_tint=0.0, seed=0, return_attributes=False
):
    """A synthetic captioned dataset: one coloured shape on black, e.g. "a red square on the left".

    Each image holds a red, green or blue square or circle in its left or right half, with a
    little random jitter in size and height; its caption names the three attributes in one
    of `CAPTION_TEMPLATES`. Drawn with NumPy, so it needs no download: a toy stand-in for a
    text-image dataset on which a model's caption-following can be measured (the mean
    colour and the left/right balance of an image tell its caption).

    Args:
        num_examples: number of images.
        image_size: height and width (at least 8, divisible by 2).
        background_tint: moves the black background this fraction of the way to the
            shape's colour (0: black). Tinted, the colour is a whole-image attribute that a
            tiny model learns to follow in a few hundred steps.
        seed: seed of the attributes and jitter.
        return_attributes: also return the attributes as int arrays.

    Returns:
        `(images, captions)`: float32 [N, S, S, 3] in [-1, 1] and a list of N strings; with
        `return_attributes`, also `{"color", "shape", "position"}`, indices into
        `SHAPE_COLORS`, `SHAPES` and `SHAPE_POSITIONS`.

    Example:
    ```python
    images, captions = keras_mm.datasets.make_captioned_shapes(1000)
    images.shape, captions[0]  # (1000, 8, 8, 3), 'a blue circle on the right'
    ```
    """
    if image_size < 8 or image_size % 2:
        raise ValueError(f"image_size must be even and >= 8, got {image_size}.")
    if not 0.0 <= background_tint <= 1.0:
        raise ValueError(f"background_tint must be in [0, 1], got {background_tint}.")
    rng = np.random.default_rng(seed)
    colors = list(SHAPE_COLORS)
    attributes = {
        "color": rng.integers(len(colors), size=num_examples).astype("int32"),
        "shape": rng.integers(len(SHAPES), size=num_examples).astype("int32"),
        "position": rng.integers(len(SHAPE_POSITIONS), size=num_examples).astype("int32"),
    }
    templates = rng.integers(len(CAPTION_TEMPLATES), size=num_examples)
    rows, cols = np.mgrid[0:image_size, 0:image_size] + 0.5
    half = image_size / 2
    images = np.full((num_examples, image_size, image_size, 3), -1.0, "float32")
    captions = []
    for i in range(num_examples):
        color, shape, position = (attributes[k][i] for k in ("color", "shape", "position"))
        radius = half / 2 * rng.uniform(0.7, 1.0)
        center_col = half / 2 + position * half
        center_row = half + rng.uniform(-0.25, 0.25) * half
        if SHAPES[shape] == "square":
            inside = (np.abs(rows - center_row) <= radius) & (np.abs(cols - center_col) <= radius)
        else:
            inside = (rows - center_row) ** 2 + (cols - center_col) ** 2 <= (1.2 * radius) ** 2
        rgb = np.asarray(SHAPE_COLORS[colors[color]], "float32")
        images[i] = -1.0 + background_tint * (rgb + 1.0)
        images[i][inside] = rgb
        captions.append(
            CAPTION_TEMPLATES[templates[i]].format(
                color=colors[color], shape=SHAPES[shape], position=SHAPE_POSITIONS[position]
            )
        )
    if return_attributes:
        return images, captions, attributes
    return images, captions


def encode_captions(text_encoder, captions, batch_size=64, cache_path=None):
    """Text embeddings of `captions`, each distinct caption encoded once.

    Captions repeat across a dataset (and a T5-XXL is slow), so the encoder runs once per
    distinct caption and the rows are copied out. With `cache_path`, the embeddings are
    kept in an `.npz` file across runs: captions already there are not encoded again.

    Args:
        text_encoder: a `keras_mm.TextEncoder`.
        captions: a list of N strings.
        batch_size: captions per encoder call.
        cache_path: optional `.npz` path of a caption -> embedding cache. It is keyed by the
            caption text and the encoder's config and sequence length; delete it when the
            encoder's weights change.

    Returns:
        `{"text_embeddings": float32 [N, L, D], "text_mask": bool [N, L]}` NumPy arrays.

    Example:
    ```python
    condition = keras_mm.datasets.encode_captions(encoder, captions, cache_path="t5.npz")
    teacher.fit({"images": images, **condition}, batch_size=64, epochs=10)
    ```
    """
    table, index = _caption_table(text_encoder, captions, batch_size, cache_path)
    return {key: value[index] for key, value in table.items()}


def captioned_dataset(
    images,
    captions,
    text_encoder,
    batch_size=64,
    shuffle=True,
    seed=0,
    drop_remainder=True,
    cache_path=None,
):
    """A `tf.data.Dataset` of `{"images", "text_embeddings", "text_mask"}` batches.

    The captions are encoded once (see `encode_captions`, `cache_path` included) into a
    table with one row per distinct caption; the pipeline looks each example's row up, so
    neither the encoder nor a per-example copy of the embeddings is needed during training.
    Works for `fit` on every backend.

    Args:
        images: float32 [N, H, W, C] in [-1, 1].
        captions: a list of N strings.
        text_encoder: a `keras_mm.TextEncoder`.
        batch_size: examples per batch.
        shuffle: reshuffle the examples every epoch.
        seed: shuffling seed.
        drop_remainder: drop the last incomplete batch (static shapes for compiled steps).
        cache_path: optional `.npz` embedding cache, as in `encode_captions`.

    Returns:
        A batched, prefetched `tf.data.Dataset`.

    Example:
    ```python
    images, captions = keras_mm.datasets.make_captioned_shapes(4096)
    dataset = keras_mm.datasets.captioned_dataset(images, captions, encoder, batch_size=64)
    teacher.fit(dataset, epochs=10)
    ```
    """
    import tensorflow as tf

    images = np.asarray(images, "float32")
    if len(images) != len(captions):
        raise ValueError(
            f"Got {len(images)} images but {len(captions)} captions; pass one caption per image."
        )
    table, index = _caption_table(text_encoder, captions, batch_size, cache_path)
    embeddings = tf.constant(table["text_embeddings"])
    masks = tf.constant(table["text_mask"])
    dataset = tf.data.Dataset.from_tensor_slices((images, index.astype("int32")))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    def look_up(batch_images, batch_index):
        return {
            "images": batch_images,
            "text_embeddings": tf.gather(embeddings, batch_index),
            "text_mask": tf.gather(masks, batch_index),
        }

    return dataset.map(look_up, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _caption_table(text_encoder, captions, batch_size, cache_path):
    """(`{"text_embeddings", "text_mask"}` per distinct caption, each caption's row)."""
    import json
    import os

    captions = [captions] if isinstance(captions, str) else [str(c) for c in captions]
    if not captions:
        raise ValueError("No captions given.")
    unique, index = np.unique(np.asarray(captions, dtype=object).astype(str),
                              return_inverse=True)
    unique = unique.tolist()
    signature = json.dumps(
        {"backbone": text_encoder.backbone_config.get("config"),
         "sequence_length": text_encoder.sequence_length},
        sort_keys=True, default=str,
    )
    cached = {}
    if cache_path is not None and os.path.exists(cache_path):
        with np.load(cache_path, allow_pickle=False) as data:
            if str(data["signature"]) == signature:
                for i, caption in enumerate(data["captions"].tolist()):
                    cached[caption] = (data["text_embeddings"][i], data["text_mask"][i])
    missing = [c for c in unique if c not in cached]
    if missing:
        encoded = text_encoder.encode(missing, batch_size=batch_size)
        for i, caption in enumerate(missing):
            cached[caption] = (encoded["text_embeddings"][i], encoded["text_mask"][i])
        if cache_path is not None:
            names = sorted(cached)
            os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
            np.savez(
                cache_path,
                captions=np.asarray(names),
                text_embeddings=np.stack([cached[c][0] for c in names]),
                text_mask=np.stack([cached[c][1] for c in names]),
                signature=np.asarray(signature),
            )
    table = {
        "text_embeddings": np.stack([cached[c][0] for c in unique]).astype("float32"),
        "text_mask": np.stack([cached[c][1] for c in unique]).astype(bool),
    }
    return table, index.reshape(-1)

