"""The user's own images: a folder of image files, or an `.npz` of arrays.

Both load everything into memory as float32 [N, H, W, C] in [-1, 1] (a 64x64 RGB image
takes 48 KiB, so 100,000 of them take 4.6 GiB).
"""

import os

import numpy as np

from keras_mm.datasets.tfds_images import DatasetNotAvailableError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_PILLOW_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def load_image_folder(path, image_shape):
    """Images of a folder as float32 [N, H, W, C] in [-1, 1], with class labels from subfolders.

    As `keras.utils.image_dataset_from_directory` does, each subfolder of `path` is a class
    (its images, also in nested folders, get its index in the sorted list of subfolder
    names); when the images sit directly in `path`, there are no labels. Files whose names
    end in .png, .jpg, .jpeg, .bmp, .gif or .webp (any case) are read with Pillow (a GIF's
    first frame); other files and names starting with "." are skipped. Images of mixed
    sizes are fine: each is center-cropped to the largest box of the target aspect ratio,
    then resized to `image_shape` with Pillow's bicubic filter (antialiased when shrinking),
    and converted to the channel count (1: grayscale, 3: RGB, 4: RGBA; an alpha channel is
    dropped for 1 or 3 channels, not blended). Pixel values p in [0, 255] become
    p / 127.5 - 1.

    Args:
        path: the folder.
        image_shape: `(height, width, channels)` of the output, channels 1, 3 or 4.

    Returns:
        `(images, labels, class_names)`: float32 [N, H, W, C]; int32 [N] labels and the
        sorted subfolder names, or `None` and `None` when the images sit directly in `path`.

    Raises:
        DatasetNotAvailableError: `path` does not exist.
        ValueError: `path` is not a folder, holds no images, has an empty class folder,
            holds both images and class folders, or an image cannot be read (the message
            names the file).

    Example:
    ```python
    # flowers/daisy/*.jpg, flowers/tulip/*.jpg, ...
    images, labels, class_names = keras_mm.datasets.load_image_folder("flowers", (64, 64, 3))
    ```
    """
    height, width, channels = _check_image_shape(image_shape)
    files, labels, class_names = _list_image_files(path)
    images = np.empty((len(files), height, width, channels), "float32")
    for index, file in enumerate(files):
        images[index] = _read_image(file, height, width, channels)
    return images / 127.5 - 1.0, labels, class_names


CAPTIONS_FILE = "metadata.jsonl"  # Hugging Face `imagefolder`'s captions file


def load_captioned_folder(path, image_shape):
    """Captioned images: a folder with `metadata.jsonl`, one JSON object per line naming an
    image (`"file_name"`, relative to the folder) and its caption (`"text"`), the layout of
    Hugging Face's `imagefolder` text-to-image datasets. Images are read as by
    `load_image_folder`.

    Args:
        path: the folder.
        image_shape: `(height, width, channels)` of the output.

    Returns:
        `(images, captions)`: float32 [N, H, W, C] in [-1, 1] and a list of N strings.

    Example:
    ```python
    # photos/metadata.jsonl: {"file_name": "cat.png", "text": "a cat on a windowsill"}
    images, captions = keras_mm.datasets.load_captioned_folder("photos", (512, 512, 3))
    ```
    """
    import json

    height, width, channels = _check_image_shape(image_shape)
    metadata = os.path.join(path, CAPTIONS_FILE)
    if not os.path.isfile(metadata):
        raise DatasetNotAvailableError(
            f"No {CAPTIONS_FILE} in '{path}': captioned images need one line per image, "
            '{"file_name": "cat.png", "text": "a cat on a windowsill"}.')
    files, captions = [], []
    with open(metadata, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                files.append(os.path.join(path, entry["file_name"]))
                captions.append(str(entry["text"]))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{metadata} line {number} is not a JSON object with "
                                 f'"file_name" and "text": {line.strip()[:80]!r}.') from None
    if not files:
        raise ValueError(f"{metadata} names no images.")
    images = np.empty((len(files), height, width, channels), "float32")
    for index, file in enumerate(files):
        images[index] = _read_image(file, height, width, channels)
    return images / 127.5 - 1.0, captions


def load_npz(path, image_shape=None):
    """`images` (and optional `labels`) of an `.npz` file, as float32 [N, H, W, C] in [-1, 1].

    `images` must be [N, H, W, C]: integers in [0, 255] (uint8, say) or floats in [0, 255]
    are scaled by p / 127.5 - 1; floats already in [-1, 1] are kept as they are (so floats
    in [0, 1] are read as [-1, 1] data: multiply such images by 255 before saving). `labels`,
    if present, must be N integers >= 0.

    Args:
        path: the `.npz` file, as written by `np.savez(path, images=..., labels=...)`.
        image_shape: optional expected `(height, width, channels)`.

    Returns:
        `(images, labels)`: float32 [N, H, W, C] and int32 [N] labels, or `None` without
        a `labels` array.

    Raises:
        DatasetNotAvailableError: `path` does not exist.
        ValueError: the file cannot be read, lacks `images`, or its arrays have the wrong
            rank, shape, dtype or range, NaN values, or labels of another length.

    Example:
    ```python
    np.savez("mine.npz", images=uint8_images, labels=labels)
    images, labels = keras_mm.datasets.load_npz("mine.npz", image_shape=(32, 32, 3))
    ```
    """
    if not os.path.exists(path):
        raise DatasetNotAvailableError(
            f"No such file: {path}; give the path of an .npz file holding an `images` array "
            "(data.path in a config)."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:  # not a zip, truncated, object arrays, ...
        raise ValueError(
            f"Could not read {path} as an .npz file ({type(error).__name__}: "
            f"{_first_line(error)}); write it with np.savez(path, images=..., labels=...)."
        ) from error
    if "images" not in arrays:
        raise ValueError(
            f"{path} has no `images` array (it holds {sorted(arrays)}); write it with "
            "np.savez(path, images=..., labels=...)."
        )
    images = _scaled_images(arrays["images"], path)
    if image_shape is not None:
        expected = _check_image_shape(image_shape)
        if images.shape[1:] != expected:
            raise ValueError(
                f"The images in {path} are {images.shape[1:]}, but image_shape is {expected}; "
                "set image_shape to the data's shape or resize the images."
            )
    labels = arrays.get("labels")
    if labels is not None:
        labels = _checked_labels(labels, len(images), path)
    return images, labels


def _check_image_shape(image_shape):
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else ()
    if (
        len(shape) != 3
        or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape)
        or shape[-1] not in _PILLOW_MODES
    ):
        raise ValueError(
            f"image_shape must be (height, width, channels) with positive ints and 1, 3 or 4 "
            f"channels; got {image_shape!r}."
        )
    return tuple(int(d) for d in shape)


