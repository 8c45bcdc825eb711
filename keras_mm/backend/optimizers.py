"""Optimizer updates over all variables at once on torch.

Keras's generic `Optimizer` applies `update_step` one variable at a time: a dozen Keras ops
per variable, each a Python dispatch on eager torch (XLA fuses them on JAX and TensorFlow).
Keras's own torch Adam uses `torch._foreach_*` instead
(`keras/src/backend/torch/optimizers/torch_adam.py`); these functions do the same for
`AdamWithoutMomentum` and for global-norm clipping. On `uvit_digits` (78 variables) one
`apply` went from 15.6 to 5.0 ms on an idle 2-core CPU (`benchmarks/README.md`)."""

import keras

_TORCH = keras.backend.backend() == "torch"


def fused_velocity_update(gradients, variables, velocities, learning_rate, step, beta_2,
                          epsilon):
    """On torch, `v = beta_2 v + (1 - beta_2) g^2` and
    `w -= learning_rate sqrt(1 - beta_2^step) g / (sqrt(v) + epsilon)` for every variable in
    one `torch._foreach_*` call per operation; elsewhere nothing.

    Args:
        gradients: tensors, one per variable.
        variables: the `keras.Variable`s to update.
        velocities: their second-moment `keras.Variable`s, in the same order.
        learning_rate: the rate (scalar).
        step: the step count, from 1 (scalar).
        beta_2: decay of the second moment.
        epsilon: added to sqrt(v).

    Returns:
        True when the variables were updated (torch); False where the caller should apply
        its per-variable update instead.
    """
    if not _TORCH or not variables:
        return False
    import torch

    with torch.no_grad():
        values = [variable.value for variable in variables]
        v_list = [velocity.value for velocity in velocities]
        grads = [keras.ops.convert_to_tensor(g).to(value.dtype)
                 for g, value in zip(gradients, values)]
        dtype = values[0].dtype
        step = keras.ops.convert_to_tensor(step).to(dtype)
        alpha = (keras.ops.convert_to_tensor(learning_rate).to(dtype)
                 * torch.sqrt(1 - torch.pow(torch.tensor(beta_2, dtype=dtype), step)))
        torch._foreach_mul_(v_list, beta_2)
        torch._foreach_add_(v_list, torch._foreach_mul(grads, grads), alpha=1 - beta_2)
        denominators = torch._foreach_add(torch._foreach_sqrt(v_list), epsilon)
        torch._foreach_add_(
            values, torch._foreach_div(torch._foreach_mul(grads, alpha), denominators),
            alpha=-1)
    return True


def fused_clip_by_global_norm(gradients, clip_norm):
    """On torch, `gradients` scaled to a global norm of at most `clip_norm` as Keras's
    `clip_by_global_norm` does (NaN when the norm is not finite), with one
    `torch._foreach_norm`; elsewhere None (the caller clips with Keras ops).

    Args:
        gradients: tensors (None entries are kept).
        clip_norm: the largest global norm.

    Returns:
        The clipped gradients, or None.
    """
    if not _TORCH:
        return None
    import torch

    present = [g for g in gradients if g is not None]
    if not present:
        return list(gradients)
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present)))
        scale = clip_norm * torch.minimum(1.0 / norm, torch.tensor(1.0 / clip_norm))
        scale = scale + (norm - norm)
        scaled = iter(torch._foreach_mul(present, scale))
    return [None if g is None else next(scaled) for g in gradients]
