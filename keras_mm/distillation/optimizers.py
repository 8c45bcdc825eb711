"""The paper's distillation optimizer (Appendix B): Adam with beta_1 = 0 in one slot per weight
(`AdamWithoutMomentum`), warmup then linear decay (`WarmupLinearDecay`); `paper_adam` is both."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_mm")
class AdamWithoutMomentum(keras.optimizers.Adam):
    """Adam with beta_1 = 0, keeping only the second moment v.

    With beta_1 = 0 Adam's first moment is the current gradient, yet Keras's `Adam` still
    allocates it: two slots per weight. This subclass makes the same updates,
    `w -= lr sqrt(1 - beta_2^t) g / (sqrt(v) + epsilon)` with
    `v = beta_2 v + (1 - beta_2) g^2`, with one slot, so distillation holds the paper's 5P
    (alternating: three networks, two optimizer states of v only) and 4P (instant) instead
    of 7P and 5P.

    Args:
        learning_rate: a float or a `LearningRateSchedule`.
        beta_2: decay of the second-moment estimate.
        epsilon: added to sqrt(v).
        name: the optimizer's name.
        **kwargs: other `keras.optimizers.Optimizer` arguments (`global_clipnorm`,
            `clipnorm`, `weight_decay`, ...).

    Example:
    ```python
    optimizer = keras_mm.distillation.AdamWithoutMomentum(1e-4, beta_2=0.99, epsilon=1e-12,
                                                          global_clipnorm=1.0)
    ```
    """

    def __init__(self, learning_rate=0.001, beta_2=0.999, epsilon=1e-7,
                 name="adam_without_momentum", **kwargs):
        beta_1 = kwargs.pop("beta_1", 0.0)
        if beta_1 != 0.0 or kwargs.pop("amsgrad", False):
            raise ValueError(
                f"AdamWithoutMomentum is Adam with beta_1=0 and no AMSGrad; got beta_1={beta_1}."
                " Use keras.optimizers.Adam for a first moment."
            )
        super().__init__(learning_rate=learning_rate, beta_1=0.0, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=False, name=name, **kwargs)

    def build(self, var_list):
        if self.built:
            return
        keras.optimizers.Optimizer.build(self, var_list)
        self._momentums = []
        self._velocities = self.add_optimizer_variables(var_list, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), local_step)
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        alpha = lr * ops.sqrt(1 - beta_2_power)
        self.assign_sub(
            variable, ops.divide(ops.multiply(gradient, alpha), ops.add(ops.sqrt(v), self.epsilon))
        )


@keras.saving.register_keras_serializable(package="keras_mm")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup over `warmup_steps`, then linear decay to 0 at `total_steps`.

    With `total_steps=None` the rate stays at `learning_rate` after the warmup.
    """

    def __init__(self, learning_rate, warmup_steps=1000, total_steps=None):
        if total_steps is not None and total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})."
            )
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = None if total_steps is None else int(total_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = self.learning_rate * ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))
        if self.total_steps is not None:
            remaining = (self.total_steps - step) / (self.total_steps - self.warmup_steps)
            rate = rate * ops.clip(remaining, 0.0, 1.0)
        return rate

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def paper_adam(learning_rate, warmup_steps=1000, total_steps=None):
    """Adam as in Appendix B: beta1 = 0, beta2 = 0.99, eps = 1e-12, warmup then linear decay,
    global-norm clipping at 1, no EMA, no weight decay; without the (unused) first-moment
    slot."""
    return AdamWithoutMomentum(
        learning_rate=WarmupLinearDecay(learning_rate, warmup_steps, total_steps),
        beta_2=0.99,
        epsilon=1e-12,
        global_clipnorm=1.0,
    )
