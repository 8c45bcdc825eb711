"""`TextEncoder`: the frozen encoder half of a KerasHub T5, with its tokenizer."""

import contextlib
import os
import warnings

import keras
import numpy as np
from keras import ops

from keras_mm.backend import no_grad
from keras_mm.models.conditioning import Conditioning

# T5 presets that make sense as text encoders. Imagen and the paper's §5.5 use T5-XXL
# (4.7B encoder parameters, 4096-wide embeddings); the others are for smaller budgets.
T5_ENCODER_PRESETS = (
    "t5_1.1_xxl",
    "t5_1.1_xl",
    "t5_1.1_large",
    "t5_1.1_base",
    "t5_1.1_small",
    "t5_base_multi",
    "t5_small_multi",
)


def _keras_hub():
    try:
        import keras_hub
    except ImportError as error:  # pragma: no cover - dependency message
        raise ImportError(
            "keras_mm.TextEncoder needs KerasHub and SentencePiece: "
            "pip install 'keras-mm[text]'."
        ) from error
    return keras_hub


@contextlib.contextmanager
def _quiet_t5_masks():
    """KerasHub's T5 layers take the padding mask as an argument; Keras's warning that they
    drop an attached Keras mask is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not support masking.*")
        yield


@keras.saving.register_keras_serializable(package="keras_mm")
class TokenConditioning(Conditioning):
    """Captions as token ids: `{"token_ids": int [B, L], "padding_mask": bool [B, L]}`, the
    input of a `keras_mm.TextEncoder`, which turns it into a `TextEmbeddingConditioning` condition
    (an exported sampler's `sample_from_tokens` and `encode_text` take it).

    Args:
        vocabulary_size: ids must be in [0, vocabulary_size).

    Example:
    ```python
    tokens = keras_mm.models.text_encoder.TokenConditioning(vocabulary_size=32128)
    tokens.validate({"token_ids": [[5, 1]], "padding_mask": [[True, True]]})
    ```
    """

    name = "token"
    keys = ("token_ids", "padding_mask")
    unit = "caption"
    hint = " (keras_mm.TextEncoder.tokenize returns both)"
    misplaced = ("Token ids were given, but a diffusion model takes the text encoder's "
                 "embeddings: pass text_encoder.encode_tokens(token_ids, padding_mask).")

    def __init__(self, vocabulary_size):
        self.vocabulary_size = int(vocabulary_size)

    @property
    def signature(self):
        return {"token_ids": (("B", "L"), "int32"), "padding_mask": (("B", "L"), "bool")}

    def null(self, batch_size):
        return {"token_ids": ops.zeros((batch_size, 1), "int32"),
                "padding_mask": ops.zeros((batch_size, 1), "bool")}

    def range_message(self, got):
        v = self.vocabulary_size
        return f"token_ids must be in [0, {v}) (the vocabulary size is {v}); got {got}."

    def check_values(self, values):
        ids = values["token_ids"]
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocabulary_size):
            raise ValueError(self.range_message(f"values in [{ids.min()}, {ids.max()}]"))

    def export_value_checks(self, tensors):
        import tensorflow as tf

        ids = tensors["token_ids"]
        return [
            tf.debugging.assert_non_negative(ids, message=self.range_message("a negative id")),
            tf.debugging.assert_less(ids, tf.constant(self.vocabulary_size, tf.int32),
                                     message=self.range_message("a larger id")),
        ]

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size}


@keras.saving.register_keras_serializable(package="keras_mm")
class TextEncoder(keras.Model):
    """The frozen encoder half of a KerasHub T5: captions -> token embeddings and mask.

    A functional model built from the encoder layers of a `keras_hub.models.T5Backbone`
    (token embedding, encoder transformer layers, final layer norm); the decoder is not
    part of it, so its weights are freed once the backbone is dropped. It takes the output
    of `keras_hub.models.T5Preprocessor`, `{"token_ids", "padding_mask"}` (mapped to the
    backbone's `encoder_token_ids` / `encoder_padding_mask`), and returns the condition
    dict of a text-conditional `keras_mm.DiffusionModel`:
    `{"text_embeddings": [B, L, hidden_dim] float, "text_mask": [B, L] bool}`.

    The encoder is frozen (`trainable=False`) and runs in inference mode. Encode each
    caption once and cache the result (`encode`, `keras_mm.datasets.encode_captions`,
    `keras_mm.datasets.captioned_dataset`), so that a T5-XXL is not run at every step.

    Captions longer than `sequence_length` tokens (end token included) are truncated to
    it, with a warning naming how many were cut and the longest length, as T5-conditioned
    diffusion models do (Imagen: 128 tokens). Raise `sequence_length` to keep them whole.

    Args:
        backbone: a `keras_hub.models.T5Backbone`.
        preprocessor: a `keras_hub.models.T5Preprocessor` (tokenizer + padding to its
            `sequence_length`), or None for a model that only takes token ids.

    Call arguments:
        inputs: dict with `"token_ids"` [B, L] int and `"padding_mask"` [B, L] bool or 0/1.

    Example:
    ```python
    encoder = keras_mm.TextEncoder.from_preset("t5_1.1_xxl", sequence_length=128,
                                               dtype="bfloat16")
    condition = encoder.encode(["a red square on the left", "a photo of a corgi"])
    condition["text_embeddings"].shape  # (2, 128, 4096)
    network = keras_mm.UViT(image_shape=(64, 64, 3), text_dim=encoder.hidden_dim)
    ```

    References:
        Salimans et al. 2024, §5.5 (text-to-image with a T5-XXL encoder, following Imagen:
        Saharia et al. 2022); Raffel et al. 2020 (T5).
    """

    def __init__(self, backbone, preprocessor=None, **kwargs):
        keras_hub = _keras_hub()
        if not isinstance(backbone, keras_hub.models.T5Backbone):
            raise TypeError(
                "`backbone` must be a keras_hub.models.T5Backbone (e.g. "
                "keras_hub.models.T5Backbone.from_preset('t5_1.1_xxl')); got "
                f"{type(backbone).__name__}. Use TextEncoder.from_preset(...) to load one."
            )
        # The encoder half of the backbone's own graph, with the preprocessor's key names.
        encoder = keras.Model(
            {
                "encoder_token_ids": backbone.input["encoder_token_ids"],
                "encoder_padding_mask": backbone.input["encoder_padding_mask"],
            },
            backbone.output["encoder_sequence_output"],
            name="t5_encoder",
        )
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        with _quiet_t5_masks():
            embeddings = encoder(
                {"encoder_token_ids": token_ids, "encoder_padding_mask": padding_mask}
            )
        outputs = {
            "text_embeddings": embeddings,
            "text_mask": keras.ops.cast(padding_mask, "bool"),
        }
        kwargs.setdefault("name", "text_encoder")
        kwargs.setdefault("trainable", False)
        super().__init__({"token_ids": token_ids, "padding_mask": padding_mask}, outputs,
                         **kwargs)
        # The backbone's config, not the backbone: tracking it would keep the decoder.
        self.backbone_config = keras.saving.serialize_keras_object(backbone)
        self.preprocessor = preprocessor
        self.hidden_dim = int(backbone.hidden_dim)
        self.vocabulary_size = int(backbone.vocabulary_size)

    @classmethod
    def from_preset(cls, preset, sequence_length=128, dtype=None, load_weights=True):
        """Load a T5 encoder and tokenizer from a KerasHub preset.

        Args:
            preset: a KerasHub T5 preset name (e.g. "t5_1.1_xxl", "t5_base_multi"; see
                `T5_ENCODER_PRESETS`; downloaded from Kaggle, which needs Kaggle
                credentials), a Kaggle / Hugging Face handle, or a local preset directory
                (as written by `T5Backbone.save_to_preset` and
                `T5Tokenizer.save_to_preset`).
            sequence_length: tokens per caption after padding / truncation.
            dtype: weights and compute dtype, e.g. "bfloat16" to halve a T5-XXL's memory.
            load_weights: False builds the architecture with random weights.

        Returns:
            A frozen `TextEncoder`. The whole backbone (decoder included) is loaded and the
            decoder freed afterwards, so peak memory is that of the full T5.
        """
        keras_hub = _keras_hub()
        backbone = keras_hub.models.T5Backbone.from_preset(
            preset, load_weights=load_weights, dtype=dtype
        )
        # T5Preprocessor.from_preset cannot find T5's preprocessor class (keras-hub 0.32),
        # so build it from the preset's tokenizer.
        tokenizer = keras_hub.models.T5Tokenizer.from_preset(preset)
        preprocessor = keras_hub.models.T5Preprocessor(tokenizer, sequence_length=sequence_length)
        return cls(backbone, preprocessor)

    @property
    def sequence_length(self):
        return None if self.preprocessor is None else int(self.preprocessor.sequence_length)

    def tokenize(self, captions):
        """Token ids and padding mask of `captions`, padded or truncated to `sequence_length`.

        Args:
            captions: a string or a list of strings.

        Returns:
            `{"token_ids": int32 [B, L], "padding_mask": bool [B, L]}` as NumPy arrays.
        """
        if self.preprocessor is None:
            raise ValueError(
                "This TextEncoder has no preprocessor, so it cannot tokenize captions. Build "
                "it with TextEncoder.from_preset(...) or pass preprocessor="
                "keras_hub.models.T5Preprocessor(tokenizer, sequence_length=...)."
            )
        captions = _as_caption_list(captions)
        self._warn_on_long_captions(captions)
        packed = self.preprocessor(captions)
        return {
            "token_ids": np.asarray(packed["token_ids"]).astype("int32"),
            "padding_mask": np.asarray(packed["padding_mask"]).astype(bool),
        }

    def _warn_on_long_captions(self, captions):
        ids = self.preprocessor.tokenizer(captions)
        ids = ids.to_list() if hasattr(ids, "to_list") else ids
        special = int(self.preprocessor.add_start_token) + int(self.preprocessor.add_end_token)
        lengths = np.array([len(np.asarray(row).reshape(-1)) + special for row in ids])
        long = np.flatnonzero(lengths > self.sequence_length)
        if long.size:
            first = captions[long[0]]
            warnings.warn(
                f"{long.size} of {len(captions)} captions are longer than the text encoder's "
                f"sequence_length={self.sequence_length} tokens (longest: "
                f"{lengths.max()} tokens, e.g. {first[:60]!r}) and were truncated to it. "
                "Pass a larger sequence_length to TextEncoder.from_preset to keep them whole.",
                stacklevel=3,
            )

    def write_vocabulary(self, path):
        """Write the tokenizer's SentencePiece vocabulary (a `.spm` file) to `path`.

        Returns:
            `path`, or None when this encoder has no preprocessor (nothing is written).
        """
        if self.preprocessor is None:
            return None
        proto = self.preprocessor.tokenizer.proto
        if isinstance(proto, str):  # a path to the preset's vocabulary.spm
            with open(proto, "rb") as file:
                proto = file.read()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as file:
            file.write(proto)
        return path

    def encode(self, captions, batch_size=64):
        """Embed `captions` with the frozen encoder, in batches.

        Args:
            captions: a string or a list of strings.
            batch_size: captions per encoder call.

        Returns:
            `{"text_embeddings": float32 [B, L, hidden_dim], "text_mask": bool [B, L]}` as
            NumPy arrays: the condition of a text-conditional `DiffusionModel`.
        """
        tokens = self.tokenize(captions)
        return self.encode_tokens(tokens["token_ids"], tokens["padding_mask"], batch_size)

    def encode_tokens(self, token_ids, padding_mask, batch_size=64):
        """`encode` for already tokenized captions (int [B, L] ids and [B, L] mask)."""
        token_ids = np.asarray(token_ids, "int32")
        padding_mask = np.asarray(padding_mask).astype("int32")
        TokenConditioning(self.vocabulary_size).validate(
            {"token_ids": token_ids, "padding_mask": padding_mask})
        embeddings = []
        with no_grad(), _quiet_t5_masks():
            for start in range(0, len(token_ids), batch_size):
                batch = {
                    "token_ids": token_ids[start : start + batch_size],
                    "padding_mask": padding_mask[start : start + batch_size],
                }
                out = self(batch, training=False)["text_embeddings"]
                embeddings.append(np.asarray(keras.ops.convert_to_numpy(out), "float32"))
        width = self.hidden_dim
        return {
            "text_embeddings": np.concatenate(embeddings)
            if embeddings
            else np.zeros((0, token_ids.shape[1], width), "float32"),
            "text_mask": padding_mask.astype(bool),
        }

    def get_config(self):
        # Not chained to the functional config, which a custom __init__ cannot take back.
        return {
            "backbone": self.backbone_config,
            "preprocessor": None
            if self.preprocessor is None
            else keras.saving.serialize_keras_object(self.preprocessor),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        _keras_hub()  # registers the T5 classes
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("preprocessor") is not None:
            config["preprocessor"] = keras.saving.deserialize_keras_object(
                config["preprocessor"]
            )
        return cls(**config)


def tokenize_with_vocabulary(vocabulary, captions, sequence_length):
    """`TextEncoder.tokenize` without the encoder: T5 token ids of `captions` from a
    SentencePiece vocabulary file (as `TextEncoder.write_vocabulary` writes).

    Returns:
        `{"token_ids": int32 [B, L], "padding_mask": bool [B, L]}` as NumPy arrays.
    """
    keras_hub = _keras_hub()
    tokenizer = keras_hub.models.T5Tokenizer(proto=vocabulary)
    preprocessor = keras_hub.models.T5Preprocessor(tokenizer, sequence_length=sequence_length)
    packed = preprocessor(_as_caption_list(captions))
    return {"token_ids": np.asarray(packed["token_ids"]).astype("int32"),
            "padding_mask": np.asarray(packed["padding_mask"]).astype(bool)}


def _as_caption_list(captions):
    if isinstance(captions, str):
        return [captions]
    captions = [c.decode() if isinstance(c, bytes) else c for c in np.asarray(captions).tolist()]
    if not all(isinstance(c, str) for c in captions):
        raise ValueError("Captions must be strings (a string or a list of strings).")
    return captions
