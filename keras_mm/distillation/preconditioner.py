"""The instant method's gradient preconditioner Lambda (paper §3.2-3.3).

Lambda is Adam's diagonal preconditioner 1 / (sqrt(v_hat) + eps), read from the teacher's
Adam state or estimated by accumulating Adam's second moment over teacher training batches
(without changing the teacher). It stays fixed during distillation.

A weight that never received a gradient (a class absent from the data, a label no batch
held) has v_hat = 0, and 1 / (0 + eps) would be 1e8-1e12: in a later nu batch that holds
the class, its entries would dominate J nu. Such entries get instead the median Lambda of
their variable's entries that did receive gradient (the whole teacher's median when none
did), so every Lambda is finite and no larger than the largest Lambda of a weight that was
trained (`finite_preconditioner`). Weights with gradient keep Adam's exact value.
"""

import keras
import numpy as np
from keras import ops

from keras_mm.backend import value_and_grad


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
    # Keras has no public accessor for Adam's second moments: `_velocities` and
    # `_get_variable_index` are read here only (tests/test_preconditioner.py fails if a Keras
    # release renames them, since the teacher then seems to have no Adam state).
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
    second_moments = [
        ops.convert_to_numpy(velocities[optimizer._get_variable_index(variable)]) / correction
        for variable in teacher.parameters
    ]
    return finite_preconditioner(second_moments, epsilon)


def finite_preconditioner(second_moments, epsilon):
    """Lambda = 1 / (sqrt(v_hat) + eps) per entry, finite where v_hat = 0.

    Args:
        second_moments: bias-corrected second moments v_hat, one array per variable.
        epsilon: Adam's epsilon.

    Returns:
        A list of float32 arrays. Entries with v_hat > 0 are Adam's 1 / (sqrt(v_hat) + eps);
        entries with v_hat = 0 (never a gradient) take the median of their variable's other
        entries, or the median over all variables when the whole variable had none. So no
        Lambda exceeds the largest Lambda of an entry that received gradient.
    """
    second_moments = [np.asarray(v, "float64") for v in second_moments]
    lambdas = [1.0 / (np.sqrt(v) + epsilon) for v in second_moments]
    seen = [lam[v > 0] for lam, v in zip(lambdas, second_moments)]
    everything = np.concatenate([values for values in seen if values.size] or [np.ones(1)])
    fallback = float(np.median(everything))
    result = []
    for lam, v, values in zip(lambdas, second_moments, seen):
        lam = np.where(v > 0, lam, np.median(values) if values.size else fallback)
        result.append(lam.astype("float32"))
    return result


def estimate_preconditioner(teacher, dataset, steps, beta_2=0.99, epsilon=1e-8):
    """Estimate Lambda = 1 / (sqrt(v_hat) + eps) from `steps` batches of teacher gradients.

    Runs the teacher's own training loss on `steps` batches, as `fit` does (training mode,
    condition dropout included, so the null label gets gradient), and accumulates Adam's
    second moment v <- beta_2 v + (1 - beta_2) g^2 (bias-corrected). The teacher's weights and
    its random state are not changed. Weights that get no gradient in these batches (a class
    absent from them) get a finite Lambda (see `finite_preconditioner`).

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
    # Condition dropout draws from the teacher's own generator: put its state back after.
    teacher_seed = teacher.seed_generator.state
    saved_seed = ops.convert_to_numpy(teacher_seed.value)
    taken = 0
    for data in dataset:
        if taken == int(steps):
            break
        images, condition = teacher.unpack_batch(data)
        images = ops.convert_to_tensor(images, "float32")
        condition = teacher.check_condition(condition)
        batch_size = images.shape[0]
        logsnr = teacher.schedule.logsnr(keras.random.uniform((batch_size,), seed=seed))
        noise = keras.random.normal(images.shape, seed=seed)
        condition = teacher.drop_condition(condition, batch_size)

        def loss_fn(images=images, logsnr=logsnr, noise=noise, condition=condition):
            loss = teacher.denoising_loss(images, logsnr, noise, condition, training=True)
            return ops.mean(loss), None

        _, _, grads = value_and_grad(loss_fn, variables)()
        for m, g in zip(second_moment, grads):
            g = ops.convert_to_numpy(g).astype("float64")
            m *= beta_2
            m += (1.0 - beta_2) * g**2
        taken += 1
    teacher_seed.assign(saved_seed)
    if taken < int(steps):
        raise ValueError(f"The dataset ran out after {taken} batches; {steps} were asked for.")
    correction = 1.0 - beta_2**taken
    return finite_preconditioner([m / correction for m in second_moment], epsilon)
