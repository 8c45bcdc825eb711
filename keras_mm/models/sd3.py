"""KerasHub's Stable Diffusion 3 as a keras_mm teacher.

`SD3Denoiser` adapts the backbone's MMDiT to keras_mm's network contract (`{"noisy",
"logsnr", "context", "pooled_projection"}` -> SD3's velocity eps - x), `SD3Conditioning` is
SD3's condition kind, and `sd3_teacher` puts them into a latent, flow-matching
`keras_mm.DiffusionModel`. The teacher and its students run on the VAE's scaled latents:
`encode_images` makes training data from images, `decode_latents` turns samples into images,
`encode_prompts` turns CLIP(/T5) token ids into the condition.
"""

import keras
from keras import ops

from keras_mm.diffusion.schedules import FlowMatchingSchedule
from keras_mm.models.conditioning import Conditioning


@keras.saving.register_keras_serializable(package="keras_mm")
class SD3Conditioning(Conditioning):
    """SD3's condition: `{"context": float [B, context_length, context_dim],
    "pooled_projection": float [B, pooled_dim]}` (what `encode_prompts` returns).

    Its own null condition is all zeros. A teacher made by `sd3_teacher(backbone,
    empty_prompt=...)` guides against the empty prompt's embeddings instead, as SD3 itself
    does: its `SD3Denoiser` holds them (`null_condition`), and `DiffusionModel.null_condition`
    takes a network's own null condition before its conditioning's.

    Args:
        context_dim: the context's width (4096 for SD3: T5's width, CLIP's padded to it).
        pooled_dim: the pooled projection's width (CLIP-L + CLIP-G hidden dims, 2048).
        context_length: L, the context's number of tokens (154 = 2 x 77 without T5).

    Example:
    ```python
    kind = keras_mm.models.sd3.SD3Conditioning(context_dim=4096, pooled_dim=2048)
    kind.null(2)["context"].shape  # (2, 154, 4096)
    ```
    """

    name = "SD3 text"
    keys = ("context", "pooled_projection")
    unit = "prompt"
    hint = " (keras_mm.models.sd3.encode_prompts returns both)"
    misplaced = ("SD3 text conditioning (context, pooled_projection) was given, but this model "
                 "was not built with keras_mm.models.sd3.sd3_teacher.")

    def __init__(self, context_dim, pooled_dim, context_length=154):
        self.context_dim = int(context_dim)
        self.pooled_dim = int(pooled_dim)
        self.context_length = int(context_length)
        self.text_dim = self.context_dim

    @property
    def signature(self):
        return {"context": (("B", self.context_length, self.context_dim), "float32"),
                "pooled_projection": (("B", self.pooled_dim), "float32")}

    def null(self, batch_size):
        return {"context": ops.zeros((batch_size, self.context_length, self.context_dim)),
                "pooled_projection": ops.zeros((batch_size, self.pooled_dim))}

    def get_config(self):
        return {**super().get_config(), "context_dim": self.context_dim,
                "pooled_dim": self.pooled_dim, "context_length": self.context_length}