def _is_image_file(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_image_files(path):
    """(sorted image files, int32 labels or None, class names or None) of a folder."""
    if not os.path.exists(path):
        raise DatasetNotAvailableError(
            f"No such folder: {path}; give a folder of images, or of one subfolder of images "
            "per class (data.path in a config)."
        )
    if not os.path.isdir(path):
        raise ValueError(
            f"{path} is not a folder; give a folder of images (for an .npz file use "
            "load_npz, data.name='npz' in a config)."
        )
    entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
    loose = [os.path.join(path, e) for e in entries if _is_image_file(e)]
    class_names = [e for e in entries if os.path.isdir(os.path.join(path, e))]
    if not class_names:
        if not loose:
            raise ValueError(
                f"No images in {path} (looked for {', '.join(IMAGE_EXTENSIONS)}); put image "
                "files in it, or in one subfolder per class."
            )
        return loose, None, None
    if loose:
        raise ValueError(
            f"{path} holds both images (e.g. {os.path.basename(loose[0])}) and class folders "
            f"({', '.join(class_names[:3])}); move the images into a class folder."
        )
    files, labels = [], []
    for label, name in enumerate(class_names):
        class_files = []
        for root, dirs, names in os.walk(os.path.join(path, name), followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            class_files += [os.path.join(root, n) for n in sorted(names) if _is_image_file(n)]
        if not class_files:
            raise ValueError(
                f"The class folder {os.path.join(path, name)} holds no images; add images to "
                "it or remove it."
            )
        files += class_files
        labels += [label] * len(class_files)
    return files, np.asarray(labels, "int32"), class_names


def _read_image(file, height, width, channels):
    """One image file, center-cropped and resized: float32 [height, width, channels] in [0, 255]."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            image.load()
            image = image.convert(_PILLOW_MODES[channels])
    except Exception as error:  # truncated, not an image, unreadable, ...
        raise ValueError(
            f"Could not read the image {file} ({type(error).__name__}: {_first_line(error)}); "
            "replace or remove the file."
        ) from error
    # The largest centred box with the target aspect ratio (as crop_to_aspect_ratio does).
    crop_width = min(image.width, image.height * width / height)
    crop_height = min(image.height, image.width * height / width)
    left, top = (image.width - crop_width) / 2, (image.height - crop_height) / 2
    image = image.resize(
        (width, height),
        Image.Resampling.BICUBIC,
        box=(left, top, left + crop_width, top + crop_height),
    )
    pixels = np.asarray(image, "float32").reshape(height, width, channels)
    return np.clip(pixels, 0.0, 255.0)


def _scaled_images(images, path):
    """`images` of an .npz checked and scaled to float32 in [-1, 1]."""
    if images.ndim != 4:
        raise ValueError(
            f"`images` in {path} has shape {images.shape}; expected [N, height, width, "
            "channels] (add a channel axis to grayscale images: images[..., None])."
        )
    if len(images) == 0:
        raise ValueError(f"`images` in {path} is empty; save at least one image.")
    if np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise ValueError(
                f"`images` in {path} holds {np.sum(~np.isfinite(images))} NaN or infinite "
                "values; remove or fix those images."
            )
        low, high = float(images.min()), float(images.max())
        if low >= -1.0 and high <= 1.0:
            return images.astype("float32")
    elif np.issubdtype(images.dtype, np.integer):
        low, high = int(images.min()), int(images.max())
    else:
        raise ValueError(
            f"`images` in {path} has dtype {images.dtype}; expected uint8 in [0, 255] or "
            "floats in [0, 255] or [-1, 1]."
        )
    if low < 0 or high > 255:
        raise ValueError(
            f"`images` in {path} ({images.dtype}) range over [{low}, {high}]; expected "
            "[0, 255] or floats in [-1, 1]: rescale them."
        )
    return images.astype("float32") / 127.5 - 1.0


def _checked_labels(labels, num_images, path):
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` in {path} has dtype {labels.dtype}; expected integers (class indices): "
            "save labels.astype('int32')."
        )
    if labels.ndim != 1 or len(labels) != num_images:
        raise ValueError(
            f"`labels` in {path} has shape {labels.shape} but there are {num_images} images; "
            "save one integer label per image, shape [N]."
        )
    if len(labels) and labels.min() < 0:
        raise ValueError(
            f"`labels` in {path} hold negative values (min {labels.min()}); class indices "
            "start at 0."
        )
    return labels.astype("int32")


def _first_line(error):
    return (str(error).strip().splitlines() or [""])[0][:200]
