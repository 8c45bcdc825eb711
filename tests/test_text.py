"""Text to image (§5.5) at toy scale: a tiny T5 loaded from a local KerasHub preset, a UViT
teacher that follows captions of coloured shapes, distilled students, FID and export.

No download: the preset directory is written here from a tiny random T5 and a SentencePiece
model trained on the captions, and loaded through the same `from_preset` path as a Kaggle
preset.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from keras import ops

keras_hub = pytest.importorskip("keras_hub")
spm = pytest.importorskip("sentencepiece")

from keras_mm import datasets
from keras_mm.callbacks import FIDCallback
from keras_mm.distillation import MomentMatchingDistiller
from keras_mm.export import VOCABULARY_FILE, export_sampler, sampler_noise, tokenize_for_sampler
from keras_mm.metrics.feature_extractor import FeatureExtractor
from keras_mm.models.diffusion_model import DiffusionModel
from keras_mm.models.text_encoder import TextEncoder
from keras_mm.models.uvit import UViT
from tests.helpers import TinyConvNet, write_tiny_t5_preset

# KerasHub's T5 layers take the padding mask as an argument, and warn about Keras masks.
pytestmark = pytest.mark.filterwarnings("ignore:.*does not support masking")

SEQUENCE_LENGTH = 8
TEXT_DIM = 16
COLORS = list(datasets.SHAPE_COLORS)
TEACHER_STEPS = 150
EVAL_CAPTIONS = [f"a {c} square on the {p}" for c in COLORS for p in ("left", "right")] * 16


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


@pytest.fixture(scope="module")
def data():
    # The background is tinted with the shape's colour so that colour is a whole-image
    # attribute, which a tiny teacher learns within TEACHER_STEPS.
    return datasets.make_captioned_shapes(2048, background_tint=0.4, seed=0)


@pytest.fixture(scope="module")
def preset_dir(data, tmp_path_factory):
    """A KerasHub T5 preset directory, as a Kaggle download would unpack it."""
    _, captions = data
    return write_tiny_t5_preset(tmp_path_factory.mktemp("t5_tiny"), captions[:400],
                                hidden_dim=TEXT_DIM)


@pytest.fixture(scope="module")
def encoder(preset_dir):
    return TextEncoder.from_preset(preset_dir, sequence_length=SEQUENCE_LENGTH)


def caption_following(images, captions):
    """Colour and position agreement of images with their captions, printed.

    colour: the caption's channel is the brightest of the image mean (chance 1/3);
    margin: the smallest, over the three colours, of the caption channel's lead over the
    next channel in the mean image of that colour's captions.
    """
    images = np.asarray(images, "float64")
    target = np.array([COLORS.index(c.split()[1]) for c in captions])
    left = np.array(["left" in c for c in captions])
    mean_color = images.mean(axis=(1, 2))
    accuracy = float(np.mean(mean_color.argmax(-1) == target))
    groups = np.stack([mean_color[target == c].mean(0) for c in range(3)])
    margin = float(min(groups[c, c] - np.delete(groups[c], c).max() for c in range(3)))
    width = images.shape[2] // 2
    balance = images[:, :, :width].mean(axis=(1, 2, 3)) - images[:, :, width:].mean(axis=(1, 2, 3))
    position = float(np.mean((balance > 0) == left))
    return {"color_accuracy": accuracy, "color_margin": margin, "position_accuracy": position}


@pytest.fixture(scope="module")
def teacher(data, encoder):
    images, captions = data
    keras.utils.set_random_seed(0)
    network = UViT(
        image_shape=(8, 8, 3), base_channels=16, channel_multipliers=(1, 2), num_res_blocks=(1, 0),
        transformer_depth=1, num_heads=2, num_classes=None, text_dim=encoder.hidden_dim,
        embedding_dim=32, norm_groups=4,
    )  # fmt: skip
    model = DiffusionModel(network, condition_dropout=0.1, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3, global_clipnorm=1.0))
    dataset = datasets.captioned_dataset(images, captions, encoder, batch_size=64).repeat()
    history = model.fit(dataset, epochs=1, steps_per_epoch=TEACHER_STEPS, verbose=0)
    print(f"teacher loss after {TEACHER_STEPS} steps: {history.history['loss'][-1]:.3f}")
    return model


# ---------------------------------------------------------------------- the text encoder
def test_encoder_from_local_preset_matches_the_t5_encoder(encoder, preset_dir, tmp_path):
    tokens = encoder.tokenize(["a red square on the left", "blue circle, right"])
    assert tokens["token_ids"].shape == (2, SEQUENCE_LENGTH)
    assert tokens["padding_mask"].dtype == bool and tokens["padding_mask"][1, -1] == 0
    condition = encoder.encode(["a red square on the left", "blue circle, right"])
    assert condition["text_embeddings"].shape == (2, SEQUENCE_LENGTH, TEXT_DIM)
    np.testing.assert_array_equal(condition["text_mask"], tokens["padding_mask"])
    # The preprocessor's token_ids / padding_mask reach the encoder_* inputs of the T5.
    backbone = keras_hub.models.T5Backbone.from_preset(preset_dir)
    ids, mask = tokens["token_ids"], tokens["padding_mask"].astype("int32")
    full = backbone({"encoder_token_ids": ids, "encoder_padding_mask": mask,
                     "decoder_token_ids": ids, "decoder_padding_mask": mask})
    np.testing.assert_allclose(condition["text_embeddings"],
                               np_(full["encoder_sequence_output"]), atol=1e-5)
    # Encoder only, frozen.
    assert encoder.trainable_weights == []
    assert 0 < encoder.count_params() < backbone.count_params()
    assert not [w for w in encoder.weights if "decoder" in w.path]
    # A .keras round trip keeps weights and the tokenizer.
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored.encode(["blue circle, right"])["text_embeddings"],
                               condition["text_embeddings"][1:], atol=1e-6)


def test_long_captions_are_truncated_with_a_warning(encoder):
    long_caption = "a red square on the left side of a blue circle on the right"
    with pytest.warns(UserWarning, match=r"1 of 2 captions .* truncated"):
        tokens = encoder.tokenize([long_caption, "a red square"])
    assert tokens["token_ids"].shape == (2, SEQUENCE_LENGTH) and tokens["padding_mask"][0].all()
    assert tokens["token_ids"][0, -1] == 1  # still ends with </s>
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.tokenize(["a red square on the left side"])  # exactly 8 tokens with </s>


def test_captions_are_encoded_once_and_cached(encoder, tmp_path, monkeypatch):
    captions = ["a red square on the left", "green circle, right", "a red square on the left"]
    calls = []
    original = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda c, **k: calls.append(list(c)) or original(c, **k))
    cache = str(tmp_path / "cache.npz")
    first = datasets.encode_captions(encoder, captions, cache_path=cache)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(set(captions))
    np.testing.assert_array_equal(first["text_embeddings"][0], first["text_embeddings"][2])
    again = datasets.encode_captions(encoder, captions[:2] + ["a blue square"], cache_path=cache)
    assert calls[1] == ["a blue square"]  # only the new caption ran through the encoder
    np.testing.assert_allclose(again["text_embeddings"][:2], first["text_embeddings"][:2])


# ---------------------------------------------------------------------- bad input
def test_text_given_to_a_model_without_text_conditioning_fails_clearly(encoder):
    condition = encoder.encode(["a red square", "a blue circle"])
    labelled = DiffusionModel(TinyConvNet(image_shape=(8, 8, 1)))
    with pytest.raises(ValueError, match="built without it"):
        labelled.sample(labels=[0, 1], condition=condition, num_steps=2)
    with pytest.raises(ValueError, match="built without text conditioning"):
        UViT.from_preset("uvit_tiny")({"noisy": np.zeros((2, 8, 8, 1), "float32"),
                                       "logsnr": np.zeros(2, "float32"),
                                       "labels": np.zeros(2, "int32"), **condition})
    images = np.zeros((2, 8, 8, 1), "float32")
    labelled.compile()
    with pytest.raises(ValueError, match="built without it"):
        labelled.fit({"images": images, "labels": np.zeros(2, "int32"), **condition}, verbose=0)


def test_text_model_rejects_mismatched_text_inputs(teacher, encoder):
    condition = encoder.encode(["a red square", "a blue circle"])
    with pytest.raises(ValueError, match="text-conditional"):
        teacher.sample(num_samples=2, num_steps=2)
    with pytest.raises(ValueError, match="without text_mask"):
        teacher.sample(condition={"text_embeddings": condition["text_embeddings"]}, num_steps=2)
    wide = {"text_embeddings": np.zeros((2, 8, 32), "float32"), "text_mask": condition["text_mask"]}
    with pytest.raises(ValueError, match="text_dim=16"):
        teacher.sample(condition=wide, num_steps=2)
    short_mask = dict(condition, text_mask=condition["text_mask"][:, :4])
    with pytest.raises(ValueError, match="agree"):
        teacher.sample(condition=short_mask, num_steps=2)


# ---------------------------------------------------------------------- caption following
def test_teacher_follows_its_captions(teacher, encoder):
    condition = encoder.encode(EVAL_CAPTIONS)
    images = teacher.sample(condition=condition, num_steps=8, seed=1)
    scores = caption_following(np_(images), EVAL_CAPTIONS)
    print(f"teacher, 8 steps, {len(EVAL_CAPTIONS)} samples: {scores}")
    assert scores["color_accuracy"] > 0.6  # chance: 1/3
    assert scores["color_margin"] > 0.1


def test_null_caption_is_an_empty_mask_of_any_length(teacher, encoder):
    # Caption dropout trains on all-False masks of the data's length; guidance calls the
    # model's null condition (length 1). Both must be the learned null embedding.
    condition = encoder.encode(EVAL_CAPTIONS[:3] * 2)
    condition["text_mask"][3:] = False  # the last three: dropped captions
    noisy = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    logsnr = np.array([-2.0, 0.0, 3.0], "float32")
    null = np_(teacher.denoise(noisy, logsnr, teacher.null_condition(3)))
    x_hat = np_(teacher.denoise(np.tile(noisy, (2, 1, 1, 1)), np.tile(logsnr, 2), condition))
    np.testing.assert_allclose(x_hat[3:], null, atol=1e-5)
    assert np.abs(x_hat[:3] - null).max() > 1e-2


class MeanColorFeatures(FeatureExtractor):
    """Mean colour of the left and right halves: 6 features, enough to tell captions apart."""

    def __init__(self):
        inputs = keras.Input((8, 8, 3))
        features = keras.layers.Flatten()(keras.layers.AveragePooling2D((8, 4))(inputs))
        super().__init__(keras.Model(inputs, features), name="mean_color_halves")


@pytest.mark.parametrize("method", ["alternating", "instant"])
def test_distilled_students_follow_captions(teacher, encoder, data, method):
    images, captions = data
    fid = FIDCallback(
        reference_data=images[:192], condition=encoder.encode(captions[:192]),
        feature_extractor=MeanColorFeatures(), num_samples=192, batch_size=96,
        num_steps=4, verbose=0,
    )  # fmt: skip
    distiller = MomentMatchingDistiller(teacher, num_steps=4, method=method, seed=0)
    distiller.compile(learning_rate=3e-4, warmup_steps=8)
    dataset = datasets.captioned_dataset(images, captions, encoder, batch_size=32).repeat()
    history = distiller.fit(dataset, epochs=1, steps_per_epoch=24, callbacks=[fid], verbose=0)
    logs = {k: float(v[-1]) for k, v in history.history.items()}
    print(f"{method} distillation: {logs}")
    assert all(np.isfinite(v) for v in logs.values())
    # The reference images' captions give a lower FD than one caption for all samples.
    one_caption = FIDCallback(
        reference_data=images[:192], condition=encoder.encode(["a red circle, left"] * 192),
        feature_extractor=MeanColorFeatures(), num_samples=192, batch_size=96,
        num_steps=4, verbose=0,
    )  # fmt: skip
    mismatched = one_caption.evaluate(distiller)["fid"]
    print(f"FD to the reference: its captions {logs['fid']:.3f}, one caption {mismatched:.3f}")
    assert logs["fid"] < 0.5 * mismatched

    condition = encoder.encode(EVAL_CAPTIONS)
    scores = caption_following(np_(distiller.sample(condition=condition, seed=1)), EVAL_CAPTIONS)
    print(f"{method} student, 4 steps: {scores}")
    assert scores["color_accuracy"] > 0.6 and scores["color_margin"] > 0.1


# ---------------------------------------------------------------------- export
SERVE_SCRIPT = r"""
import json, sys
sys.modules["keras_mm"] = None  # plain TensorFlow only
import numpy as np
import tensorflow as tf