@keras.saving.register_keras_serializable(package="keras_mm")
class SD3Denoiser(keras.Model):
    """SD3's MMDiT behind keras_mm's network contract.

    Maps logSNR to SD3's timestep as KerasHub's `FlowMatchEulerDiscreteScheduler` does:
    z_t = (1 - t) x + t eps with t = sigmoid(-logSNR / 2), timestep = num_train_timesteps * t
    (the shift moves the sampler's grid, `FlowMatchingSchedule(shift)`, not this map).
    Predicts SD3's velocity eps - x (`prediction_type="flow"`).

    Args:
        mmdit: a KerasHub `MMDiT` (a `StableDiffusion3Backbone`'s `.diffuser`).
        num_train_timesteps: SD3's timestep scale (the backbone's, 1000).
        context_length: L, the context's number of tokens. When given, the denoiser holds
            the null condition of classifier-free guidance as two non-trainable weights
            (zeros until `set_null_condition`, e.g. the empty prompt's embeddings), saved
            and copied with it; None: no null condition of its own (zeros from
            `SD3Conditioning`).

    Call arguments:
        inputs: `{"noisy": [B, h, w, 16] latents, "logsnr": [B], "context": [B, L, D],
            "pooled_projection": [B, P]}`.

    Example:
    ```python
    backbone = keras_hub.models.StableDiffusion3Backbone.from_preset(
        "stable_diffusion_3_medium", image_shape=(512, 512, 3))
    network = keras_mm.models.sd3.SD3Denoiser.from_backbone(backbone)
    ```
    """

    def __init__(self, mmdit, num_train_timesteps=1000, context_length=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(mmdit, dict):  # a fresh copy: this wrapper's flag says if it trains
            mmdit = keras.saving.deserialize_keras_object(mmdit)
            mmdit.trainable = True
        self.mmdit = mmdit
        self.num_train_timesteps = int(num_train_timesteps)
        self.image_shape = tuple(mmdit.latent_shape)
        self.num_classes = None
        self.text_dim = int(mmdit.context_shape[-1])
        self.pooled_dim = int(mmdit.pooled_projection_shape[-1])
        self.context_length = None if context_length is None else int(context_length)
        if self.context_length is not None:
            self.null_context = self.add_weight(
                shape=(self.context_length, self.text_dim), initializer="zeros",
                trainable=False, name="null_context")
            self.null_pooled_projection = self.add_weight(
                shape=(self.pooled_dim,), initializer="zeros", trainable=False,
                name="null_pooled_projection")

    @classmethod
    def from_backbone(cls, backbone):
        """The denoiser of a `keras_hub.models.StableDiffusion3Backbone` (shares its MMDiT).

        Frozen when the MMDiT is (e.g. by a distiller of another teacher on this backbone),
        so that `DiffusionModel` still finds its parameters theta."""
        return cls(backbone.diffuser, num_train_timesteps=backbone.num_train_timesteps,
                   context_length=context_length(backbone),
                   trainable=backbone.diffuser.trainable)

    def set_null_condition(self, condition):
        """Hold one prompt's condition (`encode_prompts` of the empty prompt, batch 1) as the
        null condition of classifier-free guidance."""
        if self.context_length is None:
            raise ValueError("This SD3Denoiser holds no null condition: build it with "
                             "SD3Denoiser.from_backbone (or pass context_length).")
        context = ops.convert_to_tensor(condition["context"], "float32")
        pooled = ops.convert_to_tensor(condition["pooled_projection"], "float32")
        expected = (1, self.context_length, self.text_dim)
        if tuple(context.shape) != expected or tuple(pooled.shape) != (1, self.pooled_dim):
            raise ValueError(
                f"The null condition must be one prompt's: context {expected} and "
                f"pooled_projection (1, {self.pooled_dim}); got {tuple(context.shape)} and "
                f"{tuple(pooled.shape)}.")
        self.null_context.assign(context[0])
        self.null_pooled_projection.assign(pooled[0])

    def null_condition(self, batch_size):
        """The held null condition, repeated `batch_size` times (None when none is held)."""
        if self.context_length is None:
            return None
        return {"context": ops.broadcast_to(
                    self.null_context.value[None],
                    (batch_size, self.context_length, self.text_dim)),
                "pooled_projection": ops.broadcast_to(
                    self.null_pooled_projection.value[None], (batch_size, self.pooled_dim))}

    def timestep(self, logsnr):
        """SD3's timestep input for logSNR: num_train_timesteps * sigmoid(-logSNR / 2)."""
        return self.num_train_timesteps * ops.sigmoid(-0.5 * ops.cast(logsnr, "float32"))

    def call(self, inputs, training=False):
        missing = [key for key in SD3Conditioning.keys if key not in inputs]
        if missing:
            raise ValueError(
                f"SD3Denoiser needs {' and '.join(missing)}: build the model with "
                "keras_mm.models.sd3.sd3_teacher (its conditioning is SD3Conditioning)."
            )
        timestep = ops.reshape(self.timestep(inputs["logsnr"]), (-1, 1))
        return self.mmdit(
            {"latent": inputs["noisy"], "context": inputs["context"],
             "pooled_projection": inputs["pooled_projection"], "timestep": timestep},
            training=training,
        )

    def get_config(self):
        config = super().get_config()
        # A copy (a distiller's generator) is a fresh trainable network, also of a teacher
        # that was frozen when it was built (`from_backbone`).
        config.pop("trainable", None)
        config.update({"mmdit": keras.saving.serialize_keras_object(self.mmdit),
                       "num_train_timesteps": self.num_train_timesteps,
                       "context_length": self.context_length})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_mm")
class SD3Decoder(keras.Model):
    """SD3's VAE decoder on the teacher's scaled latents: images = decoder(z / scale + shift).

    What `export_sampler(..., decoder=...)` puts inside a SavedModel, so that it returns
    images; `decode_latents` is the same step on the backbone.

    Args:
        decoder: the VAE's decoder layer (a `VAEBackbone`'s `.decoder`).
        scale: the VAE's latent scale (`vae.scale`, 1.5305 for SD3).
        shift: the VAE's latent shift (`vae.shift`, 0.0609 for SD3).
        latent_channels: the latents' channels (16 for SD3).

    Call arguments:
        latents: [B, h, w, 16] scaled latents (samples of an SD3 teacher or student).

    Example:
    ```python
    decoder = keras_mm.models.sd3.SD3Decoder.from_backbone(backbone)
    images = decoder(latents)  # [B, 8h, 8w, 3], about [-1, 1]
    ```
    """

    def __init__(self, decoder, scale, shift, latent_channels=16, **kwargs):
        super().__init__(**kwargs)
        if isinstance(decoder, dict):
            decoder = keras.saving.deserialize_keras_object(decoder)
        self.decoder = decoder
        self.scale = float(scale)
        self.shift = float(shift)
        self.latent_channels = int(latent_channels)
        if not decoder.built:  # built at once, so that it loads weights and exports
            decoder.build((None, None, None, self.latent_channels))
        self.built = True

    @classmethod
    def from_backbone(cls, backbone):
        """The decoder of a `keras_hub.models.StableDiffusion3Backbone` (shares its weights)."""
        return cls(backbone.vae.decoder, backbone.vae.scale, backbone.vae.shift,
                   backbone.latent_channels)

    def call(self, latents):
        latents = ops.convert_to_tensor(latents, "float32")
        return ops.cast(self.decoder(latents / self.scale + self.shift, training=False),
                        "float32")

    def get_config(self):
        config = super().get_config()
        config.update({"decoder": keras.saving.serialize_keras_object(self.decoder),
                       "scale": self.scale, "shift": self.shift,
                       "latent_channels": self.latent_channels})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def context_length(backbone):
    """L of `backbone`'s context: CLIP's tokens, padded to twice that without T5, plus
    T5's (`encode_text_step`)."""
    clip_length = backbone.clip_l.max_sequence_length
    if backbone.t5 is None:
        return 2 * clip_length
    return clip_length + backbone.t5.max_sequence_length


def sd3_teacher(backbone, condition_dropout=0.0, seed=None, empty_prompt=None):
    """A keras_mm teacher (`DiffusionModel`) from a KerasHub `StableDiffusion3Backbone`.

    Latent (the data are VAE latents, see `encode_images` / `decode_latents`), rectified
    flow with the backbone's shift, velocity prediction and the velocity loss, conditioned on
    `SD3Conditioning`. The MMDiT's weights are shared with the backbone.

    Args:
        backbone: a `keras_hub.models.StableDiffusion3Backbone`.
        condition_dropout: for further teacher training (SD3 is already trained: 0).
        seed: seed of the model's random draws.
        empty_prompt: the empty prompt's token ids (`preprocessor.generate_preprocess([""])`
            of KerasHub's `StableDiffusion3TextToImagePreprocessor`): classifier-free
            guidance then steers away from its embeddings, as SD3's own sampler does. None:
            away from zeros.

    Returns:
        A `keras_mm.DiffusionModel` that `keras_mm.MomentMatchingDistiller` takes.

    Example:
    ```python
    backbone = keras_hub.models.StableDiffusion3Backbone.from_preset(
        "stable_diffusion_3_medium", image_shape=(512, 512, 3))
    preprocessor = keras_hub.models.StableDiffusion3TextToImagePreprocessor.from_preset(
        "stable_diffusion_3_medium")
    teacher = keras_mm.models.sd3.sd3_teacher(
        backbone, empty_prompt=preprocessor.generate_preprocess([""]))
    token_ids = preprocessor.generate_preprocess(["a photo of a cat"])
    condition = keras_mm.models.sd3.encode_prompts(backbone, token_ids)
    latents = teacher.sample(condition=condition, num_steps=28, guidance_scale=6.0, seed=0)
    images = keras_mm.models.sd3.decode_latents(backbone, latents)
    ```
    """
    from keras_mm.models.diffusion_model import DiffusionModel

    network = SD3Denoiser.from_backbone(backbone)
    if empty_prompt is not None:
        network.set_null_condition(encode_prompts(backbone, empty_prompt))
    conditioning = SD3Conditioning(network.text_dim, network.pooled_dim,
                                   context_length(backbone))
    return DiffusionModel(network, schedule=FlowMatchingSchedule(shift=backbone.shift),
                          prediction_type="flow", loss_weighting="flow",
                          condition_dropout=condition_dropout, seed=seed,
                          conditioning=conditioning, latent=True)


def encode_prompts(backbone, token_ids):
    """SD3's condition of tokenized prompts, with the backbone's CLIP-L/G (and T5).

    Args:
        backbone: a `keras_hub.models.StableDiffusion3Backbone`.
        token_ids: `{"clip_l": int [B, 77], "clip_g": int [B, 77], "t5"?: int [B, n]}`, as
            KerasHub's `StableDiffusion3TextToImagePreprocessor` makes them.

    Returns:
        `{"context": [B, L, D], "pooled_projection": [B, P]}`, float32.
    """
    context, _, pooled, _ = backbone.encode_text_step(token_ids, token_ids)
    return {"context": ops.cast(context, "float32"),
            "pooled_projection": ops.cast(pooled, "float32")}


def encode_images(backbone, images):
    """Images in [-1, 1] [B, H, W, 3] -> the teacher's data: scaled VAE latents [B, h, w, 16]."""
    return ops.cast(backbone.encode_image_step(ops.convert_to_tensor(images, "float32")),
                    "float32")


def decode_latents(backbone, latents):
    """Latents (samples of an SD3 teacher or student) -> images in about [-1, 1]."""
    return ops.cast(backbone.decode_step(ops.convert_to_tensor(latents, "float32")), "float32")


# The tiny tokenizer's vocabulary: lowercase letters and digits, alone and word-final (CLIP's
# "</w>"), one merge, then CLIP's start and end tokens. The end token has the largest id:
# SD3 pools CLIP's output at the argmax of the token ids.
_TINY_SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789"
_TINY_VOCABULARY = {token: index for index, token in enumerate(
    [*_TINY_SYMBOLS, *(f"{symbol}</w>" for symbol in _TINY_SYMBOLS), "th"])}
_TINY_VOCABULARY["<|startoftext|>"] = len(_TINY_VOCABULARY)
_TINY_VOCABULARY["<|endoftext|>"] = len(_TINY_VOCABULARY)


def tiny_sd3_preprocessor(sequence_length=8):
    """A KerasHub `StableDiffusion3TextToImagePreprocessor` for `tiny_sd3_backbone`: CLIP
    tokenizers over letters and digits (other characters become the end token), built in
    code so that nothing downloads.

    Args:
        sequence_length: tokens per prompt, the tiny CLIP encoders' length.

    Returns:
        The preprocessor; `.generate_preprocess(prompts)` gives `encode_prompts`'s token ids.
    """
    import keras_hub
    from keras_hub.src.models.clip.clip_preprocessor import CLIPPreprocessor
    from keras_hub.src.models.clip.clip_tokenizer import CLIPTokenizer

    def clip():
        tokenizer = CLIPTokenizer(vocabulary=dict(_TINY_VOCABULARY), merges=["t h"],
                                  pad_with_end_token=True)
        return CLIPPreprocessor(tokenizer, sequence_length=sequence_length)

    return keras_hub.models.StableDiffusion3TextToImagePreprocessor(clip(), clip())


def tiny_sd3_backbone(image_shape=(32, 32, 3), sequence_length=8, seed=0):
    """A randomly initialised tiny KerasHub `StableDiffusion3Backbone`: a one-layer MMDiT of
    width 16, a 32-channel VAE, one-layer CLIP-L/G of width 8 and no T5. Runs on a CPU in
    seconds; its samples are noise-like (nothing is trained), which is enough to exercise
    the SD3 chain (`keras-mm distill --config sd3_tiny`).

    Args:
        image_shape: `(height, width, 3)`, multiples of 8 (latents are 8x smaller, 16
            channels).
        sequence_length: tokens per prompt (`tiny_sd3_preprocessor`'s).
        seed: seed of the random weights.

    Returns:
        The backbone; `sd3_teacher(backbone)` is its keras_mm teacher.
    """
    import keras_hub
    from keras_hub.src.models.clip.clip_text_encoder import CLIPTextEncoder
    from keras_hub.src.models.vae.vae_backbone import VAEBackbone

    keras.utils.set_random_seed(seed)
    vocabulary_size = len(_TINY_VOCABULARY)
    vae = VAEBackbone([32] * 4, [1] * 4, [32] * 4, [1] * 4, sampler_method="mode", name="vae")
    clip_l, clip_g = (
        CLIPTextEncoder(vocabulary_size, 8, 8, 1, 2, 16, activation, -1,
                        max_sequence_length=sequence_length, name=name)
        for name, activation in (("clip_l", "quick_gelu"), ("clip_g", "gelu")))
    latent_size = image_shape[0] // 8
    return keras_hub.models.StableDiffusion3Backbone(
        mmdit_patch_size=2, mmdit_hidden_dim=16, mmdit_num_layers=1, mmdit_num_heads=2,
        mmdit_position_size=max(latent_size // 2, 1), mmdit_qk_norm=None,
        mmdit_dual_attention_indices=None, vae=vae, clip_l=clip_l, clip_g=clip_g,
        image_shape=tuple(image_shape))
