"""A shared test base for keras_mm's layers, models, schedules and optimizers.

In the spirit of KerasHub's `TestCase` (`run_layer_test`, `run_serialization_test`,
`run_model_saving_test`), as plain functions for pytest: one call checks what every
serializable piece owes its users, so each test file only says what is particular to its
piece.

- `run_serialization_test(instance)`: `get_config` -> `from_config`, and
  `serialize_keras_object` -> JSON -> `deserialize_keras_object`, give the same config.
- `run_layer_test(cls, init_kwargs, input_data, expected_output_shape)`: the serialization
  test; the symbolic call (KerasTensors) builds the layer and gives the expected shapes; the
  eager call gives them too, finite and in the layer's compute dtype; a compiled call (`jax.jit` /
  `tf.function`, as `keras_mm.backend.compile_with_variables` compiles the samplers) agrees
  with the eager one; a clone from the config with the same weights gives the same outputs;
  and the `.keras` save/load round trip (`run_model_saving_test`) gives the same outputs.

Weights are perturbed before outputs are compared: keras_mm's residual branches start at
zero, so a fresh block is the identity and a comparison of its outputs could not fail.
"""

import json

import keras
import numpy as np
from keras import tree

from keras_mm.backend import compile_with_variables


def to_numpy(structure):
    return tree.map_structure(lambda x: np.asarray(keras.ops.convert_to_numpy(x)), structure)


def call_layer(layer, inputs):
    """A model takes its input as one argument (a dict for the denoisers); a layer given a
    dict takes it as keyword arguments (`ResBlock(inputs=..., embedding=...)`)."""
    if isinstance(inputs, dict) and not isinstance(layer, keras.Model):
        return layer(**inputs)
    return layer(inputs)


def shapes_of(structure):
    return tree.map_structure(lambda x: tuple(x.shape), structure)


def assert_all_close(actual, expected, atol=1e-5, rtol=1e-5, message=""):
    actual, expected = to_numpy(actual), to_numpy(expected)
    actual, expected = tree.flatten(actual), tree.flatten(expected)  # a list may be a tuple
    assert len(actual) == len(expected), f"{len(actual)} outputs, expected {len(expected)}"
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, err_msg=message)


def perturb_weights(layer, seed=0, scale=0.1):
    """Adds normal noise to every float weight, so zero-initialised layers pass signal."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        if "float" in str(variable.dtype):
            value = keras.ops.convert_to_numpy(variable)
            variable.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))


def config_json(instance):
    return json.dumps(instance.get_config(), sort_keys=True, default=str)


def run_serialization_test(instance):
    """Asserts that the config survives `from_config` and Keras (de)serialization through
    JSON; returns the two revived instances (for tests that compare their outputs)."""
    expected = config_json(instance)
    from_config = type(instance).from_config(instance.get_config())
    assert type(from_config) is type(instance)
    assert config_json(from_config) == expected, "get_config -> from_config changed the config"
    serialized = json.dumps(keras.saving.serialize_keras_object(instance))
    deserialized = keras.saving.deserialize_keras_object(json.loads(serialized))
    assert type(deserialized) is type(instance), (
        f"deserialize_keras_object gave a {type(deserialized).__name__}: is "
        f"{type(instance).__name__} registered with register_keras_serializable?"
    )
    assert config_json(deserialized) == expected, "serialize -> JSON -> deserialize changed it"
    return from_config, deserialized


def run_compiled_test(layer, input_data, expected, atol=1e-5, call=call_layer):
    """Asserts that a compiled call of `layer` agrees with the eager outputs `expected`."""
    compiled = compile_with_variables(lambda inputs: call(layer, inputs), layer.variables)
    assert_all_close(compiled(input_data), expected, atol=atol, message="compiled vs eager")


def run_model_saving_test(model, input_data, path, atol=1e-6, call=call_layer):
    """Asserts that a `.keras` save/load round trip keeps the config and the outputs.

    A layer is saved inside a functional model of its inputs; a model is saved as itself.
    """
    expected = to_numpy(call(model, input_data))
    saved = model
    if not isinstance(model, keras.Model):
        def symbolic_input(x, name=None):
            dtype = keras.backend.standardize_dtype(x.dtype)
            return keras.Input(shape=x.shape[1:], dtype=dtype, name=name)

        if isinstance(input_data, dict):
            symbolic = {k: symbolic_input(x, name=k) for k, x in input_data.items()}
        else:
            symbolic = symbolic_input(input_data)
        saved = keras.Model(symbolic, call_layer(model, symbolic))
    saved.save(str(path))
    loaded = keras.saving.load_model(str(path))
    if isinstance(model, keras.Model):
        assert type(loaded) is type(model) and config_json(loaded) == config_json(model)
        assert_all_close(call(loaded, input_data), expected, atol=atol, message="after loading")
    else:
        revived = loaded.get_layer(model.name)
        assert type(revived) is type(model) and config_json(revived) == config_json(model)
        assert_all_close(loaded(input_data), expected, atol=atol, message="after loading")
    return loaded


def run_layer_test(
    cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    tmp_path=None,
    expected_num_trainable_weights=None,
    atol=1e-5,
):
    """Runs the checks every keras_mm layer and network owes its users (module docstring).

    Args:
        cls: the layer or model class (or a function returning a fresh instance).
        init_kwargs: its constructor arguments.
        input_data: NumPy inputs: an array, or a dict (a model's one dict input, or a
            layer's keyword arguments).
        expected_output_shape: the output shape(s), batch included (a tuple, or a tuple of
            them for several outputs).
        tmp_path: a folder for the `.keras` round trip; None skips it.
        expected_num_trainable_weights: checked when given.
        atol: tolerance of the output comparisons.

    Returns:
        The built, perturbed layer and its eager outputs.
    """
    run_serialization_test(cls(**init_kwargs))

    symbolic = tree.map_structure(
        lambda x: keras.KerasTensor(x.shape, keras.backend.standardize_dtype(x.dtype)),
        input_data,
    )
    layer = cls(**init_kwargs)
    assert shapes_of(call_layer(layer, symbolic)) == expected_output_shape
    assert layer.built  # by the symbolic call; the eager calls below use those weights
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights
    perturb_weights(layer)
    outputs = call_layer(layer, input_data)
    assert shapes_of(outputs) == expected_output_shape
    for output in tree.flatten(outputs):
        if keras.backend.is_float_dtype(output.dtype):
            assert keras.backend.standardize_dtype(output.dtype) == layer.compute_dtype
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(output)))
    outputs = to_numpy(outputs)

    run_compiled_test(layer, input_data, outputs, atol=atol)

    clone = type(layer).from_config(layer.get_config())
    call_layer(clone, input_data)
    clone.set_weights(layer.get_weights())
    assert config_json(clone) == config_json(layer)
    assert_all_close(call_layer(clone, input_data), outputs, atol=atol, message="config clone")

    if tmp_path is not None:
        run_model_saving_test(layer, input_data, tmp_path / f"{layer.name}.keras", atol=atol)
    return layer, outputs