spec = json.load(open(sys.argv[1]))
inputs = dict(np.load(spec["inputs"]))
sampler = tf.saved_model.load(spec["path"])
seed = tf.constant([0, 0])
out = {
    "from_embeddings": sampler.sample(text_embeddings=inputs["text_embeddings"],
                                      text_mask=inputs["text_mask"], seed=seed).numpy(),
    "from_tokens": sampler.sample_from_tokens(token_ids=inputs["token_ids"],
                                              padding_mask=inputs["padding_mask"],
                                              seed=seed).numpy(),
    "encoded": sampler.encode_text(token_ids=inputs["token_ids"],
                                   padding_mask=inputs["padding_mask"])["text_embeddings"].numpy(),
    "text_dim": sampler.metadata()["text_dim"].numpy(),
}
errors = {}
for name, call in {
    "mask_shape": lambda: sampler.sample(text_embeddings=inputs["text_embeddings"],
                                         text_mask=inputs["text_mask"][:, :3], seed=seed),
    "token_id": lambda: sampler.sample_from_tokens(token_ids=inputs["token_ids"] + 1000,
                                                   padding_mask=inputs["padding_mask"],
                                                   seed=seed),
}.items():
    try:
        call()
        errors[name] = None
    except tf.errors.InvalidArgumentError as error:
        errors[name] = error.message
