"""Condition kinds: null values, checks, dropout and evaluation repeats against expected values,
and a kind defined here (a style vector) used through DiffusionModel, `.keras` and export."""

import contextlib
import io
import pathlib

import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm.export import export_sampler, sampler_noise
from keras_mm.models.conditioning import (
    CombinedConditioning,
    Conditioning,
    LabelConditioning,
    TextEmbeddingConditioning,
    Unconditional,
    conditioning_for_network,
)
from keras_mm.models.text_encoder import TokenConditioning

BACKEND = keras.backend.backend()


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def as_numpy(condition):
    return {key: np_(value) for key, value in condition.items()}


# ---------------------------------------------------------------------- the built-in kinds
def test_unconditional():
    kind = Unconditional()
    assert kind.keys == () and kind.null(3) == {} and kind.check({}, 3) == {}
    assert kind.drop({}, np.array([True, False])) == {}
    assert kind.repeat(None, 5) == {}
    with pytest.raises(ValueError, match="takes no class labels"):
        kind.check({"labels": np.array([0, 1])})
    with pytest.raises(ValueError, match="built without it"):
        kind.check({"text_embeddings": np.zeros((1, 2, 4)), "text_mask": np.ones((1, 2))})


def test_labels():
    kind = LabelConditioning(10)
    np.testing.assert_array_equal(np_(kind.null(3)["labels"]), [10, 10, 10])
    checked = kind.check({"labels": np.array([0, 3, 10])}, batch_size=3)
    assert np_(checked["labels"]).dtype == np.int32
    with pytest.raises(ValueError) as error:
        kind.check({"labels": np.array([0, 11])})
    assert str(error.value) == ("labels must be in [0, 10) (or 10, the null label, for "
                                "unconditional samples); got values in [0, 11].")
    with pytest.raises(ValueError, match="got values in \\[-1, 2\\]"):
        kind.check({"labels": np.array([-1, 2])})
    with pytest.raises(ValueError, match="Got 3 labels for a batch of 2 images"):
        kind.check({"labels": np.array([0, 1, 2])}, batch_size=2)
    with pytest.raises(ValueError, match=r"labels must be \[B\]; got shape \(2, 1\)"):
        kind.check({"labels": np.zeros((2, 1), "int32")})
    with pytest.raises(ValueError, match=r"class-conditional \(10 classes\)"):
        kind.check({})
    with pytest.raises(ValueError, match="built without it"):
        kind.check({"labels": np.array([1]), "text_embeddings": np.zeros((1, 2, 4))})
    dropped = kind.drop({"labels": ops.convert_to_tensor(np.array([4, 5, 6], "int32"))},
                        ops.convert_to_tensor(np.array([True, False, True])))
    np.testing.assert_array_equal(np_(dropped["labels"]), [4, 10, 6])
    np.testing.assert_array_equal(kind.repeat(None, 12)["labels"], [*range(10), 0, 1])
    np.testing.assert_array_equal(kind.repeat({"labels": [7, 8]}, 5)["labels"], [7, 8, 7, 8, 7])
    with pytest.raises(ValueError, match="labels must be in"):
        kind.repeat({"labels": [7, 12]}, 5)


def test_text():
    kind = TextEmbeddingConditioning(text_dim=4)
    null = as_numpy(kind.null(2))
    assert null["text_embeddings"].shape == (2, 1, 4) and not null["text_embeddings"].any()
    assert null["text_mask"].shape == (2, 1) and not null["text_mask"].any()
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(2, 3, 4)).astype("float32")
    mask = np.array([[True, True, False], [True, False, False]])
    checked = as_numpy(kind.check({"text_embeddings": embeddings, "text_mask": mask}, 2))
    assert checked["text_mask"].dtype == bool
    with pytest.raises(ValueError, match="without text_mask"):
        kind.check({"text_embeddings": embeddings})
    with pytest.raises(ValueError, match="width 5, but the network was built with text_dim=4"):
        kind.check({"text_embeddings": np.zeros((2, 3, 5)), "text_mask": mask})
    with pytest.raises(ValueError, match="must agree on L"):
        kind.check({"text_embeddings": embeddings, "text_mask": mask[:, :2]})
    with pytest.raises(ValueError, match="text-conditional: pass text_embeddings"):
        kind.check({})
    dropped = as_numpy(kind.drop({"text_embeddings": embeddings, "text_mask": mask},
                                 ops.convert_to_tensor(np.array([False, True]))))
    np.testing.assert_array_equal(dropped["text_embeddings"], embeddings)
    np.testing.assert_array_equal(dropped["text_mask"], [[False] * 3, mask[1]])
    repeated = kind.repeat({"text_embeddings": embeddings, "text_mask": mask}, 3)
    np.testing.assert_array_equal(repeated["text_embeddings"], embeddings[[0, 1, 0]])
    np.testing.assert_array_equal(repeated["text_mask"], mask[[0, 1, 0]])
    with pytest.raises(ValueError, match="needs its condition"):
        kind.repeat(None, 3)


