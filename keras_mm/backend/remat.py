"""Rematerialisation of already-built layers, inside keras_mm's gradients over bound values.

`keras.RematScope` takes effect only on layers created inside it, and a distiller calls layers
that exist already (the teacher's, shared by LoRA students). `rematerialized(layers)` gives
those layers a checkpointed call for the duration of a `with` block: each keeps only its
inputs for the backward pass and recomputes its activations there (`checkpoint`:
`tf.recompute_grad` and `torch.utils.checkpoint` through `keras.remat`; on JAX a custom VJP
that XLA cannot run before the backward pass, unlike `jax.checkpoint`).

The layer's weights are passed to the checkpointed function as explicit inputs, read from the
enclosing `StatelessScope` (`value_and_grad` binds the differentiated values there, a LoRA
network binds theta + delta): `tf.recompute_grad` differentiates only with respect to its
inputs, so a weight value merely captured by the function would get no gradient.
"""

import contextlib

import keras

from keras_mm.backend.autodiff import _BACKEND, bound, variable_values
from keras_mm.backend.graph import computed_after

_DISABLED = []  # a stack: non-empty inside `without_remat()`


@contextlib.contextmanager
def without_remat():
    """Plain calls for rematerialized layers (forward-mode JVPs: PyTorch's checkpoint and
    TensorFlow's recompute_grad support reverse mode only)."""
    _DISABLED.append(True)
    try:
        yield
    finally:
        _DISABLED.pop()


def _recording():
    """Whether the backward pass may need activations (PyTorch: not under no_grad)."""
    if _DISABLED:
        return False
    if _BACKEND == "torch":
        import torch

        return torch.is_grad_enabled()
    return True


def checkpoint(fn):
    """`fn(*tensors)`, keeping only `tensors` for the backward pass: `keras.remat(fn)`.

    On JAX, `keras.remat` is `jax.checkpoint`, whose recomputations XLA:CPU schedules early,
    before the backward pass needs them, so that the recomputed activations are all live
    at once (a LoRA alternating step's compiled temporaries grew by 10%, not shrank). Here
    the recomputation is a custom VJP whose inputs depend on the incoming cotangent
    (`computed_after`): it cannot start before the backward pass reaches the layer. Values
    that `fn` closes over (a weight of another layer, bound by a `StatelessScope`) become
    explicit inputs (`jax.closure_convert`), so they get their gradients too.
    """
    if _BACKEND != "jax":
        return keras.remat(fn)
    import jax

    def checkpointed(*tensors):
        converted, hoisted = jax.closure_convert(fn, *tensors)
        return _recomputed_in_backward(converted, *tensors, *hoisted)

    return checkpointed


if _BACKEND == "jax":
    import functools

    import jax

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def _recomputed_in_backward(fn, *tensors):
        return fn(*tensors)

    def _keep_inputs(fn, *tensors):
        return fn(*tensors), tensors

    def _recompute(fn, tensors, cotangent):
        _, pullback = jax.vjp(fn, *computed_after(tensors, cotangent))
        return pullback(cotangent)

    _recomputed_in_backward.defvjp(_keep_inputs, _recompute)


def _checkpointed(layer, call):
    """`call` (the layer's own) with its weights and tensor arguments as checkpoint inputs."""
    variables = [v for v in layer.weights
                 if "float" in keras.backend.standardize_dtype(v.dtype)]

    def wrapped(*args, **kwargs):
        if not _recording():
            return call(*args, **kwargs)
        leaves = keras.tree.flatten((args, kwargs))
        # Float tensors only: integer ones (labels) have no gradient, and TensorFlow warns.
        positions = [i for i, leaf in enumerate(leaves) if keras.ops.is_tensor(leaf)
                     and "float" in keras.backend.standardize_dtype(leaf.dtype)]
        count = len(variables)

        def pure(*tensors):
            filled = list(leaves)
            for position, tensor in zip(positions, tensors[count:]):
                filled[position] = tensor
            call_args, call_kwargs = keras.tree.pack_sequence_as((args, kwargs), filled)
            with bound(variables, tensors[:count]):
                return call(*call_args, **call_kwargs)

        return checkpoint(pure)(*variable_values(variables),
                                *[leaves[i] for i in positions])

    return wrapped


@contextlib.contextmanager
def rematerialized(layers):
    """Within the block, each of `layers` keeps only its inputs for the backward pass.

    Args:
        layers: built Keras layers, e.g. a network's blocks (`network.layers`). Their weights
            may be bound by an enclosing `StatelessScope`; they must not update state in
            their call (no batch-norm statistics in training mode).

    Example:
    ```python
    with rematerialized(network.layers):
        loss, aux, grads = value_and_grad(loss_fn, variables)()
    ```
    """
    # Once per layer; a layer already rematerialized by an enclosing block stays as it is.
    layers = [layer for layer in {id(layer): layer for layer in layers}.values()
              if "call" not in vars(layer)]
    for layer in layers:
        # An instance attribute shadows the class's `call`, which `Layer.__call__` reads;
        # object.__setattr__ keeps Keras's attribute tracking (and torch's Module) out of it.
        object.__setattr__(layer, "call", _checkpointed(layer, layer.call))
    try:
        yield
    finally:
        for layer in layers:
            object.__delattr__(layer, "call")
