"""Small networks with closed-form behaviour, and a tiny local T5 preset, shared by the tests."""

import contextlib
import csv
import io
import json
import os

import keras
import numpy as np
from keras import ops

from keras_mm.diffusion import alpha_sigma, broadcast_to_data


class GaussianPosteriorMean(keras.Model):
    """The exact E[x | z_t] for x ~ N(mean, std^2) per coordinate: an x-prediction network."""

    def __init__(self, image_shape, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.num_classes = None
        self.text_dim = None
        self.mean, self.std = float(mean), float(std)

    def call(self, inputs):
        z = inputs["noisy"]
        alpha, sigma = alpha_sigma(broadcast_to_data(inputs["logsnr"], z))
        var = self.std**2
        gain = alpha * var / (alpha**2 * var + sigma**2)
        return self.mean + gain * (z - alpha * self.mean)


@keras.saving.register_keras_serializable(package="keras_mm_tests")
class TinyConvNet(keras.Model):
    """A few-hundred-parameter conditional conv denoiser for fast tests."""

    def __init__(self, image_shape=(8, 8, 1), num_classes=10, width=8, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.text_dim = None
        self.width = width
        self.embed = keras.layers.Embedding(num_classes + 1, width)
        self.time = keras.layers.Dense(width)
        self.conv1 = keras.layers.Conv2D(width, 3, padding="same", activation="silu")
        self.conv2 = keras.layers.Conv2D(image_shape[-1], 3, padding="same")

    def call(self, inputs, training=False):
        z, logsnr = inputs["noisy"], inputs["logsnr"]
        h = self.conv1(z)
        emb = self.time(ops.stack([ops.sin(logsnr / 4), ops.cos(logsnr / 4)], axis=-1))
        emb = emb + self.embed(inputs["labels"])
        h = h + emb[:, None, None, :]
        return self.conv2(h)

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape,
                "num_classes": self.num_classes, "width": self.width}


def write_tiny_t5_preset(path, captions, hidden_dim=16, seed=0):
    """Write a KerasHub T5 preset directory, as a Kaggle download would unpack it: a
    SentencePiece word vocabulary trained on `captions` and a 2-layer T5 with random
    weights. Returns `path`."""
    import keras_hub
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=proto, vocab_size=64,
        model_type="WORD", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2,
    )  # fmt: skip
    tokenizer = keras_hub.models.T5Tokenizer(proto=proto.getvalue())
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_heads=2,
        hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim, dropout=0.0,
    )  # fmt: skip
    # KerasHub draws a fresh T5's token embeddings around 1 +- 0.05 (TruncatedNormal(1.0)
    # sets the mean), so all captions would embed alike; trained embeddings are spread out.
    table = backbone.token_embedding.embeddings
    table.assign(np.random.default_rng(seed).normal(size=table.shape).astype("float32"))
    backbone.save_to_preset(str(path))
    tokenizer.save_to_preset(str(path))
    return str(path)


def write_image_file(path, pixels):
    """Writes uint8 pixels [H, W, C] (C = 1: grayscale, 3: RGB, 4: RGBA) as an image file
    whose format follows the suffix (.png, .jpg, ...); makes the folders. Returns `path`."""
    import os

    from PIL import Image

    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    pixels = np.asarray(pixels, np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(str(path))
    return path


def write_image_folder(path, images, labels=None, class_names=None):
    """Writes images in [-1, 1] [N, H, W, C] as PNGs, `path/<class name>/00000.png` with
    labels (class names default to the label's digits) or `path/00000.png` without, as
    `keras_mm.datasets.load_image_folder` reads them. Returns `str(path)`."""
    import os

    pixels = np.round((np.clip(np.asarray(images), -1.0, 1.0) + 1.0) * 127.5)
    for index, image in enumerate(pixels.astype(np.uint8)):
        folder = str(path)
        if labels is not None:
            label = int(labels[index])
            folder = os.path.join(folder, class_names[label] if class_names else f"{label:03d}")
        write_image_file(os.path.join(folder, f"{index:05d}.png"), image)
    return str(path)


class GaussianDenoiser(keras.Model):
    """The exact E[x | z_t] (`prediction_type="x"`) or velocity E[eps - x | z_t] ("flow") for
    x ~ N(mean, std^2) per coordinate and z_t = alpha x + sigma eps in the scale `family`."""

    def __init__(self, image_shape, mean, std, family="vp", prediction_type="x", **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.num_classes = None
        self.text_dim = None
        self.mean, self.std = float(mean), float(std)
        self.family, self.prediction_type = family, prediction_type

    def call(self, inputs):
        z = inputs["noisy"]
        alpha, sigma = alpha_sigma(broadcast_to_data(inputs["logsnr"], z), self.family)
        var = self.std**2
        residual = (z - alpha * self.mean) / (alpha**2 * var + sigma**2)
        if self.prediction_type == "flow":  # Cov(eps - x, z) = sigma - alpha var
            return -self.mean + (sigma - alpha * var) * residual
        return self.mean + alpha * var * residual


class InterruptAt(keras.callbacks.Callback):
    """Raises RuntimeError("interrupted") when epoch `epoch` begins: a run stopped there."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


# ---------------------------------------------------------------------- the keras-mm CLI
@contextlib.contextmanager
def jax_compilation_cache(directory):
    """Each command builds fresh models, which JAX compiles again (the resumed teacher, the
    evaluated generator's sampler); its persistent cache makes those repeats cheap."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax
    from jax._src import compilation_cache

    options = {"jax_compilation_cache_dir": str(directory),
               "jax_persistent_cache_min_compile_time_secs": 0.0}
    saved = {name: getattr(jax.config, name) for name in options}
    for name, value in options.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # it is set up once per process otherwise
    try:
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def run_captured(argv):
    """`keras_mm.cli.main(argv)` with its stdout, as `(exit code, stdout)`."""
    from keras_mm.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def read_best_fid(run_dir):
    """`(fid, step)` of the best FID that `keras-mm distill` kept in `run_dir` (the
    FIDCallback record beside best_fid.weights.h5)."""
    with open(os.path.join(run_dir, "best_fid.best.json")) as f:
        record = json.load(f)
    return record["best_fid"], record["best_step"]


def config_network(config):
    """The UViT arguments that a run config builds (`keras_mm.training.build_teacher`): its
    preset, model.uvit, and the data's image shape and classes; tuples as lists."""
    from keras_mm.models.uvit_presets import UVIT_PRESETS

    arguments = dict(UVIT_PRESETS.get(config["model"]["uvit_preset"]) or {})
    arguments.update(config["model"]["uvit"], image_shape=config["data"]["image_shape"],
                     num_classes=config["data"]["num_classes"])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()}
