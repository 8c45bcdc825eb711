"""The instant method's gradient preconditioner Lambda (paper §3.2-3.3).

Lambda is Adam's diagonal preconditioner 1 / (sqrt(v_hat) + eps), read from the teacher's
Adam state or estimated by accumulating Adam's second moment over teacher training batches
(without changing the teacher). It stays fixed during distillation.
"""

import keras
import numpy as np
from keras import ops

from keras_mm.backend import value_and_grad
from keras_mm.models.diffusion_model import unpack_batch


def preconditioner_from_adam(teacher, epsilon=None):
    """Lambda = 1 / (sqrt(v_hat) + eps) from the Keras Adam that trained `teacher`.

    Args:
        teacher: a `DiffusionModel` compiled with a `keras.optimizers.Adam` (or AdamW) that
            has taken at least one step (e.g. right after `fit`, or loaded from `.keras`).
        epsilon: overrides the optimizer's epsilon.

    Returns:
        A list of numpy arrays, one per variable of `teacher.parameters`.
    """
    optimizer = getattr(teacher, "optimizer", None)
    velocities = getattr(optimizer, "_velocities", None)
    if velocities is None or not isinstance(optimizer, keras.optimizers.Adam):
        raise ValueError(
            "The teacher has no Keras Adam state to take the preconditioner from (it was "
            f"compiled with {type(optimizer).__name__}). Pass "
            "preconditioner=keras_mm.estimate_preconditioner(teacher, dataset, steps=...)."
        )
    steps = int(ops.convert_to_numpy(optimizer.iterations))
    if steps < 1:
        raise ValueError(
            "The teacher's Adam has taken no steps, so its second moments are zero. Train it "
            "first or use keras_mm.estimate_preconditioner(teacher, dataset, steps=...)."
        )
    epsilon = optimizer.epsilon if epsilon is None else epsilon
    correction = 1.0 - float(optimizer.beta_2) ** steps
    lambdas = []
    for variable in teacher.parameters:
        v = ops.convert_to_numpy(velocities[optimizer._get_variable_index(variable)])
        lambdas.append(1.0 / (np.sqrt(v / correction) + epsilon))
    return lambdas


def estimate_preconditioner(teacher, dataset, steps, beta_2=0.99, epsilon=1e-8):
    """Estimate Lambda = 1 / (sqrt(v_hat) + eps) from `steps` batches of teacher gradients.

    Runs the teacher's own training loss on `steps` batches and accumulates Adam's second
    moment v <- beta_2 v + (1 - beta_2) g^2 (bias-corrected); the teacher's weights are not
    changed.

    Args:
        teacher: a built `DiffusionModel`.
        dataset: an iterable of batches as accepted by `DiffusionModel.fit` (e.g. a
            `tf.data.Dataset`, or a list of `(images, labels)` tuples).
        steps: number of batches to use (>= 1).
        beta_2, epsilon: Adam's constants.

    Returns:
        A list of numpy arrays aligned with `teacher.parameters`.

    Example:
    ```python
    lambdas = keras_mm.estimate_preconditioner(teacher, [(images, labels)] * 10, steps=10)
    distiller = keras_mm.MomentMatchingDistiller(teacher, method="instant",
                                                  preconditioner=lambdas)
    ```
    """
    if int(steps) < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}.")
    variables = teacher.parameters
    second_moment = [np.zeros(v.shape, "float64") for v in variables]
    seed = keras.random.SeedGenerator(0)
    taken = 0
    for data in dataset:
        if taken == int(steps):
            break
        images, condition = unpack_batch(data)
        images = ops.convert_to_tensor(images, "float32")
        condition = teacher.check_condition(condition)
        batch_size = images.shape[0]
        logsnr = teacher.schedule.logsnr(keras.random.uniform((batch_size,), seed=seed))
        noise = keras.random.normal(images.shape, seed=seed)

        def loss_fn():
            loss = teacher.denoising_loss(images, logsnr, noise, condition, training=False)
            return ops.mean(loss), None

        _, _, grads = value_and_grad(loss_fn, variables)()
        for m, g in zip(second_moment, grads):
            g = ops.convert_to_numpy(g).astype("float64")
            m *= beta_2
            m += (1.0 - beta_2) * g**2
        taken += 1
    if taken < int(steps):
        raise ValueError(f"The dataset ran out after {taken} batches; {steps} were asked for.")
    correction = 1.0 - beta_2**taken
    return [(1.0 / (np.sqrt(m / correction) + epsilon)).astype("float32") for m in second_moment]
