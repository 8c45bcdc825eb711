"""UViT: the network interface the DiffusionModel relies on."""

import keras
import numpy as np
import pytest
from keras.src.backend.common import global_state

from keras_mm.backend import compile_with_variables, jvp
from keras_mm.models.layers import depth_to_space, space_to_depth, upsample_nearest
from keras_mm.models.uvit import UViT
from keras_mm.models.uvit_presets import UVIT_PRESETS
from tests.testing import (
    perturb_weights,
    run_layer_test,
    run_model_saving_test,
    run_serialization_test,
)

BATCH = 3
TEXT_DIM = 6
TEXT_LENGTH = 4


def image_inputs(labels=True, text=False, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {
        "noisy": rng.normal(size=(BATCH, 8, 8, 1)).astype("float32"),
        "logsnr": np.array([-5.0, 0.0, 5.0], "float32"),
    }
    if labels:
        inputs["labels"] = np.array([0, 3, 10], "int32")  # 10: the null label
    if text:
        inputs["text_embeddings"] = rng.normal(size=(BATCH, TEXT_LENGTH, TEXT_DIM)).astype(
            "float32"
        )
        # Row 0: a two-token caption; row 1: the full length; row 2: the null caption.
        inputs["text_mask"] = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], "bool")
    return inputs


def perturb(model, inputs, seed=0, scale=0.1):
    """Builds `model` on `inputs` and adds noise to every weight, so zero-initialised
    layers pass signal."""
    model(inputs)
    perturb_weights(model, seed, scale)
    return model


def predict(model, inputs):
    if keras.backend.backend() == "jax":
        # Eager JAX compiles every op on first use; one jitted predict is much cheaper.
        return model.predict(inputs, batch_size=BATCH, verbose=0)
    return keras.ops.convert_to_numpy(model(inputs, training=False))


@pytest.fixture(scope="module")
def class_model():
    return perturb(UViT.from_preset("uvit_tiny"), image_inputs())


@pytest.fixture(scope="module")
def text_model():
    model = UViT.from_preset("uvit_tiny", num_classes=None, text_dim=TEXT_DIM)
    return perturb(model, image_inputs(labels=False, text=True), seed=1)


def test_fresh_tiny_preset_predicts_zeros_of_the_image_shape():
    model = UViT.from_preset("uvit_tiny")
    output = predict(model, image_inputs())
    assert output.shape == (BATCH, 8, 8, 1)
    # The output convolution starts at zero.
    np.testing.assert_array_equal(output, 0.0)
    assert model.num_classes == 10 and model.text_dim is None
    assert model.image_shape == (8, 8, 1)
    assert model.class_embedding.input_dim == 11  # the null label has its own row
    assert 1_000 < model.count_params() < 10_000


def test_labels_and_logsnr_change_the_output(class_model):
    inputs = image_inputs()
    base = predict(class_model, inputs)
    assert np.all(np.isfinite(base))
    other_labels = dict(inputs, labels=np.array([5, 5, 5], "int32"))
    assert np.abs(predict(class_model, other_labels) - base).max(axis=(1, 2, 3)).min() > 1e-4
    other_logsnr = dict(inputs, logsnr=inputs["logsnr"] + 3.0)
    assert np.abs(predict(class_model, other_logsnr) - base).max(axis=(1, 2, 3)).min() > 1e-4


def test_unconditional_network_takes_no_labels():
    model = UViT.from_preset("uvit_tiny", num_classes=None)
    assert predict(model, image_inputs(labels=False)).shape == (BATCH, 8, 8, 1)
    with pytest.raises(ValueError, match="num_classes"):
        model(image_inputs(labels=True))


def test_text_conditioning_shapes_and_null_caption(text_model):
    inputs = image_inputs(labels=False, text=True)
    output = predict(text_model, inputs)
    assert output.shape == (BATCH, 8, 8, 1)
    assert np.all(np.isfinite(output))
    assert text_model.text_dim == TEXT_DIM and text_model.num_classes is None


