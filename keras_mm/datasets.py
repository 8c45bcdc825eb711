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


# ---------------------------------------------------------------------- captioned data
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


# ---------------------------------------------------------------------- training streams
def infinite_batches(images, labels=None, batch_size=128, seed=0):
    """Shuffled `(images, labels)` (or `images`) numpy batches, forever, reshuffled every pass.

    A backend-independent stream for `fit(..., steps_per_epoch=...)` over in-memory data,
    so that training is counted in steps rather than epochs; every batch is full.

    Args:
        images: array [N, H, W, C].
        labels: optional array [N].
        batch_size: examples per batch (at most N).
        seed: shuffling seed.

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
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(images))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield images[index] if labels is None else (images[index], labels[index])


class DatasetNotAvailableError(RuntimeError):
    """A dataset could not be loaded: unknown, not downloaded, or not prepared."""


def tfds_image_dataset(
    name,
    split="train",
    image_size=None,
    batch_size=128,
    shuffle=True,
    repeat=True,
    random_flip=False,
    num_examples=None,
    drop_remainder=True,
    seed=0,
    data_dir=None,
    shuffle_buffer=10_000,
):
    """A `tf.data.Dataset` of `(images, labels)` batches of a TFDS image dataset.

    Images are float32 in [-1, 1]; with `image_size`, those of another size are
    center-cropped to a square and resized to `image_size` (area-averaged when shrinking).
    Labels are int32. ImageNet variants whose classes are listed in another order (e.g.
    `imagenet_resized`, which follows the ILSVRC devkit) are relabelled to the standard order
    of sorted WordNet ids, that of `imagenet2012` and of `keras.applications` classifiers, so
    that class accuracy under Inception-v3 is meaningful. Works for `fit` on every backend.

    Args:
        name: TFDS name, e.g. `"cifar10"`, `"imagenet_resized/64x64"`, `"imagenet2012"`.
        split: TFDS split, e.g. `"train"` or `"validation[:10000]"`.
        image_size: side of the square output images; None keeps the stored size.
        batch_size: examples per batch.
        shuffle: shuffle files and examples (`seed` fixes the order).
        repeat: cycle through the split forever (train by steps).
        random_flip: flip each image left-right with probability 1/2 (augmentation).
        num_examples: use only the first this many examples of the split.
        drop_remainder: drop the last incomplete batch (static shapes for compiled steps).
        seed: seed of the shuffling and flips.
        data_dir: TFDS data directory; None is TFDS's default.
        shuffle_buffer: examples in the shuffle buffer.

    Returns:
        The batched, prefetched `tf.data.Dataset`.

    Raises:
        DatasetNotAvailableError: TFDS could not load the dataset (unknown name, not
            downloaded and no internet access, unknown split); the message says how to fix it.

    Example:
    ```python
    dataset = keras_mm.datasets.tfds_image_dataset("cifar10", batch_size=512,
                                                   random_flip=True)
    teacher.fit(dataset, steps_per_epoch=1000, epochs=400)
    ```
    """
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as error:  # pragma: no cover - dependency message
        raise ImportError(
            "TFDS datasets need tensorflow and tensorflow-datasets: "
            "pip install 'keras-mm[data,tensorflow]'."
        ) from error
    try:
        dataset, info = tfds.load(
            name,
            split=split,
            as_supervised=True,
            shuffle_files=shuffle,
            data_dir=data_dir,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
            with_info=True,
        )
    except Exception as error:  # noqa: BLE001 - unknown name, no download, bad split, ...
        first_line = (str(error).strip().splitlines() or [""])[0][:300].rstrip(".")
        raise DatasetNotAvailableError(
            f"Could not load the TFDS dataset {name!r} (split {split!r}, data_dir "
            f"{data_dir or '~/tensorflow_datasets'}): {type(error).__name__}: {first_line}. "
            f"TFDS downloads and prepares a dataset on first use; without internet access, "
            f"prepare it elsewhere (`tfds build {name}`; ImageNet needs a manual download) "
            "and point data_dir at it."
        ) from error
    label_map = _standard_imagenet_label_map(info)
    if num_examples is not None:
        dataset = dataset.take(num_examples)
    if repeat:
        dataset = dataset.repeat()
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def preprocess(image, label):
        image = tf.cast(image, tf.float32)
        if image_size is not None:
            height, width = tf.shape(image)[0], tf.shape(image)[1]
            side = tf.minimum(height, width)
            image = tf.image.crop_to_bounding_box(
                image, (height - side) // 2, (width - side) // 2, side, side
            )
            image = tf.image.resize(image, (image_size, image_size), method="area")
        image = image / 127.5 - 1.0
        if random_flip:
            image = tf.image.random_flip_left_right(image, seed=seed)
        if label_map is not None:
            label = tf.gather(label_map, label)
        return image, tf.cast(label, tf.int32)

    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _standard_imagenet_label_map(info):
    """Old label -> index in sorted WordNet ids, for ImageNet labels in another order."""
    import re

    features = info.features  # a tfds FeaturesDict: no .get()
    label = features["label"] if "label" in features else None  # noqa: SIM401
    names = list(getattr(label, "names", None) or [])
    if not names or not all(re.fullmatch(r"n\d{8}", n) for n in names) or names == sorted(names):
        return None
    order = {wnid: index for index, wnid in enumerate(sorted(names))}
    return np.asarray([order[n] for n in names], "int32")
