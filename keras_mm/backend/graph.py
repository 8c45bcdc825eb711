"""Order and assertions inside a compiled train step."""

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


def computed_after(tensors, dependencies):
    """`tensors`, bit for bit, but computed from `dependencies` as a compiler sees them.

    A compiled step (XLA on JAX, TensorFlow graphs) runs independent work in any order, and
    XLA's scheduler may start a later computation's forward pass, and keep its activations,
    while an earlier one still holds its own: the alternating distillation step then holds
    two networks' activations at once, and a rematerialised layer's recomputation may run
    early instead of in the backward pass. `jax.lax.optimization_barrier` does not order
    them on XLA:CPU, which removes barriers before it schedules. A data dependence does:
    `tensors + z`, where `z` is -0.0 computed from `dependencies` (x + -0.0 == x for every
    float x, -0.0 and NaN included, subnormals aside, which XLA:CPU flushes to zero in any
    arithmetic; z is -0.0 even for infinite or NaN dependencies).
    PyTorch runs in program order: there `tensors` come back as they are.

    Args:
        tensors: a structure of tensors; its float ones get the dependence.
        dependencies: a structure of float tensors that must exist first.

    Returns:
        `tensors`, same structure and values.
    """
    floats = [d for d in keras.tree.flatten(dependencies)
              if d is not None and "float" in keras.backend.standardize_dtype(d.dtype)]
    if _BACKEND == "torch" or not floats:
        return tensors
    ops = keras.ops
    smallest = ops.min(ops.stack([ops.min(ops.abs(ops.cast(d, "float32"))) for d in floats]))
    smallest = ops.stop_gradient(smallest)
    # where(): finite and below 1, so that * 0.0 is +0.0 (inf * 0 and NaN * 0 are NaN).
    zero = ops.negative(ops.where(smallest < 1.0, smallest, 0.0) * 0.0)

    def depend(tensor):
        if tensor is None or "float" not in keras.backend.standardize_dtype(tensor.dtype):
            return tensor
        return tensor + ops.cast(zero, tensor.dtype)

    return keras.tree.map_structure(depend, tensors)
