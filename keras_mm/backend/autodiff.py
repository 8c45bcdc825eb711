"""Gradients and JVPs of functions of Keras variables, on JAX, TensorFlow and PyTorch.

Functions here take *values* for a list of `keras.Variable`s and evaluate `fn` with the
variables bound to those values through a `keras.StatelessScope`, so any Keras layer or model
can be differentiated with respect to its weights without `stateless_call` plumbing. Values
of other variables already bound by an enclosing scope stay bound.
"""

import contextlib

import keras
from keras import ops

_BACKEND = keras.backend.backend()


def current_stateless_scope():
    """The innermost active `keras.StatelessScope`, or None.

    Keras 3.15 exports `keras.StatelessScope` but no accessor for the active one, which
    `bound` needs to inherit outer bindings (JAX's train step binds the whole state, and
    `value_and_grad` then rebinds the differentiated variables inside it). This is the one
    place keras_mm reads Keras's private module; tests/test_backend.py fails if it moves.
    """
    return keras.src.backend.common.stateless_scope.get_stateless_scope()


@contextlib.contextmanager
def bound(variables, values):
    """A `StatelessScope` binding `variables` to `values`, inheriting an enclosing scope."""
    outer = current_stateless_scope()
    scope = keras.StatelessScope(initialize_variables=False)
    if outer is not None:
        scope.state_mapping.update(outer.state_mapping)
    for variable, value in zip(variables, values):
        scope.state_mapping[id(variable)] = value
    with scope:
        yield scope


def variable_values(variables):
    """Current values of `variables`, honouring an enclosing `StatelessScope`."""
    return [ops.convert_to_tensor(v.value) for v in variables]


def _publish(updates):
    """Write non-differentiated variable updates (e.g. RNG seeds) back to the caller's state."""
    outer = current_stateless_scope()
    for variable, value in updates:
        if outer is not None:
            outer.add_update((variable, value))
        else:
            variable.assign(value)


def _collect_updates(scope, watch):
    return [
        (v, scope.state_mapping[id(v)])
        for v, before in watch
        if scope.state_mapping.get(id(v)) is not before
    ]


def value_and_grad(fn, variables, state_variables=()):
    """Return `f(*args) -> (loss, aux, grads)` with grads of `fn`'s loss w.r.t. `variables`.

    Args:
        fn: `fn(*args) -> (loss, aux)`; it may call any layer whose weights are in
            `variables`. `loss` is a scalar.
        variables: the `keras.Variable`s to differentiate with respect to.
        state_variables: non-trainable variables that `fn` may update (seed generators,
            normalisation statistics); their new values are written back afterwards.

    Returns:
        A function of `*args` returning `(loss, aux, grads)`, grads aligned with `variables`.
    """
    variables = list(variables)
    state_variables = [v for v in state_variables if id(v) not in {id(x) for x in variables}]

    def run(values, args):
        watch = [(v, ops.convert_to_tensor(v.value)) for v in state_variables]
        with bound(state_variables + variables, [w for _, w in watch] + list(values)) as scope:
            loss, aux = fn(*args)
        return loss, (aux, _collect_updates(scope, watch))

    if _BACKEND == "jax":
        import jax

        def wrapped(*args):
            values = variable_values(variables)
            (loss, (aux, updates)), grads = jax.value_and_grad(
                lambda vals: run(vals, args), has_aux=True
            )(values)
            _publish(updates)
            return loss, aux, grads

    elif _BACKEND == "tensorflow":
        import tensorflow as tf

        def wrapped(*args):
            values = variable_values(variables)
            with tf.GradientTape() as tape:
                tape.watch(values)
                loss, (aux, updates) = run(values, args)
            grads = tape.gradient(
                loss, values, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            # Embedding lookups give IndexedSlices; dense tensors, as on JAX and torch, so
            # that gradients can be averaged, scaled and used as JVP tangents.
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                     for g in grads]
            _publish(updates)
            return loss, aux, grads

    elif _BACKEND == "torch":
        import torch

        def wrapped(*args):
            values = [v.detach().requires_grad_(True) for v in variable_values(variables)]
            with torch.enable_grad():
                loss, (aux, updates) = run(values, args)
                grads = torch.autograd.grad(loss, values, allow_unused=True)
            grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, values)]
            aux = keras.tree.map_structure(
                lambda x: x.detach() if isinstance(x, torch.Tensor) else x, aux
            )
            _publish([(v, x.detach()) for v, x in updates])
            return loss.detach(), aux, grads

    else:
        raise NotImplementedError(
            f"keras_mm supports the jax, tensorflow and torch backends, not {_BACKEND!r}."
        )
    return wrapped


def jvp(fn, variables, tangents):
    """Jacobian-vector product of `fn()` w.r.t. `variables` along `tangents`.

    Args:
        fn: `fn() -> tensor`, calling layers whose weights are in `variables`.
        variables: the `keras.Variable`s (primal point: their current values).
        tangents: one tensor per variable.

    Returns:
        `(output, jvp)`: `fn()` and J_variables fn . tangents.
    """
    variables = list(variables)
    primals = variable_values(variables)

    def f(values):
        with bound(variables, values):
            return fn()

    from keras_mm.backend.remat import without_remat  # remat.py imports this module

    tangents = [ops.cast(t, p.dtype) for t, p in zip(tangents, primals)]
    with _forward_mode_attention(), without_remat():
        out, tangent_out = ops.jvp(f, (primals,), (tangents,))
    return out, tangent_out


def _forward_mode_attention():
    """On PyTorch, scaled dot-product attention in its composite (math) form, which forward
    mode differentiates: the fused kernels (e.g. CPU flash attention, used by KerasHub's
    MMDiT through `ops.dot_product_attention`) have no JVP."""
    if _BACKEND == "torch":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def no_grad():
    """A context in which PyTorch records nothing for autograd (sampling, frozen encoders);
    the other backends record nothing outside a gradient scope anyway."""
    if _BACKEND == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def stopped(fn, *args):
    """`fn(*args)` as a constant: `stop_gradient` on every output tensor.

    For forward passes whose outputs no gradient flows through (the generator's x~ in the
    auxiliary update, the teacher's and auxiliary's predictions in the generator update).
    On PyTorch `fn` also runs under `torch.no_grad()`, so autograd keeps no graph or saved
    activations for it; gradients are the same as with `stop_gradient` alone.

    Args:
        fn: a function of tensors returning a tensor or a structure of tensors.
        *args: its arguments.

    Returns:
        `fn(*args)`, with every tensor in it stopped.
    """
    with no_grad():
        outputs = fn(*args)
    return keras.tree.map_structure(
        lambda x: x if x is None else ops.stop_gradient(x), outputs
    )


def compile_with_variables(fn, variables, jit_compile=None):
    """Compile `fn(*args)`, which reads `variables`, for repeated eager calls.

    JAX: `jax.jit` with the variables' current values passed in (so new weights are used
    without recompiling); TensorFlow: `tf.function` (variables are captured), with XLA if
    `jit_compile` is True; torch: `fn` under `torch.no_grad()`.
    """
    variables = list(variables)
    if _BACKEND == "jax":
        import jax

        def pure(values, *args):
            with bound(variables, values):
                return fn(*args)

        jitted = jax.jit(pure)
        return lambda *args: jitted(variable_values(variables), *args)
    if _BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True, jit_compile=jit_compile)

    def without_grad(*args):
        # Sampling never needs gradients; without this torch records the whole
        # k-step graph (4.1 GB instead of 0.55 GB for 100 samples x 64 steps).
        with no_grad():
            return fn(*args)

    return without_grad