def test_tokens_and_combined():
    tokens = TokenConditioning(vocabulary_size=50)
    tokens.validate({"token_ids": np.array([[3, 1]]), "padding_mask": np.ones((1, 2), bool)})
    with pytest.raises(ValueError, match=r"token_ids must be in \[0, 50\) .* \[3, 50\]"):
        tokens.validate({"token_ids": np.array([[3, 50]]), "padding_mask": np.ones((1, 2))})
    both = conditioning_for_network(type("Net", (), {"num_classes": 3, "text_dim": 4})())
    assert isinstance(both, CombinedConditioning)
    assert both.keys == ("labels", "text_embeddings", "text_mask")
    condition = {"labels": np.array([1, 2]), "text_embeddings": np.ones((2, 3, 4), "float32"),
                 "text_mask": np.ones((2, 3), bool)}
    dropped = as_numpy(both.drop(condition, ops.convert_to_tensor(np.array([True, False]))))
    np.testing.assert_array_equal(dropped["labels"], [1, 3])
    np.testing.assert_array_equal(dropped["text_mask"], [[True] * 3, [False] * 3])
    with pytest.raises(ValueError, match="labels must be in"):
        both.check(dict(condition, labels=np.array([1, 5])))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(both))
    assert [type(p) for p in restored.parts] == [LabelConditioning, TextEmbeddingConditioning]
    assert restored.parts[1].text_dim == 4


def test_the_label_range_message_is_written_once():
    package = pathlib.Path(keras_mm.__file__).parent
    sources = "".join(path.read_text() for path in package.rglob("*.py"))
    assert sources.count("labels must be in [0") == 1


# ---------------------------------------------------------------------- a kind of one's own
@keras.saving.register_keras_serializable(package="keras_mm_tests")
class StyleConditioning(Conditioning):
    """A style vector [B, style_dim] (e.g. a pooled projection); zeros are the null style."""

    name = "style"
    keys = ("style",)
    unit = "style"

    def __init__(self, style_dim):
        self.style_dim = int(style_dim)

    @property
    def signature(self):
        return {"style": (("B", self.style_dim), "float32")}

    def null(self, batch_size):
        return {"style": ops.zeros((batch_size, self.style_dim))}

    def get_config(self):
        return {**super().get_config(), "style_dim": self.style_dim}


@keras.saving.register_keras_serializable(package="keras_mm_tests")
class StyleNet(keras.Model):
    """A denoiser whose output is shifted by a projection of the style vector."""

    def __init__(self, image_shape=(4, 4, 1), **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.project = keras.layers.Dense(image_shape[-1])
        self.time = keras.layers.Dense(image_shape[-1])
        self.conv = keras.layers.Conv2D(image_shape[-1], 3, padding="same")

    def call(self, inputs, training=False):
        shift = self.project(inputs["style"]) + self.time(inputs["logsnr"][:, None] / 8)
        return self.conv(inputs["noisy"]) + shift[:, None, None, :]

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape}


@pytest.fixture(scope="module")
def style_model():
    keras.utils.set_random_seed(0)
    model = keras_mm.DiffusionModel(StyleNet(), conditioning=StyleConditioning(3),
                                    condition_dropout=0.5, seed=0)
    model.compile()
    rng = np.random.default_rng(0)
    data = {"images": rng.uniform(-1, 1, size=(64, 4, 4, 1)).astype("float32"),
            "style": rng.normal(size=(64, 3)).astype("float32")}
    history = model.fit(data, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    return model


def test_a_new_kind_works_through_diffusion_model(style_model, tmp_path):
    model = style_model
    assert model.num_classes is None and model.text_dim is None
    style = np.random.default_rng(1).normal(size=(3, 3)).astype("float32")
    noise = np.random.default_rng(2).normal(size=(2, 3, 4, 4, 1)).astype("float32")
    styled = np_(model.sample(condition={"style": style}, num_steps=2, noise=noise))
    null = np_(model.sample(condition=model.null_condition(3), num_steps=2, noise=noise))
    assert styled.shape == (3, 4, 4, 1) and np.abs(styled - null).max() > 1e-3
    dropped = np_(model.drop_condition({"style": ops.convert_to_tensor(style)}, 3)["style"])
    for row, original in zip(dropped, style):  # each row kept or zeroed
        assert np.allclose(row, original) or not row.any()
    with pytest.raises(ValueError, match="has size 2 on axis 1, but this model takes 3"):
        model.sample(condition={"style": style[:, :2]}, num_steps=2)
    with pytest.raises(ValueError, match="takes no class labels"):
        model.sample(labels=[0, 1], num_steps=2)
    with pytest.raises(ValueError, match=r"Unknown condition keys \['mood'\]: .* \['style'\]"):
        model.fit({"images": np.zeros((2, 4, 4, 1), "float32"), "mood": np.zeros((2, 3))},
                  verbose=0)
    path = str(tmp_path / "style.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.conditioning, StyleConditioning)
    np.testing.assert_allclose(
        np_(restored.sample(condition={"style": style}, num_steps=2, noise=noise)), styled,
        atol=1e-5)
    distiller = keras_mm.MomentMatchingDistiller(model, num_steps=2)
    assert isinstance(distiller.generator.conditioning, StyleConditioning)


def test_a_new_kind_exports(style_model, tmp_path):
    import tensorflow as tf

    path = str(tmp_path / "style_sampler")
    with contextlib.redirect_stdout(io.StringIO()) as log:
        export_sampler(style_model, path, num_steps=2, output="float", guidance_scale=0.5)
    assert "style-conditional" in log.getvalue()
    sampler = tf.saved_model.load(path)
    style = np.random.default_rng(1).normal(size=(3, 3)).astype("float32")
    noise = sampler_noise(4, 3, (4, 4, 1), 2)
    expected = np_(style_model.sample(condition={"style": style}, num_steps=2, noise=noise,
                                      guidance_scale=0.5))
    served = sampler.sample(style=tf.constant(style), seed=tf.constant([4, 0])).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="noise must have the batch size"):
        sampler.sample_from_noise(style=tf.constant(style[:2]), noise=tf.constant(noise))
