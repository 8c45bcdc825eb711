"""Building blocks of the denoiser networks: logSNR features, ResBlock, attention, transformer.

Every block takes the conditioning embedding (logSNR + class + pooled text) and modulates
its normalised activations with it (FiLM: `(1 + scale) * h + shift`). The layers that end
a residual branch start at zero, so each block starts as the identity and a fresh network
predicts zeros.
"""

import math

import keras
from keras import ops


def space_to_depth(images, patch_size):
    """[B, H, W, C] -> [B, H/p, W/p, p*p*C]: each p x p patch becomes one pixel."""
    if patch_size == 1:
        return images
    _, height, width, channels = images.shape
    p = patch_size
    x = ops.reshape(images, [-1, height // p, p, width // p, p, channels])
    x = ops.transpose(x, [0, 1, 3, 2, 4, 5])
    return ops.reshape(x, [-1, height // p, width // p, p * p * channels])


def depth_to_space(features, patch_size):
    """Inverse of `space_to_depth`: [B, H/p, W/p, p*p*C] -> [B, H, W, C]."""
    if patch_size == 1:
        return features
    _, rows, cols, depth = features.shape
    p = patch_size
    channels = depth // (p * p)
    x = ops.reshape(features, [-1, rows, cols, p, p, channels])
    x = ops.transpose(x, [0, 1, 3, 2, 4, 5])
    return ops.reshape(x, [-1, rows * p, cols * p, channels])


def upsample_nearest(features):
    """[B, H, W, C] -> [B, 2H, 2W, C], repeating each pixel in a 2 x 2 block."""
    # Four copies along channels are exactly the 2 x 2 patch layout of depth_to_space.
    # (keras.layers.UpSampling2D does not trace on torch's "meta" device, which would
    # make shape inference of the big presets run for real.)
    return depth_to_space(ops.concatenate([features] * 4, axis=-1), 2)


def group_count(channels, max_groups):
    """The largest number of groups <= max_groups that divides `channels`."""
    return math.gcd(channels, max_groups)


@keras.saving.register_keras_serializable(package="keras_mm")
class FourierFeatures(keras.layers.Layer):
    """Sinusoidal features of the logSNR: [B] -> [B, 2 * num_frequencies].

    The frequencies are spaced geometrically between `min_frequency` and `max_frequency`
    (radians per unit of logSNR), so both the coarse position on the schedule (logSNR
    spans about [-20, 20]) and fine differences between neighbouring noise levels show.

    Args:
        num_frequencies: number of frequencies; the output has twice as many features.
        min_frequency: lowest frequency.
        max_frequency: highest frequency.

    Call arguments:
        logsnr: float tensor [B].

    Example:
    ```python
    features = keras_mm.models.layers.FourierFeatures(16)(keras.ops.array([0.0, 3.0]))
    features.shape  # (2, 32)
    ```
    """

    def __init__(self, num_frequencies, min_frequency=1.0 / 32.0, max_frequency=8.0, **kwargs):
        super().__init__(**kwargs)
        if num_frequencies < 1:
            raise ValueError(f"`num_frequencies` must be >= 1, got {num_frequencies}.")
        self.num_frequencies = num_frequencies
        self.min_frequency = min_frequency
        self.max_frequency = max_frequency

    def call(self, logsnr):
        logsnr = ops.cast(logsnr, self.compute_dtype)
        log_frequencies = ops.linspace(
            math.log(self.min_frequency), math.log(self.max_frequency), self.num_frequencies
        )
        angles = ops.expand_dims(logsnr, -1) * ops.cast(ops.exp(log_frequencies), logsnr.dtype)
        return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (2 * self.num_frequencies,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_frequencies": self.num_frequencies,
                "min_frequency": self.min_frequency,
                "max_frequency": self.max_frequency,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_mm")
class ResBlock(keras.layers.Layer):
    """Convolutional residual block with FiLM conditioning.

    GroupNorm -> swish -> conv3x3 -> GroupNorm -> FiLM(embedding) -> swish -> dropout ->
    conv3x3 (zero-initialised), plus the input (through a 1x1 conv when the channel
    count changes).

    Args:
        channels: output channels.
        dropout: dropout rate before the second convolution.
        norm_groups: upper bound on the GroupNorm groups (the largest divisor of the
            channel count up to it is used).

    Call arguments:
        inputs: [B, H, W, C_in] feature map.
        embedding: [B, E] conditioning embedding, already through a nonlinearity.
        training: whether dropout is active.

    References:
        Ho et al. 2020 (DDPM) U-Net blocks; Hoogeboom et al. 2023 (simple diffusion) §3.
    """

    def __init__(self, channels, dropout=0.0, norm_groups=32, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.dropout = dropout
        self.norm_groups = norm_groups
        self.conv_in = keras.layers.Conv2D(channels, 3, padding="same", name="conv_in")
        self.norm_out = keras.layers.GroupNormalization(
            group_count(channels, norm_groups), center=False, scale=False, name="norm_out"
        )
        self.film = keras.layers.Dense(2 * channels, kernel_initializer="zeros", name="film")
        self.dropout_layer = keras.layers.Dropout(dropout)
        self.conv_out = keras.layers.Conv2D(
            channels, 3, padding="same", kernel_initializer="zeros", name="conv_out"
        )

    def build(self, inputs_shape, embedding_shape):
        in_channels = inputs_shape[-1]
        self.norm_in = keras.layers.GroupNormalization(
            group_count(in_channels, self.norm_groups), name="norm_in"
        )
        self.norm_in.build(inputs_shape)
        self.conv_in.build(inputs_shape)
        out_shape = tuple(inputs_shape[:-1]) + (self.channels,)
        self.norm_out.build(out_shape)
        self.film.build(embedding_shape)
        self.conv_out.build(out_shape)
        self.skip = None
        if in_channels != self.channels:
            self.skip = keras.layers.Conv2D(self.channels, 1, name="skip")
            self.skip.build(inputs_shape)

    def call(self, inputs, embedding, training=None):
        h = self.conv_in(ops.silu(self.norm_in(inputs)))
        scale, shift = ops.split(self.film(embedding), 2, axis=-1)
        h = self.norm_out(h) * (1.0 + scale[:, None, None, :]) + shift[:, None, None, :]
        h = self.conv_out(self.dropout_layer(ops.silu(h), training=training))
        skip = inputs if self.skip is None else self.skip(inputs)
        return skip + h

    def compute_output_shape(self, inputs_shape, embedding_shape):
        return tuple(inputs_shape[:-1]) + (self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"channels": self.channels, "dropout": self.dropout, "norm_groups": self.norm_groups}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_mm")
class Attention(keras.layers.Layer):
    """Multi-head dot-product attention with a zero-initialised output projection.

    Self-attention when `context` is None, else cross-attention from the queries to
    `context` (whose width may differ from the queries').

    Args:
        num_heads: number of heads; the width must be divisible by it.

    Call arguments:
        inputs: [B, T, D] queries (and keys/values for self-attention).
        context: optional [B, S, D_context] keys/values.
        context_mask: optional [B, S] bool, True where a key may be attended to. Every
            row needs at least one True entry.
    """

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads

    def build(self, inputs_shape, context_shape=None, context_mask_shape=None):
        width = inputs_shape[-1]
        if width % self.num_heads:
            raise ValueError(
                f"The attention width {width} must be divisible by num_heads={self.num_heads}."
            )
        self.head_dim = width // self.num_heads
        self.query = keras.layers.Dense(width, name="query")
        self.key = keras.layers.Dense(width, name="key")
        self.value = keras.layers.Dense(width, name="value")
        self.output_dense = keras.layers.Dense(width, kernel_initializer="zeros", name="output")
        source_shape = inputs_shape if context_shape is None else context_shape
        self.query.build(inputs_shape)
        self.key.build(source_shape)
        self.value.build(source_shape)
        self.output_dense.build(inputs_shape)

    def _split_heads(self, x):
        # A text context's length may be dynamic (None), e.g. in an exported graph.
        length = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
        return ops.reshape(x, [-1, length, self.num_heads, self.head_dim])

    def call(self, inputs, context=None, context_mask=None):
        source = inputs if context is None else context
        query = self._split_heads(self.query(inputs))
        key = self._split_heads(self.key(source))
        value = self._split_heads(self.value(source))
        # Written out rather than ops.dot_product_attention: torch's fused CPU kernel has
        # no forward-mode derivative, and the instant distillation method takes a JVP
        # through the teacher. The softmax runs in float32.
        logits = ops.einsum("btnh,bsnh->bnts", query, key) / math.sqrt(self.head_dim)
        logits = ops.cast(logits, "float32")
        if context_mask is not None:
            mask = ops.cast(context_mask, "bool")[:, None, None, :]
            logits = ops.where(mask, logits, ops.full_like(logits, -1e30))
        weights = ops.cast(ops.softmax(logits, axis=-1), value.dtype)
        out = ops.einsum("bnts,bsnh->btnh", weights, value)
        out = ops.reshape(out, [-1, inputs.shape[1], self.num_heads * self.head_dim])
        return self.output_dense(out)

    def compute_output_shape(self, inputs_shape, context_shape=None, context_mask_shape=None):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads})
        return config


@keras.saving.register_keras_serializable(package="keras_mm")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm transformer block with adaptive LayerNorm conditioning.

    x += SelfAttention(AdaLN(x)); [x += CrossAttention(AdaLN(x), text)]; x += MLP(AdaLN(x)),
    where AdaLN(x) = LayerNorm(x) * (1 + scale) + shift with scale and shift predicted
    from the conditioning embedding (zero-initialised, so it starts as a plain LayerNorm).

    Args:
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of the token width.
        dropout: dropout rate on the residual branches.
        cross_attention: whether the block attends to a text context.

    Call arguments:
        inputs: [B, T, D] tokens.
        embedding: [B, E] conditioning embedding, already through a nonlinearity.
        context: [B, S, D_context] text tokens (only with cross_attention).
        context_mask: [B, S] bool, True at tokens that may be attended to.
        training: whether dropout is active.

    References:
        Hoogeboom et al. 2023 (simple diffusion), U-ViT; Peebles & Xie 2023 (DiT), adaLN.
    """

    def __init__(self, num_heads, mlp_ratio=4, dropout=0.0, cross_attention=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.dropout = dropout
        self.cross_attention = cross_attention
        self.num_norms = 3 if cross_attention else 2
        self.norms = [
            keras.layers.LayerNormalization(center=False, scale=False, name=f"norm_{i}")
            for i in range(self.num_norms)
        ]
        self.self_attention = Attention(num_heads, name="self_attention")
        self.cross_attention_layer = (
            Attention(num_heads, name="cross_attention") if cross_attention else None
        )
        self.dropout_layer = keras.layers.Dropout(dropout)

    def build(self, inputs_shape, embedding_shape, context_shape=None, context_mask_shape=None):
        width = inputs_shape[-1]
        self.modulation = keras.layers.Dense(
            2 * self.num_norms * width, kernel_initializer="zeros", name="modulation"
        )
        self.modulation.build(embedding_shape)
        for norm in self.norms:
            norm.build(inputs_shape)
        self.self_attention.build(inputs_shape)
        if self.cross_attention:
            if context_shape is None:
                raise ValueError(
                    "This TransformerBlock has cross_attention=True but got no `context`."
                )
            self.cross_attention_layer.build(inputs_shape, context_shape, context_mask_shape)
        self.mlp_in = keras.layers.Dense(self.mlp_ratio * width, activation="gelu", name="mlp_in")
        self.mlp_out = keras.layers.Dense(width, kernel_initializer="zeros", name="mlp_out")
        self.mlp_in.build(inputs_shape)
        self.mlp_out.build(tuple(inputs_shape[:-1]) + (self.mlp_ratio * width,))

    def call(self, inputs, embedding, context=None, context_mask=None, training=None):
        modulation = ops.split(self.modulation(embedding)[:, None, :], 2 * self.num_norms, -1)

        def adaptive_norm(index, x):
            scale, shift = modulation[2 * index], modulation[2 * index + 1]
            return self.norms[index](x) * (1.0 + scale) + shift

        x = inputs
        h = self.self_attention(adaptive_norm(0, x))
        x = x + self.dropout_layer(h, training=training)
        if self.cross_attention:
            h = self.cross_attention_layer(adaptive_norm(1, x), context, context_mask)
            x = x + self.dropout_layer(h, training=training)
        h = self.mlp_out(self.mlp_in(adaptive_norm(self.num_norms - 1, x)))
        return x + self.dropout_layer(h, training=training)

    def compute_output_shape(
        self, inputs_shape, embedding_shape, context_shape=None, context_mask_shape=None
    ):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "dropout": self.dropout,
                "cross_attention": self.cross_attention,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_mm")
class TextConditioning(keras.layers.Layer):
    """Turns text embeddings and their padding mask into the two text conditions.

    Returns `(context, context_mask, pooled)`:
    - `context` [B, 1 + L, width]: the projected, normalised tokens after a learned null
      token. The null token is always attendable, so a caption whose mask is all zero (the
      null caption of classifier-free guidance) attends to it alone and attention never
      sees an empty key set.
    - `context_mask` [B, 1 + L] bool.
    - `pooled` [B, embedding_dim]: the projected mean of the unmasked tokens, or a learned
      null embedding where the mask is all zero.

    Padded positions are zeroed before anything reads them, so their values (even NaN) do
    not reach the output.

    Args:
        width: token width of the transformer that attends to the text.
        embedding_dim: width of the conditioning embedding the pooled text is added to.

    Call arguments:
        text_embeddings: [B, L, D_text] float.
        text_mask: [B, L] bool or 0/1.
    """

    def __init__(self, width, embedding_dim, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.embedding_dim = embedding_dim
        self.token_projection = keras.layers.Dense(width, name="token_projection")
        self.token_norm = keras.layers.LayerNormalization(name="token_norm")
        self.pooled_projection = keras.layers.Dense(embedding_dim, name="pooled_projection")

    def build(self, text_embeddings_shape, text_mask_shape):
        text_dim = text_embeddings_shape[-1]
        self.token_projection.build(text_embeddings_shape)
        self.token_norm.build(tuple(text_embeddings_shape[:-1]) + (self.width,))
        self.pooled_projection.build((text_embeddings_shape[0], text_dim))
        self.null_token = self.add_weight(
            shape=(self.width,),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="null_token",
        )
        self.null_pooled = self.add_weight(
            shape=(self.embedding_dim,),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="null_pooled",
        )

    def call(self, text_embeddings, text_mask):
        text = ops.cast(text_embeddings, self.compute_dtype)
        mask = ops.cast(text_mask, "bool")
        text = ops.where(mask[:, :, None], text, ops.zeros_like(text))
        weights = ops.cast(mask, text.dtype)
        count = ops.sum(weights, axis=1, keepdims=True)
        mean = ops.sum(text, axis=1) / ops.maximum(count, 1.0)
        pooled = ops.where(count > 0, self.pooled_projection(mean), self.null_pooled[None, :])

        tokens = self.token_norm(self.token_projection(text))
        null_token = ops.zeros_like(tokens[:, :1, :]) + ops.cast(self.null_token, tokens.dtype)
        context = ops.concatenate([null_token, tokens], axis=1)
        context_mask = ops.concatenate([ops.ones_like(mask[:, :1]), mask], axis=1)
        return context, context_mask, pooled

    def compute_output_shape(self, text_embeddings_shape, text_mask_shape):
        batch, length = text_embeddings_shape[0], text_embeddings_shape[1]
        length = None if length is None else length + 1
        return (batch, length, self.width), (batch, length), (batch, self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"width": self.width, "embedding_dim": self.embedding_dim})
        return config
