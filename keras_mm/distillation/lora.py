"""Students as low-rank deltas on the teacher's own weights: one copy of theta in memory.

`LoRANetwork(base, rank)` is a denoiser network whose weights are `base`'s plus trainable
deltas: A B (rank `rank`) for each targeted kernel, a full delta for each bias and
normalisation vector (they are small), nothing for the rest (embeddings stay the teacher's).
It evaluates `base` itself with its variables bound to theta + delta (a `StatelessScope`,
`keras_mm.backend.bound`), so no second copy of theta exists: only the merged kernel of the
layer being computed, transiently. `base` is held without Keras tracking it, so the
network's own `weights` are the deltas alone, and freezing or saving it never touches theta
(the distiller saves theta once, as its teacher).

    network = LoRANetwork(teacher.network, rank=16)
    student = keras_mm.DiffusionModel(network, schedule=teacher.schedule)
    plain = merge_lora(student)  # a DiffusionModel with theta + delta in plain weights
"""

import math

import keras
import numpy as np
from keras import ops

from keras_mm.backend.autodiff import bound


def default_lora_targets(variable):
    """Every matrix or convolution kernel: Dense, EinsumDense and Conv layers' `kernel`."""
    return variable.path.split("/")[-1] == "kernel" and len(variable.shape) >= 2


def _matches(targets, variable):
    if targets is None:
        return default_lora_targets(variable)
    if callable(targets):
        return bool(targets(variable))
    return any(name in variable.path for name in targets)


class _Untracked:
    """Holds the base network and its parameters out of sight of Keras's tracking."""

    def __init__(self, network, parameters):
        self.network = network
        self.parameters = parameters


@keras.saving.register_keras_serializable(package="keras_mm")
class LoRANetwork(keras.Model):
    """A denoiser network: `base`'s weights plus trainable low-rank deltas.

    Kernels of shape [..., out] are treated as matrices [prod(...), out]: their delta is
    `scale * A @ B` with A [prod(...), rank] (He-uniform) and B [rank, out] (zeros), so the
    network starts equal to `base`. Other parameters of rank <= 1 (biases, norms) get a full
    delta (zeros); the remaining ones (embeddings) are `base`'s, unchanged.

    Args:
        base: the network whose weights are shared (a built `keras.Model` denoiser with
            `image_shape`, `num_classes`, `text_dim`), e.g. the teacher's.
        rank: the deltas' rank r (>= 1).
        targets: which kernels get deltas: None (every kernel of rank >= 2: Dense,
            EinsumDense, Conv), a list of substrings of variable paths (e.g.
            `["transformer_"]`), or a callable `variable -> bool`.
        alpha: the deltas' scale is `alpha / rank` (default: `rank`, scale 1, as Keras's
            own LoRA).
        seed: seed of the A matrices' initialisation (None: Keras's global random state).

    Example:
    ```python
    network = LoRANetwork(teacher.network, rank=16)
    student = keras_mm.DiffusionModel(network, schedule=teacher.schedule)
    ```
    """

    def __init__(self, base, rank, targets=None, alpha=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"lora_rank must be an integer >= 1; got {rank!r}.")
        if not getattr(base, "built", False) or not base.weights:
            raise ValueError("LoRANetwork needs a built base network (call it once first).")
        self.rank = rank
        self.targets = targets
        self.alpha = float(rank if alpha is None else alpha)
        self.image_shape = tuple(base.image_shape)
        self.num_classes = getattr(base, "num_classes", None)
        self.text_dim = getattr(base, "text_dim", None)
        if hasattr(base, "text_length"):
            self.text_length = base.text_length
        # The base network's parameters, also when it is frozen (as a distiller's teacher).
        trainable = base.trainable
        base.trainable = True
        self._base = _Untracked(base, list(base.trainable_variables))
        base.trainable = trainable
        self._deltas = {}  # id(base variable) -> ("lora", A, B) or ("full", delta)
        self.lora_a, self.lora_b, self.full_deltas = [], [], []
        for index, variable in enumerate(self._base.parameters):
            name = variable.path.replace("/", "_")
            if _matches(targets, variable):
                fan_in = math.prod(variable.shape[:-1])
                initializer = keras.initializers.HeUniform(
                    seed=None if seed is None else seed * 100003 + index)
                a = self.add_weight(shape=(fan_in, rank), initializer=initializer,
                                    name=f"{name}_lora_a")
                b = self.add_weight(shape=(rank, variable.shape[-1]), initializer="zeros",
                                    name=f"{name}_lora_b")
                self.lora_a.append(a)
                self.lora_b.append(b)
                self._deltas[id(variable)] = ("lora", a, b)
            elif len(variable.shape) <= 1:
                delta = self.add_weight(shape=variable.shape, initializer="zeros",
                                        name=f"{name}_delta")
                self.full_deltas.append(delta)
                self._deltas[id(variable)] = ("full", delta)
        if not self.lora_a:
            raise ValueError(
                "lora_targets matched no kernel of the network; pass substrings of variable "
                "paths (e.g. ['transformer_']) or a callable variable -> bool.")
        self.built = True

    @property
    def base(self):
        """The shared network (theta)."""
        return self._base.network

    def delta(self, variable):
        """theta's delta for `variable` (a tensor of its shape), or None."""
        entry = self._deltas.get(id(variable))
        if entry is None:
            return None
        if entry[0] == "full":
            return ops.convert_to_tensor(entry[1].value)
        _, a, b = entry
        product = ops.matmul(ops.convert_to_tensor(a.value), ops.convert_to_tensor(b.value))
        scale = self.alpha / self.rank
        if scale != 1.0:  # one op fewer per kernel at the default alpha (eager torch)
            product = product * scale
        return ops.reshape(product, variable.shape)

    def merged_values(self):
        """theta + delta for each of the base's parameters (in `base.trainable_variables`
        order of an unfrozen base)."""
        values = []
        for variable in self._base.parameters:
            value = ops.convert_to_tensor(variable.value)
            delta = self.delta(variable)
            if delta is not None:
                if delta.dtype != value.dtype:  # a bfloat16 teacher, float32 deltas
                    delta = ops.cast(delta, value.dtype)
                value = value + delta
            values.append(value)
        return values

    def call(self, inputs, training=False):
        with bound(self._base.parameters, self.merged_values()):
            return self.base(inputs, training=training)

    def get_config(self):
        raise ValueError(
            "A LoRANetwork shares its teacher's weights and is saved with its distiller; to "
            "save the student alone, save keras_mm.distillation.merge_lora(distiller.generator) "
            "(plain weights, theta + delta).")


