"""What a diffusion model is conditioned on, one class per kind.

A kind is declared by its `signature`: the keys of the condition dict, each with its shape
(batch first; `"B"`, `"L"`... name sizes that must agree across keys, ints are fixed) and its
dtype. From that, the base class checks conditions, drops them for classifier-free guidance,
repeats them to N evaluation samples and gives the TensorFlow input signature of an exported
sampler. A kind adds its null value and, where it has one, a check of values (the label
range, the token vocabulary) and clearer messages. A new kind (e.g. SD3's `context` and
`pooled_projection`) is one new subclass, passed as `DiffusionModel(..., conditioning=...)`.
"""

import keras
import numpy as np
from keras import ops

from keras_mm import checks


def _with_shapes(condition):
    """A copy of the condition dict, lists and scalars made NumPy arrays."""
    return {key: value if hasattr(value, "shape") else np.asarray(value)
            for key, value in (condition or {}).items()}


def _format_shape(shape):
    return "[" + ", ".join(str(size) for size in shape) + "]"


class Conditioning:
    """Base class of a condition kind: a signature and what follows from it.

    Subclasses set `name`, `keys` (the condition dict's keys, in signature order),
    `misplaced` (the one line shown when these keys reach a model without this kind) and
    implement `signature` and `null`.

    Example:
    ```python
    conditioning = keras_mm.models.conditioning.LabelConditioning(num_classes=10)
    conditioning.check({"labels": [0, 3]}, batch_size=2)  # {"labels": int32 tensor}
    conditioning.null(2)  # {"labels": [10, 10]}: the null label
    conditioning.repeat(None, 4)  # {"labels": [0, 1, 2, 3]}: balanced evaluation labels
    ```
    """

    name = "base"
    keys = ()
    unit = "example"  # one row of the condition, in messages ("label", "caption")
    misplaced = ""
    hint = ""  # appended to the message when some of `keys` are missing

    @property
    def signature(self):
        """`{key: (shape, dtype)}`, the shape batch first (e.g. `("B", "L", 16)`)."""
        return {}

    def null(self, batch_size):
        """The unconditional input of `batch_size` examples (a dict of tensors)."""
        raise NotImplementedError

    def missing_message(self):
        return f"This model is {self.name}-conditional: pass {' and '.join(self.keys)}."

    def fixed_size_message(self, key, axis, size, expected):
        return (f"{key} has size {size} on axis {axis}, but this model takes {expected} "
                f"({key} {_format_shape(self.signature[key][0])}).")

    def check_values(self, values):
        """Check the concrete values `{key: np.ndarray}` (e.g. a range); raise ValueError."""

    def graph_value_checks(self, condition):
        """`check_values` on symbolic tensors: a list of `(bool scalar tensor, message)`,
        asserted inside a TensorFlow train step (`check` gates the condition on them)."""
        return []

    # ------------------------------------------------------------------ checks
    def validate(self, condition, batch_size=None):
        """Raise a one-line ValueError unless `condition` fits this kind (no conversion)."""
        condition = _with_shapes(condition)
        foreign = [key for key in condition if key not in self.keys]
        if foreign:
            raise ValueError(_misplaced_message(foreign, self))
        if self.keys and not condition:
            raise ValueError(self.missing_message())
        missing = [key for key in self.keys if key not in condition]
        if missing:
            given = " and ".join(key for key in self.keys if key in condition)
            raise ValueError(
                f"{self.name.capitalize()} conditioning needs {' and '.join(self.keys)}; got "
                f"{given} without {' and '.join(missing)}{self.hint}."
            )
        self.check_shapes(condition, batch_size)
        if type(self).check_values is Conditioning.check_values:
            return  # no value check: spare the copy to NumPy
        values = {key: checks.concrete(value) for key, value in condition.items()}
        if all(value is not None for value in values.values()):
            self.check_values(values)

    def check(self, condition, batch_size=None):
        """`validate`, then the condition as tensors of the signature's dtypes."""
        condition = _with_shapes(condition)
        self.validate(condition, batch_size)
        condition = {key: ops.cast(condition[key], dtype)
                     for key, (_, dtype) in self.signature.items()}
        if any(checks.concrete(value) is None for value in condition.values()):
            from keras_mm.backend import graph_assert

            graph_checks = [(holds, checks.BATCH_PREFIX + message)
                            for holds, message in self.graph_value_checks(condition)]
            condition = dict(zip(condition, graph_assert(graph_checks, condition.values())))
        return condition

    def check_shapes(self, condition, batch_size=None):
        """Ranks, fixed sizes, and sizes named alike (`"B"`, `"L"`) agreeing across keys;
        `None` sizes (traced functions) pass."""
        sizes, owners = {}, {}
        if batch_size is not None:
            sizes["B"], owners["B"] = int(batch_size), None
        for key, (expected, _) in self.signature.items():
            shape = tuple(condition[key].shape)
            if len(shape) != len(expected):
                raise ValueError(
                    f"{key} must be {_format_shape(expected)}; got shape {shape}."
                )
            for axis, (want, size) in enumerate(zip(expected, shape)):
                if size is None:
                    continue
                if isinstance(want, int):
                    if size != want:
                        raise ValueError(self.fixed_size_message(key, axis, size, want))
                elif want not in sizes:
                    sizes[want], owners[want] = size, key
                elif sizes[want] != size:
                    raise ValueError(self._disagreement(key, shape, want, owners[want],
                                                        sizes[want], condition))

    def _disagreement(self, key, shape, symbol, owner, size, condition):
        if owner is None:
            return f"Got {shape[0]} {key} for a batch of {size} images."
        shapes = ", ".join(f"{k} {_format_shape(s)}" for k, (s, _) in self.signature.items())
        return (f"{owner} {tuple(condition[owner].shape)} and {key} {shape} must agree on "
                f"{symbol} ({shapes}).")

    def batch_size(self, condition):
        """The number of examples in `condition` (its first value's), or None when empty."""
        for value in (condition or {}).values():
            return int(value.shape[0])
        return None

    # ------------------------------------------------------------------ training and evaluation
    def drop(self, condition, keep, null=None):
        """Classifier-free guidance dropout: example i keeps its condition where `keep[i]`
        (bool [B]) and gets the null condition (`null`, default `self.null`) elsewhere."""
        if not condition:
            return condition
        if null is None:
            null = self.null(ops.shape(keep)[0])
        dropped = {}
        for key, value in condition.items():
            mask = ops.reshape(keep, (-1,) + (1,) * (len(value.shape) - 1))
            dropped[key] = ops.where(mask, value, ops.cast(null[key], value.dtype))
        return dropped

    def repeat(self, condition, num_samples):
        """The condition of `num_samples` evaluation samples: the rows of `condition`
        cycled (`row i = condition[i % n]`), as NumPy arrays.

        Args:
            condition: a condition dict of n >= 1 examples.
            num_samples: N, the number of samples to draw.

        Returns:
            A dict of NumPy arrays with N rows (`{}` for an unconditional model).
        """
        if not self.keys:
            self.validate(condition)
            return {}
        if not isinstance(condition, dict) or not condition:
            raise ValueError(
                f"An evaluation of a {self.name}-conditional model needs its condition: a "
                f"dict with {' and '.join(self.keys)}; got {type(condition).__name__}."
            )
        values = {key: np.asarray(ops.convert_to_numpy(value)) for key, value in condition.items()}
        self.validate(values)
        rows = np.arange(int(num_samples)) % self.batch_size(values)
        return {key: value[rows] for key, value in values.items()}

    # ------------------------------------------------------------------ export
    def export_specs(self):
        """The `tf.TensorSpec`s of the condition's inputs of an exported sampler."""
        import tensorflow as tf

        return [
            tf.TensorSpec([s if isinstance(s, int) else None for s in shape], dtype, name=key)
            for key, (shape, dtype) in self.signature.items()
        ]

    def polymorphic_shapes(self):
        """jax2tf's shapes of the inputs: named sizes become shared symbols (`"b"` is the
        batch of every input)."""
        return ["(" + ", ".join(str(s).lower() for s in shape) + ")"
                for shape, _ in self.signature.values()]

    def export_checks(self, tensors, batch_size=None, what="noise"):
        """TensorFlow assertions on an exported sampler's condition inputs `{key: tensor}`:
        B >= 1, named sizes agreeing, `batch_size` (of `what`) equal to B, and the values."""
        import tensorflow as tf

        first = self.keys[0]
        first_shape = self.signature[first][0]
        checks = [tf.debugging.assert_positive(
            tf.shape(tensors[first])[0],
            message=f"{first} must hold at least one {self.unit} (B >= 1).")]
        for key in self.keys[1:]:
            shape = self.signature[key][0]
            pairs = [(axis, first_shape.index(s)) for axis, s in enumerate(shape)
                     if isinstance(s, str) and s in first_shape]
            checks.append(tf.debugging.assert_equal(
                tf.gather(tf.shape(tensors[key]), [a for a, _ in pairs]),
                tf.gather(tf.shape(tensors[first]), [b for _, b in pairs]),
                message=f"{key} must have the shape {_format_shape(shape)} of {first} "
                f"{_format_shape(first_shape)}."))
        if batch_size is not None:
            checks.append(tf.debugging.assert_equal(
                batch_size, tf.shape(tensors[first])[0],
                message=f"{what} must have the batch size of the {first.replace('_', ' ')}."))
        return checks + self.export_value_checks(tensors)

    def export_value_checks(self, tensors):
        """TensorFlow assertions on the values (the graph form of `check_values`)."""
        return []

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


