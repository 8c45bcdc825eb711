"""A config's data: endless training batches and the real images that FID compares with.

`data.source` picks the loader: "digits" (bundled), "tfds", "captions" (see
`keras_mm.training.captions`), "image_folder" (`data.path`: a folder of images, one
subfolder per class) or "npz" (`data.path`: arrays `images` and optional `labels`).

    stream = keras_mm.training.training_stream(config, batch_size=128, seed=0)
    reference = keras_mm.training.reference_images(config)
"""

import functools

from keras_mm.configs import ConfigError

FILE_SOURCES = ("image_folder", "npz")  # the user's own images, read from data.path


def training_stream(config, batch_size, seed, captions=None, start=0):
    """Endless training batches: `(images, labels)`, `(images,)` for unconditional configs, or
    `{"images", "text_embeddings", "text_mask"}` for captions (`captions`: a CaptionData), or
    `{"images", "context", "pooled_projection"}` for SD3 (`captions`: the run's
    `keras_mm.training.sd3.CachedLatents`).

    `start`: the index of the first batch, so that a resumed run continues the stream of
    the uninterrupted one (same order, same position)."""
    from keras_mm import datasets

    data = config["data"]
    if data["source"] == "captions":
        return captions.stream(batch_size, seed).skip(start)
    if config["model"]["network"] == "sd3":  # captions: the run's sd3.CachedLatents
        return captions.stream(batch_size, seed, start=start)
    conditional = data["num_classes"] is not None
    if data["source"] in ("digits", *FILE_SOURCES):
        images, labels = in_memory_images(config)
        batches = datasets.infinite_batches(images, labels if conditional else None,
                                            batch_size=batch_size, seed=seed, start=start)
        # Keras takes a generator's batches as tuples: `(images,)` when unconditional.
        return batches if conditional else ((images,) for images in batches)
    try:
        dataset = datasets.tfds_image_dataset(
            data["name"], split=data["split"], image_size=data["image_shape"][0],
            batch_size=batch_size, random_flip=data["random_flip"], seed=seed,
            data_dir=data["data_dir"], shuffle_buffer=data["shuffle_buffer"],
        )
    except datasets.DatasetNotAvailableError as error:
        raise ConfigError(f"{error} (config keys data.name, data.split, data.data_dir)") from None
    dataset = dataset.skip(start)
    return dataset if conditional else dataset.map(lambda images, labels: images)


def reference_images(config, captions=None):
    """The real images that FID compares with: an array, or numpy batches from TFDS."""
    from keras_mm import datasets

    data, evaluation = config["data"], config["eval"]
    if data["source"] == "captions":
        return captions.reference()[0][: evaluation["num_reference"]]
    if data["source"] in ("digits", *FILE_SOURCES):
        return in_memory_images(config)[0][: evaluation["num_reference"]]
    import tensorflow_datasets as tfds

    try:
        return tfds.as_numpy(datasets.tfds_image_dataset(
            data["name"], split=evaluation["reference_split"],
            image_size=data["image_shape"][0], batch_size=evaluation["batch_size"],
            shuffle=False, repeat=False, num_examples=evaluation["num_reference"],
            drop_remainder=False, data_dir=data["data_dir"],
        ))
    except datasets.DatasetNotAvailableError as error:
        raise ConfigError(
            f"{error} (config keys data.name, eval.reference_split, data.data_dir)") from None


def in_memory_images(config):
    """`(images, labels)` of the digits, an image folder or an .npz file, labels checked
    against data.num_classes."""
    data = config["data"]
    image_shape = tuple(data["image_shape"])
    if data["source"] == "digits":
        from keras_mm import datasets

        return datasets.load_digits()
    images, labels, class_names = _load_file_source(data["source"], data["path"], image_shape)
    check_labels(labels, class_names, data["num_classes"], data["path"])
    return images, labels


@functools.lru_cache(maxsize=2)
def _load_file_source(source, path, image_shape):
    """The images of data.path, read once per process (training and reference share them)."""
    from keras_mm import datasets

    if not isinstance(path, str) or not path:
        raise ConfigError(f"data.source {source!r} reads data.path: set it to the "
                          f"{'folder of images' if source == 'image_folder' else '.npz file'}, "
                          f"e.g. --set data.path=my_images; got {path!r}.")
    try:
        if source == "image_folder":
            return datasets.load_image_folder(path, image_shape)
        images, labels = datasets.load_npz(path, image_shape)
        return images, labels, None
    except (datasets.DatasetNotAvailableError, ValueError) as error:
        raise ConfigError(f"data.path: {error}") from None


def check_labels(labels, class_names, num_classes, path):
    """The data's labels fit data.num_classes (null: the model is unconditional)."""
    if num_classes is None:
        return
    if labels is None:
        raise ConfigError(
            f"data.num_classes is {num_classes} but {path} has no labels (images directly in "
            "the folder, or no `labels` array): set data.num_classes=null, or put each "
            "class's images in its own subfolder.")
    if class_names and len(class_names) != num_classes:
        raise ConfigError(
            f"{path} holds {len(class_names)} class folders ({', '.join(class_names)}) but "
            f"data.num_classes is {num_classes}: set --set data.num_classes={len(class_names)}.")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ConfigError(
            f"The labels of {path} run from {int(labels.min())} to {int(labels.max())} but "
            f"data.num_classes is {num_classes}: labels must lie in [0, data.num_classes).")