def merge_lora(model):
    """A plain `DiffusionModel` equal to `model` with its deltas merged into the weights.

    Args:
        model: a `DiffusionModel` (e.g. `distiller.generator`); returned as is when its
            network is not a `LoRANetwork`.

    Returns:
        A `DiffusionModel` whose network is a fresh copy of the base network holding
        theta + delta (one more copy of theta: for saving and export, not for training).
    """
    network = model.network
    if not isinstance(network, LoRANetwork):
        return model
    base = network.base
    config = base.get_config()
    config["trainable"] = True  # the base is often a frozen teacher's network
    plain = base.__class__.from_config(config)
    merged = model.with_network(plain)
    merged.trainable = True
    values = {id(v): ops.convert_to_numpy(value)
              for v, value in zip(network._base.parameters, network.merged_values())}
    plain.set_weights([values.get(id(v), np.asarray(ops.convert_to_numpy(v.value)))
                       for v in base.weights])
    return merged


def in_dtype(model, dtype="bfloat16"):
    """A copy of `DiffusionModel` `model` whose network holds and computes in `dtype`.

    For a frozen teacher of a LoRA distiller held in bfloat16 (half the memory of theta);
    the distiller's deltas, their optimizer state, Lambda and the losses stay float32.
    The copy is built under the global dtype policy `dtype` (layers take their policy when
    they are created), then given `model`'s weights, cast.

    Args:
        model: a built `keras_mm.DiffusionModel` (e.g. a float32 teacher).
        dtype: a Keras dtype policy name, e.g. "bfloat16".

    Returns:
        A new `DiffusionModel`; drop `model` afterwards to free its float32 weights.

    Example:
    ```python
    teacher = keras_mm.distillation.lora.in_dtype(teacher, "bfloat16")
    distiller = keras_mm.MomentMatchingDistiller(teacher, lora_rank=16)
    ```
    """
    network = model.network
    config = network.get_config()
    config.pop("dtype", None)  # the network's own policy: take the global one below
    config["trainable"] = True
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        copy = network.__class__.from_config(config)
        result = model.with_network(copy)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(network.get_weights())
    return result


def lora_parameter_count(network):
    """Trainable values of a `LoRANetwork` (its deltas)."""
    return sum(math.prod(v.shape) for v in network.weights)
