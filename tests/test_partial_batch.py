"""`fit(arrays, batch_size=B)` with N mod B != 0: full batches only, every example once per pass."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm.models.diffusion_model import _FullBatches
from keras_mm.models.mlp_denoiser import MLPDenoiser


def twin(seed=0):
    """The same tiny teacher each call (weights and noise draws), trained by plain SGD."""
    keras.utils.set_random_seed(seed)
    model = keras_mm.DiffusionModel(MLPDenoiser(2, hidden_dim=8, num_layers=1, num_classes=3),
                                    seed=seed)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def weights(model):
    return [np.asarray(ops.convert_to_numpy(v)) for v in model.network.trainable_variables]


def test_arrays_with_a_remainder_train_on_full_batches_of_a_stream_over_the_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(5, 2)).astype("float32")
    y = np.array([0, 1, 2, 0, 1], "int32")
    arrays = twin()
    arrays.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0)
    # Keras would take 3 steps per epoch, the last on example 4 alone; the fix takes 2 full
    # ones per epoch from the data in order, continuing where the last epoch stopped.
    order = [[0, 1], [2, 3], [4, 0], [1, 2]]
    stream = twin()
    stream.fit(((x[i], y[i]) for i in order), steps_per_epoch=2, epochs=2, shuffle=False,
               verbose=0)
    assert int(ops.convert_to_numpy(arrays.optimizer.iterations)) == 4
    assert max(float(np.abs(a - b).max()) for a, b in zip(weights(arrays), weights(twin()))) > 1e-4
    for a, b in zip(weights(arrays), weights(stream)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.one_backend("torch")
def test_shuffled_full_batches_see_every_example_once_per_pass():
    images = np.arange(7)
    batches = _FullBatches((images, images % 3), batch_size=3, shuffle=True, seed=0)
    assert len(batches) == 2
    peeked = batches[0]  # as Keras does before the first epoch: it must not consume a batch
    seen = []
    for _ in range(7):  # 7 epochs of 2 batches of 3: six passes over the 7 examples
        batches.on_epoch_begin()
        for index in range(len(batches)):
            batch_images, batch_labels = batches[index]
            assert len(batch_images) == 3
            np.testing.assert_array_equal(batch_labels, batch_images % 3)
            seen.extend(batch_images)
        batches.on_epoch_end()
    np.testing.assert_array_equal(peeked[0], seen[:3])
    passes = np.reshape(seen, (6, 7))
    for one_pass in passes:
        np.testing.assert_array_equal(np.sort(one_pass), images)
    assert len({tuple(p) for p in passes}) > 1  # a fresh permutation per pass


@pytest.mark.one_backend("torch")
def test_validation_arguments_are_refused_in_one_line():
    x, y = np.zeros((4, 2), "float32"), np.arange(4) % 3
    with pytest.raises(ValueError, match="no validation loss.*FIDCallback"):
        twin().fit(x, y, batch_size=2, validation_split=0.5, verbose=0)
    with pytest.raises(ValueError, match="no validation loss"):
        twin().fit(x, y, batch_size=2, validation_data=(x, y), verbose=0)