def _misplaced_message(keys, conditioning):
    """The one line for condition keys that `conditioning` does not take."""
    for kind in _all_kinds():
        if kind.misplaced and kind is not type(conditioning) and set(keys) & set(kind.keys):
            return kind.misplaced
    return (f"Unknown condition keys {sorted(keys)}: this model's condition keys are "
            f"{list(conditioning.keys)}.")


def _all_kinds(cls=Conditioning):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _all_kinds(subclass)


@keras.saving.register_keras_serializable(package="keras_mm")
class Unconditional(Conditioning):
    """No condition: the condition dict is empty.

    Example:
    ```python
    keras_mm.models.conditioning.Unconditional().null(4)  # {}
    ```
    """

    name = "unconditional"

    def null(self, batch_size):
        return {}

    def drop(self, condition, keep, null=None):
        return condition


@keras.saving.register_keras_serializable(package="keras_mm")
class LabelConditioning(Conditioning):
    """Class labels: `{"labels": int [B]}` in [0, num_classes); `num_classes` is the null
    label of classifier-free guidance.

    Args:
        num_classes: the number of classes.

    Example:
    ```python
    labels = keras_mm.models.conditioning.LabelConditioning(10)
    labels.null(2)  # {"labels": [10, 10]}
    ```
    """

    name = "class"
    keys = ("labels",)
    unit = "label"
    misplaced = ("Labels were given, but this model takes no class labels (its network has "
                 "num_classes=None). Drop the labels or build the network with num_classes.")

    def __init__(self, num_classes):
        self.num_classes = int(num_classes)

    @property
    def signature(self):
        return {"labels": (("B",), "int32")}

    def null(self, batch_size):
        return {"labels": ops.full((batch_size,), self.num_classes, "int32")}

    def missing_message(self):
        n = self.num_classes
        return (f"This model is class-conditional ({n} classes): pass labels (integers in "
                f"[0, {n})), or labels={n} for unconditional samples.")

    def range_message(self, got):
        """The message for labels out of range, `got` saying what was found."""
        n = self.num_classes
        return f"labels must be in [0, {n}) (or {n}, the null label, for unconditional samples); got {got}."

    def validate(self, condition, batch_size=None):
        if isinstance(condition, dict) and "labels" in condition:
            labels = condition["labels"]
            checks.check_label_dtype(labels if hasattr(labels, "dtype") else np.asarray(labels))
        super().validate(condition, batch_size)

    def check_values(self, values):
        labels = values["labels"]
        if labels.size and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(self.range_message(f"values in [{labels.min()}, {labels.max()}]"))

    def graph_value_checks(self, condition):
        labels = condition["labels"]
        return [(ops.logical_and(ops.all(labels >= 0), ops.all(labels <= self.num_classes)),
                 self.range_message("a label outside it"))]

    def export_value_checks(self, tensors):
        import tensorflow as tf

        labels, n = tensors["labels"], self.num_classes
        return [
            tf.debugging.assert_non_negative(labels, message=self.range_message("a negative label")),
            tf.debugging.assert_less_equal(labels, tf.constant(n, tf.int32),
                                           message=self.range_message(f"a label above {n}")),
        ]

    def repeat(self, condition, num_samples):
        """`Conditioning.repeat`; without a condition, balanced labels `arange(N) % num_classes`."""
        if condition is None:
            return {"labels": (np.arange(int(num_samples)) % self.num_classes).astype("int32")}
        return super().repeat(condition, num_samples)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="keras_mm")
