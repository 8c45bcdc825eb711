"""The paper's distillation optimizer (Appendix B): Adam with beta_1 = 0 in one slot per weight
(`AdamWithoutMomentum`), warmup then linear decay (`WarmupLinearDecay`); `paper_adam` is both."""

import warnings

import keras
from keras import ops

from keras_mm.backend import fused_clip_by_global_norm, fused_velocity_update


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

    def _clip_gradients(self, grads):
        # Keras allows one of clipnorm, clipvalue and global_clipnorm.
        if self.global_clipnorm and self.global_clipnorm > 0:
            clipped = fused_clip_by_global_norm(grads, self.global_clipnorm)
            if clipped is not None:
                return clipped
        return super()._clip_gradients(grads)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # torch: all variables in one foreach update (keras_mm.backend.optimizers); JAX and
        # TensorFlow compile the per-variable update_step into one fused program anyway.
        velocities = [self._velocities[self._get_variable_index(variable)]
                      for variable in trainable_variables]
        if not fused_velocity_update(grads, trainable_variables, velocities, learning_rate,
                                     self.iterations + 1, self.beta_2, self.epsilon):
            super()._backend_update_step(grads, trainable_variables, learning_rate)

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

    Args:
        learning_rate: the peak rate.
        warmup_steps: steps of the linear warmup.
        total_steps: the step at which the rate reaches 0 (> warmup_steps); None keeps the
            peak rate after the warmup; "fit" ends the decay at the end of each `fit` of a
            model that reads it (`MomentMatchingDistiller`, through `DecayToEndOfFit`): the
            optimizer's step when that `fit` starts plus its epochs x steps per epoch. A
            `fit` shorter than the warmup decays from its first step (the rate is the warmup
            ramp times the fraction of the fit left).

    Example:
    ```python
    schedule = keras_mm.distillation.WarmupLinearDecay(1e-4, warmup_steps=1000,
                                                       total_steps="fit")
    ```
    """

    def __init__(self, learning_rate, warmup_steps=1000, total_steps=None):
        if total_steps not in (None, "fit") and int(total_steps) <= warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}), or "
                'be "fit" (decay to 0 at the end of fit) or None (no decay).'
            )
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = total_steps if total_steps in (None, "fit") else int(total_steps)
        self.fit_end = None  # with total_steps="fit": set by DecayToEndOfFit

    @property
    def end(self):
        """The step at which the rate reaches 0 (None: no decay)."""
        return self.fit_end if self.total_steps == "fit" else self.total_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = self.learning_rate * ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))
        end = self.end
        if end is not None:
            decay_steps = end - self.warmup_steps if end > self.warmup_steps else end
            rate = rate * ops.clip((end - step) / decay_steps, 0.0, 1.0)
        return rate

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


class DecayToEndOfFit(keras.callbacks.Callback):
    """Ends the linear decay of `WarmupLinearDecay(total_steps="fit")` schedules at the end
    of the current `fit` (Appendix B decays the rate to zero at the end of training).

    At the first epoch of each `fit`, the end is the optimizer's step count plus the
    epochs left times the steps per epoch (so a `fit` resumed by `BackupAndRestore` ends
    where the uninterrupted one does). The train function is rebuilt when the end changes,
    since compiled steps (JAX, TensorFlow) hold the schedule's constants.

    Args:
        schedules: `(optimizer, schedule)` pairs; the optimizer's `iterations` counts the
            schedule's steps.
    """

    def __init__(self, schedules):
        super().__init__()
        self.schedules = list(schedules)
        self.started = False

    def on_train_begin(self, logs=None):
        self.started = False

    def on_epoch_begin(self, epoch, logs=None):
        if self.started:
            return
        self.started = True
        steps = self.params.get("steps")
        if not steps:
            warnings.warn(
                "fit cannot tell how many steps it will run (a dataset of unknown length "
                "without steps_per_epoch), so the learning rate will not decay to zero at its "
                "end. Pass steps_per_epoch to fit, or total_steps to compile.", stacklevel=2)
            ends = [None] * len(self.schedules)
        else:
            left = (self.params["epochs"] - epoch) * int(steps)
            ends = [int(ops.convert_to_numpy(optimizer.iterations)) + left
                    for optimizer, _ in self.schedules]
        changed = False
        for (_, schedule), end in zip(self.schedules, ends):
            changed = changed or schedule.fit_end != end
            schedule.fit_end = end
        if changed and self.model.train_function is not None:
            self.model.make_train_function(force=True)


def fit_schedules(optimizers):
    """`(optimizer, schedule)` for each optimizer whose rate is a `WarmupLinearDecay` with
    `total_steps="fit"`."""
    # Keras has no public accessor for an optimizer's schedule (`learning_rate` is its value).
    pairs = [(optimizer, getattr(optimizer, "_learning_rate", None)) for optimizer in optimizers]
    return [(optimizer, schedule) for optimizer, schedule in pairs
            if isinstance(schedule, WarmupLinearDecay) and schedule.total_steps == "fit"]


# The peak learning rate of both methods' default optimizers (the paper does not give one).
# Measured for the instant method on digits (benchmarks/README.md, 4-step students, 1,000
# steps): FD 5.45 at 1e-4, 6.96 at 3e-4, 8.95 at 1e-3 (its former default).
DEFAULT_LEARNING_RATE = 1e-4
# Low-rank students (`lora_rank`): their deltas start at zero and move in a rank-r subspace,
# and want a larger rate. Measured on digits (rank 16, 8-step students, 1,000 steps): instant
# FD 3.31 at 1e-4, 2.24 at 3e-4, 2.60 at 1e-3; alternating 3.90 at 1e-4, 3.28 at 3e-4 (full
# students at 1e-4: 2.55 and 4.11; the full instant one 2.64 at 3e-4).
DEFAULT_LORA_LEARNING_RATE = 3e-4


def default_learning_rate(lora_rank=None):
    """The default peak rate: `DEFAULT_LORA_LEARNING_RATE` for low-rank students (a
    `lora_rank`), else `DEFAULT_LEARNING_RATE`."""
    return DEFAULT_LEARNING_RATE if lora_rank is None else DEFAULT_LORA_LEARNING_RATE


def paper_adam(learning_rate, warmup_steps=1000, total_steps="fit"):
    """Adam as in Appendix B: beta1 = 0, beta2 = 0.99, eps = 1e-12, warmup then linear decay
    to 0 at `total_steps` (see `WarmupLinearDecay`; "fit": at the end of each `fit`),
    global-norm clipping at 1, no EMA, no weight decay; without the (unused) first-moment
    slot."""
    return AdamWithoutMomentum(
        learning_rate=WarmupLinearDecay(learning_rate, warmup_steps, total_steps),
        beta_2=0.99,
        epsilon=1e-12,
        global_clipnorm=1.0,
    )