np.savez(spec["outputs"], **out)
json.dump(errors, open(spec["errors"], "w"))
"""


def test_exported_sampler_takes_embeddings_and_token_ids(teacher, encoder, tmp_path):
    path = str(tmp_path / "t2i_sampler")
    # A copy never sampled from: on TensorFlow, the tf.functions that `sample` caches on the
    # model cannot be written into a SavedModel (reported to export's owner).
    model = DiffusionModel.from_config(teacher.get_config())
    model.network.set_weights(teacher.network.get_weights())
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        export_sampler(model, path, num_steps=1, output="float", guidance_scale=1.0,
                       text_encoder=encoder)
    assert "sample_from_tokens" in log.getvalue()
    captions = ["a red square on the left", "a blue circle on the right side", "green square"]
    # The captions' tokens come from the vocabulary that export_sampler wrote beside the
    # SavedModel (its sequence length from the metadata), not from the encoder.
    assert os.path.isfile(os.path.join(path, VOCABULARY_FILE))
    tokens = tokenize_for_sampler(path, captions)
    for key, value in encoder.tokenize(captions).items():
        np.testing.assert_array_equal(tokens[key], value)
    condition = encoder.encode(captions)
    np.savez(tmp_path / "inputs.npz", **tokens, **condition)
    spec = {"path": path, "inputs": str(tmp_path / "inputs.npz"),
            "outputs": str(tmp_path / "outputs.npz"), "errors": str(tmp_path / "errors.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "serve.py").write_text(SERVE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run([sys.executable, str(tmp_path / "serve.py"), str(tmp_path / "spec.json")],
                            env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = dict(np.load(spec["outputs"]))
    expected = np_(teacher.sample(condition=condition, num_steps=1, guidance_scale=1.0,
                                  noise=sampler_noise(0, 3, (8, 8, 3), 1)))
    np.testing.assert_allclose(out["from_embeddings"], expected, atol=1e-4)
    np.testing.assert_allclose(out["from_tokens"], expected, atol=1e-4)
    np.testing.assert_allclose(out["encoded"], condition["text_embeddings"], atol=1e-5)
    assert int(out["text_dim"]) == TEXT_DIM
    errors = json.loads((tmp_path / "errors.json").read_text())
    assert "text_mask must have the shape" in errors["mask_shape"]
    assert "vocabulary size" in errors["token_id"]
