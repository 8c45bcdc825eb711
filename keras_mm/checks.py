"""Checks of the values a user hands keras_mm, each in one place: images, labels, finite
values, guidance scales and preconditioners. Each refusal is one line that names the problem
and the fix.

Training batches are checked inside the train step (`check_batch_images`): on concrete
values (NumPy, eager TensorFlow, PyTorch, JAX before its jitted step) on the host, in a
TensorFlow graph with graph assertions that the step's updates wait for
(`keras_mm.backend.graph_assert`). A refusal inside a
step starts with `BATCH_PREFIX`, so that `fit` can re-raise a TensorFlow `InvalidArgumentError`
as that one line (`batch_error_line`).
"""

import math
import re

import keras
import numpy as np
from keras import ops

# Images are in [-1, 1]; resizing with overshoot (bicubic, Lanczos) leaves values a little
# outside, so only values beyond this are refused (0..255 or 0..1 * 255 data is far beyond).
IMAGE_LIMIT = 1.5
BATCH_PREFIX = "Bad training batch: "
_IMAGE_FIX = ("scale them with images / 127.5 - 1 (or pass uint8 images in [0, 255], which "
              "are converted)")


def concrete(value):
    """`value` as a NumPy array, or None for a symbolic tensor (inside a traced function)."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(ops.convert_to_numpy(value))
    except Exception:  # noqa: BLE001 - each backend raises its own kind for tracers
        return None


# ---------------------------------------------------------------------- images
def image_range_message(low, high, what="images"):
    return (f"{what} must be in [-1, 1]; got values in [{low:.4g}, {high:.4g}]: "
            f"{_IMAGE_FIX}.")


def nonfinite_message(count, what="images"):
    return f"{what} contain {count} NaN or inf values; clean the data (drop or fix them) first."


def check_image_dtype(images, what="images"):
    """Refuse integer images other than uint8, and non-numeric ones (static: works on
    symbolic tensors); returns the dtype's standard name."""
    dtype = keras.backend.standardize_dtype(images.dtype)
    if dtype == "uint8" or "float" in dtype:
        return dtype
    raise ValueError(
        f"{what} have dtype {dtype}; pass uint8 in [0, 255] (converted to [-1, 1]) or floats "
        f"in [-1, 1] (e.g. images.astype('uint8') for integer pixel values)."
    )


def check_image_values(images, what="images", bounded=True):
    """Refuse NaN/inf and floats beyond about [-1, 1] in a NumPy array (uint8 passes);
    `bounded=False` (latents, which have no fixed range) refuses NaN/inf only."""
    images = np.asarray(images)
    if check_image_dtype(images, what) == "uint8" or images.size == 0:
        return
    finite = np.isfinite(images)
    if not finite.all():
        raise ValueError(nonfinite_message(int((~finite).sum()), what))
    low, high = float(images.min()), float(images.max())
    if bounded and max(-low, high) > IMAGE_LIMIT:
        raise ValueError(image_range_message(low, high, what))


def to_unit_range(images, what="images", bounded=True):
    """Images as float32 in [-1, 1]: uint8 converted (x / 127.5 - 1), floats checked.

    Args:
        images: NumPy array or backend tensor [B, ...], uint8 or float.
        what: the name used in messages.
        bounded: False for latents: only NaN/inf are refused.

    Returns:
        A NumPy float32 array for NumPy input, else a float32 tensor.
    """
    dtype = check_image_dtype(images, what)
    if isinstance(images, np.ndarray):
        check_image_values(images, what, bounded)
        images = images.astype("float32")
        return images / 127.5 - 1.0 if dtype == "uint8" else images
    if dtype == "uint8":
        return ops.cast(images, "float32") / 127.5 - 1.0
    values = concrete(images)
    if values is not None:
        check_image_values(values, what, bounded)
        return ops.cast(images, "float32")
    from keras_mm.backend import graph_assert

    images = ops.cast(images, "float32")
    magnitude = ops.max(ops.abs(images))
    return graph_assert([
        (ops.all(ops.isfinite(images)),
         BATCH_PREFIX + f"{what} contain NaN or inf values; clean the data first."),
        (ops.logical_not(ops.logical_and(bounded, magnitude > IMAGE_LIMIT)),
         BATCH_PREFIX + f"{what} must be in [-1, 1] (some are beyond {IMAGE_LIMIT}): "
         f"{_IMAGE_FIX}."),
    ], [images])[0]


def check_batch_images(images, bounded=True):
    """`to_unit_range` for a training batch; its refusals carry `BATCH_PREFIX`."""
    try:
        return to_unit_range(images, "images", bounded)
    except ValueError as error:
        raise ValueError(BATCH_PREFIX + str(error)) from None


def batch_error_line(error):
    """The one line of a batch refusal inside `error` (e.g. a TensorFlow
    `InvalidArgumentError` from a graph assertion), or None when it is not one."""
    match = re.search(re.escape(BATCH_PREFIX) + r"[^\n]*", str(error))
    if match is None:
        return None
    line = match.group(0).rstrip()
    # TensorFlow shows an assertion as "assertion failed: [message]".
    return line[:-1] if line.endswith("]") and "assertion failed: [" in str(error) else line


# ---------------------------------------------------------------------- labels
def check_label_dtype(labels, what="labels"):
    """Refuse labels that are not integers (static: works on symbolic tensors). Float labels
    would be truncated (2.7 -> 2) without a word."""
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if "int" in dtype:
        return
    hint = ""
    values = concrete(labels) if "float" in dtype else None
    if values is not None and values.size:
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            hint = " (these hold whole numbers: cast them with labels.astype('int32'))"
        else:
            hint = f" (e.g. {values.reshape(-1)[np.argmax(values != np.round(values))]!r})"
    if values is not None and values.size == 0:
        raise ValueError(f"{what} is empty; pass at least one integer label.")
    raise ValueError(f"{what} must be integers; got dtype {dtype}{hint}. Pass integer class "
                     "indices, not floats or one-hot vectors.")


# ---------------------------------------------------------------------- scalars and arrays
def check_finite_scalar(value, name, minimum=None):
    """`value` as a float, refused when NaN/inf or below `minimum`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number; got {number}.")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {number}.")
    return number


def check_guidance_scale(value, name="guidance_scale"):
    """A classifier-free guidance weight w: finite and >= 0 (0 = no guidance)."""
    return check_finite_scalar(value, name, minimum=0.0)


def check_preconditioner(values):
    """Refuse a preconditioner Lambda (a list of arrays) with NaN/inf or values <= 0: Lambda
    = 1 / (sqrt(v) + eps) is positive, and the instant method's step is scaled by it."""
    for index, value in enumerate(values):
        value = np.asarray(value)
        if not np.all(np.isfinite(value)):
            raise ValueError(
                f"preconditioner array {index} (shape {value.shape}) holds NaN or inf values; "
                "Lambda must be finite and positive: recompute it (keras_mm."
                "estimate_preconditioner) or pass preconditioner='identity'.")
        if value.size and value.min() <= 0:
            raise ValueError(
                f"preconditioner array {index} (shape {value.shape}) has values <= 0 (min "
                f"{value.min():.4g}); Lambda = 1 / (sqrt(v) + eps) must be positive: recompute "
                "it (keras_mm.estimate_preconditioner) or pass preconditioner='identity'.")