def test_cross_attention_respects_the_mask(text_model):
    inputs = image_inputs(labels=False, text=True)
    base = predict(text_model, inputs)
    mask = inputs["text_mask"]

    # Different (even non-finite) values at masked-out positions: same output.
    text = inputs["text_embeddings"].copy()
    text[~mask] = np.nan
    np.testing.assert_allclose(
        predict(text_model, dict(inputs, text_embeddings=text)), base, atol=1e-6
    )
    text[~mask] = 100.0
    np.testing.assert_allclose(
        predict(text_model, dict(inputs, text_embeddings=text)), base, atol=1e-6
    )

    # A change at one unmasked position of rows 0 and 1 changes those rows only.
    text = inputs["text_embeddings"].copy()
    text[0, 1] += 1.0
    text[1, 3] += 1.0
    changed = np.abs(predict(text_model, dict(inputs, text_embeddings=text)) - base)
    assert changed[0].max() > 1e-4 and changed[1].max() > 1e-4
    np.testing.assert_allclose(changed[2], 0.0, atol=1e-6)


def test_null_caption_differs_from_a_caption(text_model):
    inputs = image_inputs(labels=False, text=True)
    null = dict(inputs, text_mask=np.zeros_like(inputs["text_mask"]))
    difference = np.abs(predict(text_model, null) - predict(text_model, inputs))
    assert difference[0].max() > 1e-4 and difference[1].max() > 1e-4
    np.testing.assert_allclose(difference[2], 0.0, atol=1e-6)  # row 2 was already null


def test_text_mask_accepts_zero_one_floats(text_model):
    inputs = image_inputs(labels=False, text=True)
    as_float = dict(inputs, text_mask=inputs["text_mask"].astype("float32"))
    np.testing.assert_allclose(
        predict(text_model, as_float), predict(text_model, inputs), atol=1e-6
    )


def test_text_to_a_network_without_text_raises(class_model):
    inputs = dict(image_inputs(), **{k: v for k, v in image_inputs(text=True).items()})
    with pytest.raises(ValueError, match="built without text conditioning; pass text_dim"):
        class_model(inputs)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x.pop("logsnr"), "lacks 'logsnr'"),
        (lambda x: x.pop("labels"), "lacks 'labels'"),
        (lambda x: x.update(logsnr=x["logsnr"][:, None]), "'logsnr' must have rank 1"),
        (lambda x: x.update(noisy=x["noisy"][..., 0]), "'noisy' must have rank 4"),
        (lambda x: x.update(noisy=np.zeros((BATCH, 4, 4, 1), "float32")), "image_shape"),
        (lambda x: x.update(label=x["labels"]), "Unexpected input keys"),
    ],
)
def test_bad_inputs_raise_clear_errors(class_model, change, message):
    inputs = image_inputs()
    change(inputs)
    with pytest.raises(ValueError, match=message):
        class_model(inputs)


def test_text_network_needs_its_mask(text_model):
    inputs = image_inputs(labels=False, text=True)
    inputs.pop("text_mask")
    with pytest.raises(ValueError, match="lacks 'text_mask'"):
        text_model(inputs)


def test_text_network_passes_the_shared_layer_test(tmp_path):
    # Config round trip, symbolic / eager / compiled calls, config clone, .keras round trip.
    config = dict(UVIT_PRESETS["uvit_tiny"], num_classes=None, text_dim=TEXT_DIM)
    inputs = image_inputs(labels=False, text=True)
    model, _ = run_layer_test(UViT, config, inputs, (BATCH, 8, 8, 1), tmp_path=tmp_path)
    assert model.get_config()["image_shape"] == (8, 8, 1)


def test_class_network_serialization_and_keras_file_round_trip(class_model, tmp_path):
    run_serialization_test(class_model)
    loaded = run_model_saving_test(class_model, image_inputs(), tmp_path / "uvit.keras")
    assert loaded.num_classes == 10


def test_config_round_trip_keeps_the_preset():
    model = UViT.from_preset("uvit_digits", text_dim=16, num_classes=None, patch_size=2)
    config = model.get_config()
    run_serialization_test(model)
    assert config["image_shape"] == (8, 8, 1)
    for key in ("base_channels", "channel_multipliers", "num_res_blocks", "dropout"):
        assert config[key] == UVIT_PRESETS["uvit_digits"][key]