class TextEmbeddingConditioning(Conditioning):
    """A caption's token embeddings: `{"text_embeddings": float [B, L, text_dim],
    "text_mask": bool [B, L]}` (what `keras_mm.TextEncoder.encode` returns). An all-False
    mask row, of any length, is the null caption.

    Args:
        text_dim: the embeddings' width (the text encoder's hidden_dim).
        null_length: L of the null condition.

    Example:
    ```python
    text = keras_mm.models.conditioning.TextEmbeddingConditioning(text_dim=16)
    text.null(2)["text_mask"]  # [[False], [False]]
    ```
    """

    name = "text"
    keys = ("text_embeddings", "text_mask")
    unit = "caption"
    hint = " (keras_mm.TextEncoder.encode returns both)"
    misplaced = ("Text conditioning was given, but this model was built without it (network "
                 "text_dim=None). Build the network with text_dim=... to condition on text.")

    def __init__(self, text_dim, null_length=1):
        self.text_dim = int(text_dim)
        self.null_length = int(null_length)

    @property
    def signature(self):
        return {"text_embeddings": (("B", "L", self.text_dim), "float32"),
                "text_mask": (("B", "L"), "bool")}

    def null(self, batch_size):
        return {"text_embeddings": ops.zeros((batch_size, self.null_length, self.text_dim)),
                "text_mask": ops.zeros((batch_size, self.null_length), "bool")}

    def missing_message(self):
        return "This model is text-conditional: pass text_embeddings and text_mask."

    def fixed_size_message(self, key, axis, size, expected):
        return (f"text_embeddings have width {size}, but the network was built with "
                f"text_dim={expected}: use the text encoder the model was trained with (its "
                "hidden_dim), or build the network with text_dim=hidden_dim.")

    def drop(self, condition, keep, null=None):
        # The null caption is signalled by an empty mask (`null` is not used); the
        # embeddings stay.
        if not condition:
            return condition
        return {"text_embeddings": condition["text_embeddings"],
                "text_mask": ops.logical_and(ops.cast(condition["text_mask"], "bool"),
                                             ops.reshape(keep, (-1, 1)))}

    def get_config(self):
        return {**super().get_config(), "text_dim": self.text_dim,
                "null_length": self.null_length}


