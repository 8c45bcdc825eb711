"""Assertions on values inside a compiled TensorFlow train step."""

import keras

_BACKEND = keras.backend.backend()


def graph_assert(checks, tensors):
    """`tensors`, computed only once every `(condition, message)` of `checks` holds inside a
    TensorFlow graph (a failing one stops the step with `message`, before any update that
    depends on `tensors`).

    Only TensorFlow graphs need this: keras_mm checks concrete values on the host instead
    (PyTorch's eager step, JAX's batches before its jitted step), and elsewhere `tensors`
    come back unchanged. Under XLA (`jit_compile=True`, TensorFlow's default on a GPU)
    TensorFlow drops assertions, so there the step goes unchecked.

    Args:
        checks: a list of `(bool scalar tensor, str)`.
        tensors: a list of tensors.

    Returns:
        The list `tensors`.
    """
    if _BACKEND != "tensorflow" or not checks:
        return list(tensors)
    import tensorflow as tf

    if tf.executing_eagerly():
        return list(tensors)
    asserts = [tf.debugging.Assert(condition, [message]) for condition, message in checks]
    with tf.control_dependencies(asserts):
        return [tf.identity(tensor) for tensor in tensors]
