"""TFDS image datasets as `tf.data` pipelines of images in [-1, 1] and int32 labels."""

import numpy as np


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
