"""The shared test base (tests/testing.py) on MLPDenoiser, DiffusionModel and the optimizer."""

import keras
import numpy as np
import pytest

from keras_mm.distillation import AdamWithoutMomentum, paper_adam
from keras_mm.models import DiffusionModel, MLPDenoiser
from tests.testing import (
    run_layer_test,
    run_model_saving_test,
    run_serialization_test,
    to_numpy,
)

BATCH = 3
MLP_CONFIG = {"data_dim": 2, "hidden_dim": 8, "num_layers": 2, "num_classes": 3}


def vector_inputs(labels=True):
    inputs = {
        "noisy": np.random.default_rng(0).normal(size=(BATCH, 2)).astype("float32"),
        "logsnr": np.array([-5.0, 0.0, 5.0], "float32"),
    }
    if labels:
        inputs["labels"] = np.array([0, 2, 3], "int32")  # 3: the null label
    return inputs


def test_mlp_denoiser(tmp_path):
    model, _ = run_layer_test(
        MLPDenoiser, MLP_CONFIG, vector_inputs(), (BATCH, 2), tmp_path=tmp_path,
        expected_num_trainable_weights=4 + 1 + 2 + 4 + 4 + 2,  # logsnr MLP, class, dense layers
    )  # fmt: skip
    assert model.image_shape == (2,) and model.num_classes == 3 and model.text_dim is None
    with pytest.raises(ValueError, match="lacks 'labels'"):
        model(vector_inputs(labels=False))
    unconditional = MLPDenoiser(data_dim=2, hidden_dim=8, num_layers=1)
    assert tuple(unconditional(vector_inputs(labels=False)).shape) == (BATCH, 2)
    with pytest.raises(ValueError, match="built without class conditioning"):
        unconditional(vector_inputs())


def diffusion_model(**kwargs):
    return DiffusionModel(MLPDenoiser(**MLP_CONFIG), **kwargs)


def test_diffusion_model(tmp_path):
    # DiffusionModel's call is x-hat = denoise(noisy, logsnr, condition).
    config = {"prediction_type": "eps", "loss_weighting": "edm", "condition_dropout": 0.2,
              "seed": 3}  # fmt: skip
    model, x_hat = run_layer_test(
        diffusion_model, config, vector_inputs(), (BATCH, 2), tmp_path=tmp_path
    )
    network = to_numpy(model.network(vector_inputs()))
    # eps-prediction: x-hat = (z - sigma eps) / alpha.
    logsnr = vector_inputs()["logsnr"][:, None]
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))
    np.testing.assert_allclose(
        x_hat, (vector_inputs()["noisy"] - sigma * network) / alpha, rtol=1e-4, atol=1e-4
    )
    revived = keras.saving.load_model(str(tmp_path / f"{model.name}.keras"))
    assert revived.schedule.get_config() == model.schedule.get_config()
    assert (revived.prediction_type, revived.seed) == ("eps", 3)


@pytest.mark.parametrize("learning_rate", ["constant", "warmup_linear_decay"])
def test_adam_without_momentum_serialization_gives_the_same_updates(learning_rate):
    if learning_rate == "constant":
        optimizer = AdamWithoutMomentum(0.1, beta_2=0.9, epsilon=1e-3, global_clipnorm=1.0)
    else:
        optimizer = paper_adam(0.1, warmup_steps=2, total_steps=6)
    gradients = [np.array([0.5, -2.0], "float32"), np.array([1.0, 0.25], "float32")]

    def run(optimizer):
        variable = keras.Variable(np.zeros(2, "float32"))
        for gradient in gradients:
            optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
        return to_numpy(variable)

    expected = run(optimizer)
    assert np.abs(expected).min() > 1e-3
    for revived in run_serialization_test(optimizer):
        assert type(revived) is AdamWithoutMomentum and revived.beta_1 == 0.0
        np.testing.assert_allclose(run(revived), expected, rtol=1e-6)


def test_adam_without_momentum_state_survives_a_keras_file(tmp_path):
    model = diffusion_model(seed=0)
    model.compile(optimizer=paper_adam(1e-2, warmup_steps=1, total_steps=10))
    data = np.random.default_rng(0).uniform(-1, 1, size=(8, 2)).astype("float32")  # in range
    model.fit(data, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    loaded = run_model_saving_test(model, vector_inputs(), tmp_path / "teacher.keras")
    assert type(loaded.optimizer) is AdamWithoutMomentum
    # One slot per weight (v, no first moment), restored with its values.
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    assert int(to_numpy(loaded.optimizer.iterations)) == 2
    for restored, original in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_allclose(to_numpy(restored), to_numpy(original), atol=1e-7)
    velocities = [v for v in model.optimizer.variables if "velocity" in v.path]
    assert len(velocities) == len(model.network.trainable_variables)
    assert max(float(np.abs(to_numpy(v)).max()) for v in velocities) > 0