def test_build_creates_the_weights_a_call_creates():
    # build() traces `call` on KerasTensors through Layer.compute_output_spec (UViT
    # overrides that method with a cheap one and calls the base class's). If a Keras release
    # stops tracing there, build() leaves sublayers unbuilt and this fails.
    shapes = {"noisy": (None, 8, 8, 1), "logsnr": (None,), "labels": (None,)}
    built = UViT.from_preset("uvit_tiny")
    built.build(shapes)
    called = UViT.from_preset("uvit_tiny")
    called(image_inputs())
    assert built.built
    assert [tuple(v.shape) for v in built.weights] == [tuple(v.shape) for v in called.weights]
    assert built.count_params() == called.count_params() > 1_000
    spec = built.compute_output_spec(
        {k: keras.KerasTensor((3,) + shape[1:]) for k, shape in shapes.items()}
    )
    assert spec.shape == (3, 8, 8, 1)


def test_from_preset_unknown_name_lists_the_presets():
    with pytest.raises(ValueError, match="uvit_tiny"):
        UViT.from_preset("uvit_huge")


def test_dropout_only_from_the_given_level():
    model = UViT.from_preset("uvit_digits", num_res_blocks=1, dropout=0.2, dropout_from_level=1)
    assert [block.dropout for block in model.down_blocks] == [0.0, 0.2]
    assert [block.dropout for block in model.up_blocks] == [0.2, 0.0]
    assert all(block.dropout == 0.2 for block in model.transformer_blocks)


def test_patches_and_upsampling_round_trip_and_keep_the_output_shape():
    images = np.arange(2 * 8 * 6 * 3, dtype="float32").reshape(2, 8, 6, 3)
    patches = keras.ops.convert_to_numpy(space_to_depth(images, 2))
    assert patches.shape == (2, 4, 3, 12)
    np.testing.assert_array_equal(patches[0, 0, 0], images[0, :2, :2].reshape(-1))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(depth_to_space(patches, 2)), images)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(upsample_nearest(images)),
        np.repeat(np.repeat(images, 2, axis=1), 2, axis=2),
    )

    # Building traces the whole call symbolically, through both reshapes.
    model = UViT.from_preset("uvit_tiny", image_shape=(16, 8, 3), patch_size=2)
    model.build({"noisy": (None, 16, 8, 3), "logsnr": (None,), "labels": (None,)})
    assert model.stem.kernel.shape[-2] == 12 and model.output_conv.kernel.shape[-1] == 12


def test_forward_mode_derivative_matches_finite_differences(text_model):
    # The instant distillation method takes a JVP through the teacher on every backend.
    inputs = image_inputs(labels=False, text=True)
    variables = text_model.trainable_variables
    rng = np.random.default_rng(2)
    tangents = [rng.normal(size=v.shape).astype("float32") for v in variables]
    tensors = {k: keras.ops.convert_to_tensor(v) for k, v in inputs.items()}
    # Compiled, as the distiller runs it (and eager JAX would compile every op on its own).
    directional_derivative = compile_with_variables(
        lambda *tangents: jvp(lambda: text_model(tensors), variables, tangents)[1], variables
    )
    derivative = directional_derivative(*tangents)

    values = [keras.ops.convert_to_numpy(v) for v in variables]
    step = 1e-3
    outputs = []
    for sign in (1.0, -1.0):
        for variable, value, tangent in zip(variables, values, tangents):
            variable.assign(value + sign * step * tangent)
        outputs.append(predict(text_model, inputs))
    for variable, value in zip(variables, values):
        variable.assign(value)
    finite_difference = (outputs[0] - outputs[1]) / (2 * step)
    error = np.abs(keras.ops.convert_to_numpy(derivative) - finite_difference).max()
    assert error < 1e-2 * np.abs(finite_difference).max()


@pytest.mark.parametrize("preset", ["imagenet64_small", "imagenet128_small"])
def test_paper_scale_presets_have_about_400m_parameters(preset):
    model = UViT.from_preset(preset)
    height, width, channels = model.image_shape
    # Build every layer and create every variable, but leave the ~1.7 GB of values
    # unallocated; then drop them from Keras's list of variables awaiting initialisation.
    with keras.StatelessScope(initialize_variables=False):
        model.build(
            {"noisy": (None, height, width, channels), "logsnr": (None,), "labels": (None,)}
        )
    global_state.set_global_attribute("uninitialized_variables", [])
    assert model.built
    assert 350e6 < model.count_params() < 450e6
    assert model.num_classes == 1000