@keras.saving.register_keras_serializable(package="keras_mm")
class CombinedConditioning(Conditioning):
    """Several kinds at once (e.g. class labels and a caption): the union of their keys,
    each part checking, dropping and repeating its own.

    Args:
        parts: a list of `Conditioning`s with disjoint keys.

    Example:
    ```python
    from keras_mm.models import conditioning
    both = conditioning.CombinedConditioning(
        [conditioning.LabelConditioning(10), conditioning.TextEmbeddingConditioning(16)])
    both.keys  # ("labels", "text_embeddings", "text_mask")
    ```
    """

    name = "combined"

    def __init__(self, parts):
        self.parts = [keras.saving.deserialize_keras_object(part) if isinstance(part, dict)
                      else part for part in parts]
        self.keys = tuple(key for part in self.parts for key in part.keys)
        self.unit = self.parts[0].unit

    @property
    def signature(self):
        return {key: spec for part in self.parts for key, spec in part.signature.items()}

    def _split(self, condition):
        return [(part, {k: v for k, v in condition.items() if k in part.keys})
                for part in self.parts]

    def null(self, batch_size):
        return {key: value for part in self.parts for key, value in part.null(batch_size).items()}

    def validate(self, condition, batch_size=None):
        condition = _with_shapes(condition)
        foreign = [key for key in condition if key not in self.keys]
        if foreign:
            raise ValueError(_misplaced_message(foreign, self))
        for part, values in self._split(condition):
            part.validate(values, batch_size)
            batch_size = part.batch_size(values) if batch_size is None else batch_size

    def export_value_checks(self, tensors):
        return [check for part, part_tensors in self._split(tensors)
                for check in part.export_value_checks(part_tensors)]

    def drop(self, condition, keep, null=None):
        return {key: value for part, values in self._split(condition)
                for key, value in part.drop(
                    values, keep, None if null is None else {k: null[k] for k in values}
                ).items()}

    def repeat(self, condition, num_samples):
        if condition is None:
            return {key: value for part in self.parts
                    for key, value in part.repeat(None, num_samples).items()}
        return super().repeat(condition, num_samples)

    def get_config(self):
        return {**super().get_config(),
                "parts": [keras.saving.serialize_keras_object(part) for part in self.parts]}


def conditioning_for_network(network):
    """The condition kind a network declares with `num_classes` / `text_dim` attributes.

    Args:
        network: a denoiser with optional `num_classes`, `text_dim` (and `text_length`).

    Returns:
        `LabelConditioning`, `TextEmbeddingConditioning`, both combined, or `Unconditional`.
    """
    num_classes = getattr(network, "num_classes", None)
    text_dim = getattr(network, "text_dim", None)
    parts = []
    if num_classes is not None:
        parts.append(LabelConditioning(num_classes))
    if text_dim is not None:
        parts.append(TextEmbeddingConditioning(text_dim, getattr(network, "text_length", 1) or 1))
    if len(parts) > 1:
        return CombinedConditioning(parts)
    return parts[0] if parts else Unconditional()
