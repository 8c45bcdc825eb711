"""UViT: the U-Net with a transformer at its lowest resolution from simple diffusion."""

import keras
from keras import ops

from keras_mm.models.layers import (
    FourierFeatures,
    ResBlock,
    TextConditioning,
    TransformerBlock,
    depth_to_space,
    group_count,
    space_to_depth,
    upsample_nearest,
)
from keras_mm.models.uvit_presets import UVIT_PRESETS

# Sinusoidal logSNR frequencies fed to the embedding MLP.
_LOGSNR_FREQUENCIES = 32


@keras.saving.register_keras_serializable(package="keras_mm")
class UViT(keras.Model):
    """U-ViT denoiser: conv ResBlocks down, a transformer at the bottom, ResBlocks up.

    The conditioning embedding is MLP(Fourier features of logSNR) + class embedding +
    projected mean of the text embeddings; every block is modulated by it (FiLM in the
    ResBlocks, adaptive LayerNorm in the transformer). Each encoder ResBlock's output is
    kept and concatenated into the mirrored decoder ResBlock. The transformer also
    cross-attends to the text tokens when `text_dim` is set. The output convolution starts
    at zero, so a fresh network predicts zeros.

    The network is called with one dict (see "Call arguments") and returns a tensor shaped
    like `noisy`; `DiffusionModel` reads it as a v-prediction.

    Args:
        image_shape: `(height, width, channels)` of the data. Height and width must be
            divisible by `patch_size * 2 ** (len(channel_multipliers) - 1)`.
        base_channels: channels of the first resolution level.
        channel_multipliers: channels of each level as multiples of `base_channels`; each
            level after the first halves the resolution. The transformer runs at the last
            level with `base_channels * channel_multipliers[-1]` channels.
        num_res_blocks: ResBlocks per level in the encoder (the decoder mirrors it); an int
            or one int per level. Simple diffusion uses none at the transformer level.
        transformer_depth: transformer blocks at the lowest resolution (0 for a plain
            U-Net).
        num_heads: attention heads of the transformer blocks.
        num_classes: number of classes for class conditioning, or None. Label
            `num_classes` is the null label of classifier-free guidance.
        text_dim: width of the text embeddings for text conditioning, or None.
        dropout: dropout rate, used from level `dropout_from_level` down (simple
            diffusion: none at the highest resolution).
        dropout_from_level: index of the first (highest-resolution) level with dropout.
        embedding_dim: width of the conditioning embedding; default `4 * base_channels`.
        mlp_ratio: hidden width of the transformer MLPs as a multiple of their width.
        norm_groups: upper bound on GroupNorm groups (the largest divisor of each channel
            count up to it is used).
        patch_size: the input is cut into `patch_size x patch_size` patches stacked along
            channels before the stem and put back at the end (simple diffusion's cheap
            downsampling for high resolutions).
        output_channels: channels of the prediction; default `image_shape[-1]`.

    Call arguments:
        inputs: dict with
            - `"noisy"`: [B, H, W, C] float, the noisy image z_t.
            - `"logsnr"`: [B] float, logSNR of z_t.
            - `"labels"`: [B] int (only with `num_classes`); `num_classes` is the null label.
            - `"text_embeddings"`: [B, L, text_dim] float (only with `text_dim`).
            - `"text_mask"`: [B, L] bool or 0/1 (only with `text_dim`); an all-zero row is
              the null caption.
        training: whether dropout is active.

    Example:
    ```python
    network = keras_mm.UViT.from_preset("uvit_tiny")
    prediction = network(
        {
            "noisy": keras.random.normal((4, 8, 8, 1)),
            "logsnr": keras.ops.zeros((4,)),
            "labels": keras.ops.array([0, 1, 2, 10]),  # 10: the null label
        }
    )
    prediction.shape  # (4, 8, 8, 1)
    ```

    References:
        Hoogeboom et al. 2023, "simple diffusion", §3 (U-ViT, dropout, downsampling);
        Salimans et al. 2024, "Multistep distillation of diffusion models via moment
        matching", §6 (the 400M-parameter ImageNet models).
    """

    def __init__(
        self,
        image_shape,
        base_channels=64,
        channel_multipliers=(1, 2),
        num_res_blocks=2,
        transformer_depth=2,
        num_heads=4,
        num_classes=None,
        text_dim=None,
        dropout=0.0,
        dropout_from_level=1,
        embedding_dim=None,
        mlp_ratio=4,
        norm_groups=32,
        patch_size=1,
        output_channels=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        image_shape = tuple(int(d) for d in image_shape)
        channel_multipliers = tuple(int(m) for m in channel_multipliers)
        num_levels = len(channel_multipliers)
        if len(image_shape) != 3:
            raise ValueError(f"`image_shape` must be (height, width, channels), got {image_shape}.")
        if num_levels < 1:
            raise ValueError("`channel_multipliers` needs at least one level.")
        if isinstance(num_res_blocks, int):
            blocks_per_level = (num_res_blocks,) * num_levels
        else:
            blocks_per_level = tuple(int(n) for n in num_res_blocks)
            num_res_blocks = blocks_per_level
        if len(blocks_per_level) != num_levels:
            raise ValueError(
                f"`num_res_blocks` has {len(blocks_per_level)} entries but there are "
                f"{num_levels} levels (channel_multipliers={channel_multipliers})."
            )
        factor = patch_size * 2 ** (num_levels - 1)
        if image_shape[0] % factor or image_shape[1] % factor:
            raise ValueError(
                f"Height and width of image_shape={image_shape} must be divisible by "
                f"patch_size * 2 ** (num_levels - 1) = {factor}."
            )
        width = base_channels * channel_multipliers[-1]
        if transformer_depth and width % num_heads:
            raise ValueError(
                f"The transformer width base_channels * channel_multipliers[-1] = {width} "
                f"must be divisible by num_heads={num_heads}."
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int or None, got {num_classes}.")

        self.image_shape = image_shape
        self.base_channels = base_channels
        self.channel_multipliers = channel_multipliers
        self.num_res_blocks = num_res_blocks
        self.transformer_depth = transformer_depth
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.text_dim = text_dim
        self.dropout = dropout
        self.dropout_from_level = dropout_from_level
        self.embedding_dim = embedding_dim
        self.mlp_ratio = mlp_ratio
        self.norm_groups = norm_groups
        self.patch_size = patch_size
        self.output_channels = output_channels

        self._blocks_per_level = blocks_per_level
        self._level_channels = [base_channels * m for m in channel_multipliers]
        self._bottom_size = (image_shape[0] // factor, image_shape[1] // factor)
        out_channels = output_channels or image_shape[-1]
        emb_dim = embedding_dim or 4 * base_channels

        def level_dropout(level):
            return dropout if level >= dropout_from_level else 0.0

        self.logsnr_features = FourierFeatures(_LOGSNR_FREQUENCIES, name="logsnr_features")
        self.logsnr_mlp = keras.Sequential(
            [keras.layers.Dense(emb_dim, activation="silu"), keras.layers.Dense(emb_dim)],
            name="logsnr_mlp",
        )
        self.class_embedding = None
        if num_classes is not None:
            self.class_embedding = keras.layers.Embedding(
                num_classes + 1, emb_dim, name="class_embedding"
            )
        self.text_conditioning = None
        if text_dim is not None:
            self.text_conditioning = TextConditioning(width, emb_dim, name="text_conditioning")

        self.stem = keras.layers.Conv2D(self._level_channels[0], 3, padding="same", name="stem")
        self.down_blocks, self.downsamplers = [], []
        for level, channels in enumerate(self._level_channels):
            for i in range(blocks_per_level[level]):
                self.down_blocks.append(
                    ResBlock(channels, level_dropout(level), norm_groups, name=f"down_{level}_{i}")
                )
            if level < num_levels - 1:
                self.downsamplers.append(
                    keras.layers.Conv2D(
                        self._level_channels[level + 1],
                        3,
                        strides=2,
                        padding="same",
                        name=f"downsample_{level}",
                    )
                )
        self.transformer_blocks = [
            TransformerBlock(
                num_heads,
                mlp_ratio,
                level_dropout(num_levels - 1),
                cross_attention=text_dim is not None,
                name=f"transformer_{i}",
            )
            for i in range(transformer_depth)
        ]
        self.transformer_norm = keras.layers.LayerNormalization(name="transformer_norm")
        self.up_blocks, self.upsamplers = [], []
        for level in reversed(range(num_levels)):
            channels = self._level_channels[level]
            for i in range(blocks_per_level[level]):
                self.up_blocks.append(
                    ResBlock(channels, level_dropout(level), norm_groups, name=f"up_{level}_{i}")
                )
            if level > 0:
                self.upsamplers.append(
                    keras.layers.Conv2D(
                        self._level_channels[level - 1],
                        3,
                        padding="same",
                        name=f"upsample_{level}",
                    )
                )
        self.output_norm = keras.layers.GroupNormalization(
            group_count(self._level_channels[0], norm_groups), name="output_norm"
        )
        self.output_conv = keras.layers.Conv2D(
            out_channels * patch_size**2,
            3,
            padding="same",
            kernel_initializer="zeros",
            name="output_conv",
        )

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Builds a UViT from a named config in `UVIT_PRESETS`; keyword args override it."""
        if preset not in UVIT_PRESETS:
            raise ValueError(
                f"Unknown UViT preset {preset!r}. Available presets: {sorted(UVIT_PRESETS)}."
            )
        config = dict(UVIT_PRESETS[preset])
        config.update(overrides)
        return cls(**config)

    def _check_input_shapes(self, shapes):
        """Validates a dict of input shapes against the interface; returns the used keys."""
        if not isinstance(shapes, dict):
            raise TypeError(
                "UViT is called with one dict {'noisy', 'logsnr', ['labels'], "
                f"['text_embeddings', 'text_mask']}}, got {type(shapes).__name__}."
            )
        shapes = {k: v for k, v in shapes.items() if v is not None}
        required = {"noisy": 4, "logsnr": 1}
        optional = {}
        if self.num_classes is not None:
            required["labels"] = 1
        elif "labels" in shapes:
            raise ValueError(
                "Got 'labels' but this network was built without class conditioning; pass "
                "num_classes=... to UViT."
            )
        if self.text_dim is not None:
            required.update({"text_embeddings": 3, "text_mask": 2})
        elif "text_embeddings" in shapes or "text_mask" in shapes:
            raise ValueError(
                "Got 'text_embeddings' but this network was built without text conditioning; "
                "pass text_dim=... to UViT."
            )
        unknown = sorted(set(shapes) - set(required) - set(optional))
        if unknown:
            raise ValueError(f"Unexpected input keys {unknown}; expected {sorted(required)}.")
        for key, rank in required.items():
            if key not in shapes:
                raise ValueError(
                    f"The input dict lacks {key!r} (got keys {sorted(shapes)}); this network "
                    f"needs {sorted(required)}."
                )
            if len(shapes[key]) != rank:
                raise ValueError(
                    f"Input {key!r} must have rank {rank}, got shape {tuple(shapes[key])}."
                )
        noisy = tuple(shapes["noisy"][1:])
        if any(d is not None and d != e for d, e in zip(noisy, self.image_shape)):
            raise ValueError(
                f"'noisy' has per-example shape {noisy}, but this network was built for "
                f"image_shape={self.image_shape}."
            )
        if self.text_dim is not None and shapes["text_embeddings"][-1] not in (
            None,
            self.text_dim,
        ):
            raise ValueError(
                f"'text_embeddings' has width {shapes['text_embeddings'][-1]}, but this "
                f"network was built with text_dim={self.text_dim}."
            )
        return required

    def build(self, input_shape):
        keys = self._check_input_shapes(input_shape)
        dtypes = {"labels": "int32", "text_mask": "bool"}
        symbolic = {
            key: keras.KerasTensor(tuple(input_shape[key]), dtype=dtypes.get(key, "float32"))
            for key in keys
        }
        if self.transformer_depth:
            self.position_embedding = self.add_weight(
                shape=(self._bottom_size[0] * self._bottom_size[1], self._level_channels[-1]),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="position_embedding",
            )
        # Tracing the call on symbolic inputs builds every sublayer. The base class's
        # compute_output_spec traces `call` (this class overrides it with a cheap version);
        # the public way to reach Keras's symbolic tracing.
        super().compute_output_spec(symbolic)
        self.built = True

    def call(self, inputs, training=None):
        self._check_input_shapes(
            {k: None if v is None else tuple(v.shape) for k, v in inputs.items()}
            if isinstance(inputs, dict)
            else inputs
        )
        noisy = ops.cast(inputs["noisy"], self.compute_dtype)
        embedding = self.logsnr_mlp(self.logsnr_features(inputs["logsnr"]))
        if self.class_embedding is not None:
            embedding = embedding + self.class_embedding(inputs["labels"])
        context = context_mask = None
        if self.text_conditioning is not None:
            context, context_mask, pooled = self.text_conditioning(
                inputs["text_embeddings"], inputs["text_mask"]
            )
            embedding = embedding + pooled
        embedding = ops.silu(embedding)

        h = self.stem(space_to_depth(noisy, self.patch_size))
        skips = []
        down_blocks = iter(self.down_blocks)
        for level in range(len(self._level_channels)):
            for _ in range(self._blocks_per_level[level]):
                h = next(down_blocks)(h, embedding, training=training)
                skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)

        if self.transformer_depth:
            rows, cols = self._bottom_size
            tokens = ops.reshape(h, [-1, rows * cols, h.shape[-1]])
            tokens = tokens + ops.cast(self.position_embedding, tokens.dtype)
            for block in self.transformer_blocks:
                tokens = block(tokens, embedding, context, context_mask, training=training)
            h = ops.reshape(self.transformer_norm(tokens), [-1, rows, cols, h.shape[-1]])

        up_blocks = iter(self.up_blocks)
        upsamplers = iter(self.upsamplers)
        for level in reversed(range(len(self._level_channels))):
            for _ in range(self._blocks_per_level[level]):
                h = ops.concatenate([h, skips.pop()], axis=-1)
                h = next(up_blocks)(h, embedding, training=training)
            if level > 0:
                # Convolving before upsampling costs a quarter of the other order.
                h = upsample_nearest(next(upsamplers)(h))

        out = self.output_conv(ops.silu(self.output_norm(h)))
        return depth_to_space(out, self.patch_size)

    def compute_output_spec(self, inputs, training=None):
        # Cheap shape inference: the output always has the (output) image shape.
        self._check_input_shapes({k: v.shape for k, v in inputs.items() if v is not None})
        batch = inputs["noisy"].shape[0]
        height, width, channels = self.image_shape
        return keras.KerasTensor(
            (batch, height, width, self.output_channels or channels), dtype=self.compute_dtype
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_shape": self.image_shape,
                "base_channels": self.base_channels,
                "channel_multipliers": self.channel_multipliers,
                "num_res_blocks": self.num_res_blocks,
                "transformer_depth": self.transformer_depth,
                "num_heads": self.num_heads,
                "num_classes": self.num_classes,
                "text_dim": self.text_dim,
                "dropout": self.dropout,
                "dropout_from_level": self.dropout_from_level,
                "embedding_dim": self.embedding_dim,
                "mlp_ratio": self.mlp_ratio,
                "norm_groups": self.norm_groups,
                "patch_size": self.patch_size,
                "output_channels": self.output_channels,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
