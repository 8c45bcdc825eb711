"""Teacher training and both distillation methods under the "mixed_bfloat16" policy.

The networks compute in bfloat16 with float32 weights; the diffusion math around them
(x/eps/v conversions, the posterior q(z_s | z_t, x)), the losses and the JVP tangents stay in
float32.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm.backend import jvp
from keras_mm.datasets import load_digits
from keras_mm.diffusion import process
from tests.helpers import TinyConvNet


@pytest.fixture
def mixed_bfloat16():
    # Layers take the global policy when they are constructed, so build models inside.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy(previous)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits()
    return images[:64], labels[:64]


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


def non_float32_variables(model):
    """Float weights that are not float32 (seed and step counters are integers)."""
    return {v.path: keras.backend.standardize_dtype(v.dtype) for v in model.weights
            if keras.backend.standardize_dtype(v.dtype) != "float32"
            and "seed" not in v.path and "iteration" not in v.path}


@pytest.mark.parametrize("prediction_type", ["v", "eps", "x"])
def test_bfloat16_network_output_is_converted_in_float32(mixed_bfloat16, prediction_type):
    model = keras_mm.DiffusionModel(TinyConvNet(), prediction_type=prediction_type)
    assert model.network.compute_dtype == "bfloat16"
    assert not non_float32_variables(model.network)
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    logsnr = np.array([-6.0, -1.0, 2.0, 8.0], "float32")
    condition = {"labels": np.array([0, 3, 7, 10], "int32")}
    prediction = model.network({"noisy": noisy, "logsnr": logsnr, **condition})
    assert dtype_of(prediction) == "bfloat16"
    x_hat = model.denoise(noisy, logsnr, condition)
    assert dtype_of(x_hat) == "float32"
    # The conversion done in float64 from the network's bfloat16 output: float32 math agrees
    # to ~1e-6; the same conversion in bfloat16 would be off by ~1e-2.
    prediction = np.asarray(ops.convert_to_numpy(ops.cast(prediction, "float32")), "float64")
    z = noisy.astype("float64")
    alpha = np.sqrt(1 / (1 + np.exp(-logsnr.astype("float64"))))[:, None, None, None]
    sigma = np.sqrt(1 - alpha**2)
    expected = {"x": prediction, "eps": (z - sigma * prediction) / alpha,
                "v": alpha * z - sigma * prediction}[prediction_type]
    np.testing.assert_allclose(ops.convert_to_numpy(x_hat), expected, rtol=1e-5, atol=1e-5)


def check_iteration_dtypes(distiller, images, labels):
    """The pieces of one iteration: float32 around the bfloat16 network calls."""
    draws = distiller.draw(ops.convert_to_tensor(images),
                           {"labels": ops.convert_to_tensor(labels)})
    x_generated, noisy_s = distiller.generate(draws)
    assert dtype_of(x_generated) == dtype_of(noisy_s) == "float32"
    mean, std = process.posterior(
        draws["noisy_t"], x_generated, process.broadcast_to_data(draws["logsnr_t"], noisy_s),
        process.broadcast_to_data(draws["logsnr_s"], noisy_s))
    assert dtype_of(mean) == dtype_of(std) == "float32"
    if distiller.method == "alternating":
        assert dtype_of(distiller.auxiliary_loss(draws)) == "float32"
        loss, gap = distiller.generator_loss(draws)
        assert dtype_of(loss) == dtype_of(gap) == "float32"
        return
    nu = distiller.teacher_gradient(draws)
    assert all(dtype_of(n) == "float32" for n in nu)
    teacher = distiller.teacher
    x_teacher, tangent = jvp(
        lambda: teacher.denoise(noisy_s, draws["logsnr_s"], draws["condition"]),
        teacher.parameters, nu)
    assert dtype_of(x_teacher) == dtype_of(tangent) == "float32"
    assert np.isfinite(ops.convert_to_numpy(tangent)).all()
    loss = distiller.instant_loss(draws, nu)
    assert dtype_of(loss) == "float32"
    assert np.isfinite(float(ops.convert_to_numpy(loss)))


def test_teacher_and_distillers_train_under_mixed_bfloat16(mixed_bfloat16, digits):
    images, labels = digits
    teacher = keras_mm.DiffusionModel(TinyConvNet(), seed=0)
    teacher.compile()
    history = teacher.fit(images, labels, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert dtype_of(teacher.loss_tracker.result()) == "float32"
    assert not non_float32_variables(teacher)
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32"
               for v in teacher.optimizer.variables if "iteration" not in v.path)

    for method in ("alternating", "instant"):
        distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, method=method,
                                                     seed=1)
        assert distiller.generator.network.compute_dtype == "bfloat16"
        distiller.compile(warmup_steps=1)
        before = [np.array(w) for w in distiller.generator.network.get_weights()]
        history = distiller.fit(images[:32], labels[:32], batch_size=32, epochs=1, verbose=0)
        for name, values in history.history.items():
            assert np.isfinite(values).all(), (method, name, values)
        assert all(dtype_of(m.result()) == "float32" for m in distiller.metrics)
        assert not non_float32_variables(distiller), method
        after = distiller.generator.network.get_weights()
        assert any(np.abs(a - b).max() > 0 for a, b in zip(after, before)), method

        check_iteration_dtypes(distiller, images[:8], labels[:8])


def test_the_global_policy_is_restored():
    # Runs after the tests above (file order): their fixture put float32 back.
    assert keras.mixed_precision.global_policy().name == "float32"
    assert TinyConvNet().compute_dtype == "float32"
