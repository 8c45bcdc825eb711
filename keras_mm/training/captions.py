"""Caption data of a text-to-image config: the text encoder, the images and their captions.

Each distinct caption goes through the text encoder once and is cached beside the run
(`CaptionData`); the checks here run before anything large is loaded or built.
"""

import os
import warnings

from keras_mm.configs import ConfigError

SHAPES = "shapes"  # data.name of keras_mm.datasets.make_captioned_shapes
SHAPES_BACKGROUND_TINT = 0.4  # as examples/text_to_image.py: colour is a whole-image cue


def is_text(config):
    return config is not None and config["data"]["source"] == "captions"


def check_caption_config(config):
    """One-line errors for a captions config's data section, before anything is loaded."""
    data = config["data"]
    if data["num_classes"] is not None:
        raise ConfigError("Caption data is not labelled: set data.num_classes=null.")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise ConfigError(f"data.name must be {SHAPES!r} or a TFDS dataset name; got {name!r}.")
    if name != SHAPES:
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(name, data_dir=data["data_dir"])
        except Exception as error:  # noqa: BLE001 - TFDS raises several kinds
            raise ConfigError(
                f"Unknown data.name {name!r} for captions: neither {SHAPES!r} (the bundled "
                f"captioned shapes) nor a TFDS dataset ({first_line(error)})."
            ) from None
        features = builder.info.features
        caption = data["caption_feature"].split("/")[0]
        for key, feature in (("image_feature", data["image_feature"]),
                             ("caption_feature", caption)):
            if feature not in features:
                raise ConfigError(
                    f"TFDS dataset {name!r} has no feature {feature!r} (data.{key}); its "
                    f"features are {sorted(features.keys())}."
                )
    encoder = data["text_encoder"]
    if not isinstance(encoder, str) or not encoder:
        raise ConfigError("data.text_encoder must name a KerasHub T5 preset or a local "
                           f"preset directory; got {encoder!r}.")


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_text_encoder(config):
    """The `keras_mm.TextEncoder` of data.text_encoder, or a one-line ConfigError."""
    data = config["data"]
    preset = data["text_encoder"]
    looks_local = "://" not in preset and (
        os.sep in preset or "/" in preset or preset.startswith((".", "~")))
    path = os.path.expanduser(preset)
    if looks_local and not os.path.isdir(path):
        raise ConfigError(f"data.text_encoder: no text encoder preset directory at "
                           f"'{preset}'.")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(
            f"data.text_encoder: '{preset}' is not a KerasHub preset directory (no "
            "config.json); write one with T5Backbone.save_to_preset and "
            "T5Tokenizer.save_to_preset.")
    from keras_mm.models.text_encoder import TextEncoder

    try:
        with warnings.catch_warnings():  # KerasHub's T5 layers warn about Keras masks
            warnings.filterwarnings("ignore", message=".*does not support masking")
            encoder = TextEncoder.from_preset(path if os.path.isdir(path) else preset,
                                              sequence_length=data["sequence_length"])
    except Exception as error:  # noqa: BLE001 - KerasHub/Kaggle raise many kinds
        raise ConfigError(
            f"Could not load the text encoder data.text_encoder={preset!r}: "
            f"{first_line(error)}") from None
    print(f"Text encoder {preset}: {encoder.hidden_dim}-wide embeddings, "
          f"{encoder.sequence_length} tokens per caption.")
    return encoder


def check_text_dim(model, config, encoder=None):
    """The model takes captions exactly when the config's data has them, and (given the
    encoder) at the encoder's width."""
    text_dim = getattr(model, "text_dim", None)
    if not is_text(config):
        if text_dim is not None:
            raise ConfigError(
                f"The model is text-conditional (text_dim={text_dim}) but the config's "
                f"data.source is {config['data']['source']!r}: use a captions config, e.g. "
                "--config text2image_toy, or the config.json of the model's run.")
        return
    width = "the text encoder's hidden_dim" if encoder is None else encoder.hidden_dim
    if text_dim is None:
        raise ConfigError(
            f"data.source is 'captions' but the network has no text_dim: set "
            f"model.uvit.text_dim to {width}.")
    if encoder is not None and text_dim != encoder.hidden_dim:
        raise ConfigError(
            f"model.uvit.text_dim is {text_dim} but the text encoder "
            f"{config['data']['text_encoder']!r} gives {encoder.hidden_dim}-wide embeddings; "
            f"set --set model.uvit.text_dim={encoder.hidden_dim} (and train the teacher "
            "with it).")


