"""A small MLP denoiser for flat vector data (2-D toy distributions)."""

import keras
from keras import ops

from keras_mm.models.layers import FourierFeatures


@keras.saving.register_keras_serializable(package="keras_mm")
class MLPDenoiser(keras.Model):
    """MLP network for vector data [B, D], with the same dict interface as `UViT`.

    h = Dense(noisy); then `num_layers` times h = swish(Dense(h) + Dense(embedding)),
    where the embedding is MLP(Fourier features of logSNR) (+ class embedding); the
    output is a Dense layer back to `data_dim`.

    Args:
        data_dim: size D of the data vectors.
        hidden_dim: width of the hidden layers.
        num_layers: number of conditioned hidden layers.
        num_classes: number of classes for class conditioning, or None. Label
            `num_classes` is the null label of classifier-free guidance.

    Call arguments:
        inputs: dict with `"noisy"` [B, D] float, `"logsnr"` [B] float and, only with
            `num_classes`, `"labels"` [B] int.
        training: unused (no dropout); accepted for the common interface.

    Example:
    ```python
    network = keras_mm.MLPDenoiser(data_dim=2)
    prediction = network({"noisy": keras.random.normal((8, 2)), "logsnr": keras.ops.zeros((8,))})
    prediction.shape  # (8, 2)
    ```
    """

    def __init__(self, data_dim, hidden_dim=128, num_layers=3, num_classes=None, **kwargs):
        super().__init__(**kwargs)
        if data_dim < 1:
            raise ValueError(f"`data_dim` must be a positive int, got {data_dim}.")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int or None, got {num_classes}.")
        self.data_dim = data_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_classes = num_classes
        self.text_dim = None
        self.image_shape = (data_dim,)

        self.logsnr_features = FourierFeatures(16, name="logsnr_features")
        self.logsnr_mlp = keras.Sequential(
            [keras.layers.Dense(hidden_dim, activation="silu"), keras.layers.Dense(hidden_dim)],
            name="logsnr_mlp",
        )
        self.class_embedding = None
        if num_classes is not None:
            self.class_embedding = keras.layers.Embedding(
                num_classes + 1, hidden_dim, name="class_embedding"
            )
        self.input_dense = keras.layers.Dense(hidden_dim, name="input_dense")
        self.hidden = [
            keras.layers.Dense(hidden_dim, name=f"hidden_{i}") for i in range(num_layers)
        ]
        self.conditioning = [
            keras.layers.Dense(hidden_dim, name=f"conditioning_{i}") for i in range(num_layers)
        ]
        self.output_dense = keras.layers.Dense(data_dim, name="output_dense")

    def _check_inputs(self, inputs):
        if not isinstance(inputs, dict):
            raise TypeError(
                "MLPDenoiser is called with one dict {'noisy', 'logsnr', ['labels']}, got "
                f"{type(inputs).__name__}."
            )
        inputs = {k: v for k, v in inputs.items() if v is not None}
        required = {"noisy": 2, "logsnr": 1}
        if self.num_classes is not None:
            required["labels"] = 1
        elif "labels" in inputs:
            raise ValueError(
                "Got 'labels' but this network was built without class conditioning; pass "
                "num_classes=... to MLPDenoiser."
            )
        if "text_embeddings" in inputs or "text_mask" in inputs:
            raise ValueError("MLPDenoiser has no text conditioning; use UViT(text_dim=...).")
        unknown = sorted(set(inputs) - set(required))
        if unknown:
            raise ValueError(f"Unexpected input keys {unknown}; expected {sorted(required)}.")
        for key, rank in required.items():
            if key not in inputs:
                raise ValueError(
                    f"The input dict lacks {key!r} (got keys {sorted(inputs)}); this network "
                    f"needs {sorted(required)}."
                )
            if len(inputs[key].shape) != rank:
                raise ValueError(
                    f"Input {key!r} must have rank {rank}, got shape {tuple(inputs[key].shape)}."
                )
        if inputs["noisy"].shape[-1] not in (None, self.data_dim):
            raise ValueError(
                f"'noisy' has {inputs['noisy'].shape[-1]} features, but this network was built "
                f"with data_dim={self.data_dim}."
            )

    def call(self, inputs, training=None):
        self._check_inputs(inputs)
        embedding = self.logsnr_mlp(self.logsnr_features(inputs["logsnr"]))
        if self.class_embedding is not None:
            embedding = embedding + self.class_embedding(inputs["labels"])
        embedding = ops.silu(embedding)
        h = self.input_dense(ops.cast(inputs["noisy"], self.compute_dtype))
        for hidden, conditioning in zip(self.hidden, self.conditioning):
            h = ops.silu(hidden(h) + conditioning(embedding))
        return self.output_dense(h)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "data_dim": self.data_dim,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_classes": self.num_classes,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
