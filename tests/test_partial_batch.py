"""`fit(arrays, batch_size=B)`: the partial last batch weighs by its share of B."""

import keras
import numpy as np
from keras import ops

import keras_mm
from keras_mm.models.mlp_denoiser import MLPDenoiser


def twin(seed=0):
    """The same tiny teacher each call (weights and noise draws), trained by plain SGD, so a
    step is -lr times the gradient."""
    keras.utils.set_random_seed(seed)
    model = keras_mm.DiffusionModel(MLPDenoiser(2, hidden_dim=8, num_layers=1, num_classes=3),
                                    seed=seed)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    return model


def weights(model):
    return [np.asarray(ops.convert_to_numpy(v)) for v in model.network.trainable_variables]


def fit_delta(model, x, y, batch_size):
    before = weights(model)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return [after - b for after, b in zip(weights(model), before)]


def assert_scaled(delta, reference, factor):
    for d, r in zip(delta, reference):
        np.testing.assert_allclose(d, factor * r, rtol=1e-4, atol=1e-7)


def test_partial_batch_steps_by_its_share_and_refits_rebuild_the_step():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(5, 2)).astype("float32")
    y = np.array([0, 1, 2, 0, 1], "int32")
    # The same 5 examples and noise: a full batch of 5, then a partial batch of 5 of 8.
    full = fit_delta(twin(), x, y, batch_size=5)
    partial = fit_delta(twin(), x, y, batch_size=8)
    assert max(float(np.abs(d).max()) for d in full) > 1e-4
    assert_scaled(partial, full, 5 / 8)
    # A later fit with another batch_size must not reuse the compiled step's share.
    first, second = twin(), twin()
    fit_delta(first, x, y, batch_size=8)
    fit_delta(second, x, y, batch_size=8)
    assert_scaled(fit_delta(second, x, y, batch_size=8), fit_delta(first, x, y, batch_size=5),
                  5 / 8)