def caption_data(config, model, cache_dir, encoder=None):
    """A CaptionData for a captions config (its encoder checked against `model`), else
    None."""
    if not is_text(config):
        return None
    encoder = encoder or load_text_encoder(config)
    check_text_dim(model, config, encoder)
    return CaptionData(config, encoder, cache_dir)


class CaptionData:
    """A captions config's images, captions and cached text embeddings.

    Each distinct caption goes through the text encoder once; the embeddings are kept in
    `cache_dir`/caption_embeddings.npz (keyed by caption and encoder config) across runs.
    """

    def __init__(self, config, encoder, cache_dir=None):
        self.config = config
        self.encoder = encoder
        self.cache_path = (os.path.join(cache_dir, "caption_embeddings.npz")
                           if cache_dir else None)
        self._reference = None

    def examples(self, split, num_examples, seed=0):
        """`(images float32 [N, H, W, C] in [-1, 1], captions)` of `split`."""
        data = self.config["data"]
        height, width, channels = data["image_shape"]
        if data["name"] == SHAPES:
            if height != width or channels != 3:
                raise ConfigError(f"The {SHAPES!r} data is square RGB; data.image_shape is "
                                   f"{data['image_shape']}.")
            from keras_mm.datasets import make_captioned_shapes

            try:
                return make_captioned_shapes(
                    num_examples or 8192, image_size=height,
                    background_tint=SHAPES_BACKGROUND_TINT, seed=seed)
            except ValueError as error:
                raise ConfigError(f"data: {error}") from None
        return load_tfds_captions(data, split, num_examples)

    def condition(self, captions):
        """`{"text_embeddings", "text_mask"}` of `captions`, through the cache."""
        from keras_mm.datasets import encode_captions

        return encode_captions(self.encoder, captions, cache_path=self.cache_path)

    def stream(self, batch_size, seed):
        from keras_mm.datasets import captioned_dataset

        data = self.config["data"]
        images, captions = self.examples(data["split"], data["num_examples"], seed=0)
        print(f"{len(images)} captioned images, e.g. {captions[0]!r}.")
        return captioned_dataset(images, captions, self.encoder, batch_size=batch_size,
                                 seed=seed, cache_path=self.cache_path).repeat()

    def reference(self):
        """The evaluation's real images and their captions (a held-out draw of the shapes,
        or the first eval.num_reference examples of eval.reference_split)."""
        if self._reference is None:
            evaluation = self.config["eval"]
            count = max(evaluation["num_reference"] or 0, evaluation["num_samples"])
            if self.config["data"]["name"] != SHAPES and evaluation["num_reference"] is None:
                count = None
            self._reference = self.examples(evaluation["reference_split"], count, seed=1)
        return self._reference

    def eval_captions(self, num_samples):
        captions = self.reference()[1]
        return [captions[i % len(captions)] for i in range(num_samples)]

    def eval_condition(self, num_samples):
        """The condition of `num_samples` evaluation samples: the reference captions."""
        return self.condition(self.eval_captions(num_samples))


def load_tfds_captions(data, split, num_examples):
    """Images (center-cropped, resized, in [-1, 1]) and one caption each from TFDS, held in
    memory: fine for moderate datasets; at scale, encode and shard offline."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    size = data["image_shape"][0]
    try:
        dataset = tfds.load(data["name"], split=split, data_dir=data["data_dir"],
                            shuffle_files=False)
    except Exception as error:  # noqa: BLE001 - TFDS raises several kinds
        raise ConfigError(f"Could not load TFDS {data['name']!r} split {split!r}: "
                           f"{first_line(error)}") from None
    if num_examples is not None:
        dataset = dataset.take(num_examples)

    def pick(example):
        image = tf.cast(example[data["image_feature"]], tf.float32)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(image, (height - side) // 2,
                                              (width - side) // 2, side, side)
        image = tf.image.resize(image, (size, size), method="area") / 127.5 - 1.0
        caption = example
        for part in data["caption_feature"].split("/"):
            caption = caption[part]
        if caption.shape.rank:  # several captions per image: the first
            caption = caption[0]
        return image, caption

    images, captions = [], []
    for image_batch, caption_batch in tfds.as_numpy(
            dataset.map(pick, num_parallel_calls=tf.data.AUTOTUNE).batch(256)):
        images.append(image_batch.astype("float32"))
        captions.extend(c.decode("utf-8") for c in caption_batch)
    if not captions:
        raise ConfigError(f"TFDS {data['name']!r} split {split!r} is empty.")
    return np.concatenate(images), captions
