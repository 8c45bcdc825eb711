import json
import os

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from keras_mm import callbacks, metrics


class TinyGenerator(keras.Model):
    """Stand-in for a DiffusionModel: trains as a Dense regression, samples tanh(Dense(noise))."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(64)

    def call(self, inputs):
        return self.dense(inputs)

    def sample(
        self,
        num_samples=None,
        labels=None,
        num_steps=1,
        seed=0,
        sampler="ancestral",
        guidance_scale=0.0,
        noise=None,
    ):
        if labels is not None:
            num_samples = len(labels)
        if noise is None:
            noise = keras.random.normal((num_samples, 16), seed=seed)
        return keras.ops.reshape(keras.ops.tanh(self.dense(noise)), (-1, 8, 8, 1))


def tiny_generator(learning_rate):
    model = TinyGenerator()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    model(np.zeros((1, 16), "float32"))  # create the weights
    return model


@pytest.fixture(scope="module")
def digits():
    return (load_digits().images[..., None] / 8.0 - 1.0).astype("float32")


@pytest.fixture(scope="module")
def reference_stats(digits):
    return metrics.FeatureStatistics.from_images(digits, metrics.DigitsFeatures())


@pytest.fixture(scope="module")
def training_data(digits):
    """Inputs [64, 16] and digit targets [64, 64]: SGD moves the samples toward digits."""
    inputs = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    return inputs, digits[:64].reshape(64, 64)


def test_fid_callback_logs_fid_on_the_same_noise_each_time(reference_stats, training_data):
    model = tiny_generator(learning_rate=0.0)  # unchanged weights
    fid = callbacks.FIDCallback(
        reference_stats=reference_stats, num_samples=200, batch_size=64, verbose=0
    )
    stop = keras.callbacks.EarlyStopping(monitor="fid", mode="min", patience=0)
    history = model.fit(*training_data, batch_size=16, epochs=5, callbacks=[fid, stop], verbose=0)

    fids = history.history["fid"]
    # Same weights, same noise: identical values, so EarlyStopping (which sees `fid`) stops.
    assert len(fids) == 2 and fids[0] == fids[1] > 0
    assert fid.evaluate(model)["fid"] == fids[0]
    assert fid.best_fid == fids[0] and fid.best_epoch == 1
    assert [entry["step"] for entry in fid.evaluations] == [4, 8]


def test_fid_callback_saves_best_weights(tmp_path, reference_stats, training_data):
    model = tiny_generator(learning_rate=0.5)
    path = str(tmp_path / "best.weights.h5")
    fid = callbacks.FIDCallback(
        reference_stats=reference_stats,
        num_samples=200,
        batch_size=100,
        save_best_to=path,
        verbose=0,
    )
    snapshots = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.append(
            [np.array(w) for w in model.get_weights()]
        )
    )
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "checkpoint.weights.h5"),
        monitor="fid",
        mode="min",
        save_best_only=True,
        save_weights_only=True,
    )
    history = model.fit(
        *training_data, batch_size=16, epochs=4, callbacks=[fid, record, checkpoint], verbose=0
    )

    fids = history.history["fid"]
    assert len(set(fids)) > 1, "training should change the samples and the FID"
    best = int(np.argmin(fids))
    assert fid.best_fid == min(fids) and fid.best_epoch == best + 1
    restored = tiny_generator(learning_rate=0.0)
    restored.load_weights(path)
    for saved, expected in zip(restored.get_weights(), snapshots[best]):
        np.testing.assert_allclose(saved, expected)
    assert os.path.exists(tmp_path / "checkpoint.weights.h5")  # ModelCheckpoint saw `fid`
    # The in-`fit` evaluation read the trained weights (on JAX, after a state sync).
    assert fid.evaluate(model)["fid"] == pytest.approx(fids[-1], rel=1e-5)


def saved_weights(path):
    model = tiny_generator(learning_rate=0.0)
    model.load_weights(path)
    return model.get_weights()


def zero_weights(model):
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])


def test_fid_callback_one_best_record_kept_on_resume_replaced_by_a_fresh_run(
    tmp_path, reference_stats, training_data
):
    path = str(tmp_path / "best" / "student.weights.h5")
    backup = str(tmp_path / "backup")

    def fid_callback():
        return callbacks.FIDCallback(reference_stats=reference_stats, num_samples=200,
                                     batch_size=100, save_best_to=path, verbose=0)

    # Run 1: 3 epochs of 4 steps, with the backup a run killed after epoch 3 leaves behind.
    first = fid_callback()
    model = tiny_generator(learning_rate=0.5)
    model.fit(*training_data, batch_size=16, epochs=3, verbose=0, callbacks=[
        first, keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    best = saved_weights(path)
    assert sorted(os.listdir(tmp_path / "best")) == ["student.best.json", "student.weights.h5"]

    # Run 2 resumes from the backup (optimizer iteration 12; the FIDCallback comes before
    # BackupAndRestore in the list), and its weights are made worse after the restore (all
    # zero, learning rate 0: every sample the same grey image). Its worse FID must not
    # overwrite the best weights.
    resumed = fid_callback()
    worse = tiny_generator(learning_rate=0.5)

    def sabotage(logs):
        zero_weights(worse)
        worse.optimizer.learning_rate = 0.0

    worse.fit(*training_data, batch_size=16, epochs=4, verbose=0, callbacks=[
        resumed, keras.callbacks.BackupAndRestore(backup),
        keras.callbacks.LambdaCallback(on_train_begin=sabotage)])
    assert [entry["step"] for entry in resumed.evaluations] == [16]
    assert resumed.evaluations[0]["fid"] > first.best_fid
    assert (resumed.best_fid, resumed.best_step) == (first.best_fid, first.best_step)
    for saved, expected in zip(saved_weights(path), best):
        np.testing.assert_array_equal(saved, expected)

    # Run 3 starts fresh (iteration 0) in the same place, as `keras-mm distill --overwrite`
    # does: the old record, with a better FID, is not trusted, and this run's best is saved.
    fresh = fid_callback()
    grey = tiny_generator(learning_rate=0.0)
    zero_weights(grey)
    grey.fit(*training_data, batch_size=16, epochs=1, callbacks=[fresh], verbose=0)
    assert fresh.best_fid == fresh.evaluations[0]["fid"] > first.best_fid
    with open(fresh.best_record_path) as file:
        record = json.load(file)
    assert record == {"best_fid": fresh.best_fid, "best_epoch": 1, "best_step": 4,
                      "feature_extractor": "digits", "num_samples": 200, "num_steps": None}
    assert sorted(os.listdir(tmp_path / "best")) == ["student.best.json", "student.weights.h5"]
    assert all(np.all(weights == 0) for weights in saved_weights(path))


def test_fid_callback_every_n_steps_with_labels_and_extra_metrics(digits, training_data):
    model = tiny_generator(learning_rate=0.1)
    fid = callbacks.FIDCallback(
        reference_data=digits,
        feature_extractor=metrics.DigitsFeatures(),
        num_samples=100,
        every_n_steps=3,
        num_steps=2,
        labels=10,
        extra_metrics=("kid", "precision_recall", "inception_score", "class_accuracy"),
        verbose=0,
    )
    history = model.fit(*training_data, batch_size=16, epochs=2, callbacks=[fid], verbose=0)

    assert [entry["step"] for entry in fid.evaluations] == [3, 6]  # 4 steps per epoch
    assert history.history["fid"] == [entry["fid"] for entry in fid.evaluations]
    for key in ["kid", "kid_std", "precision", "recall", "inception_score", "class_accuracy"]:
        assert len(history.history[key]) == 2
    assert 0.0 <= history.history["class_accuracy"][-1] <= 1.0
    assert fid.evaluator.reference_stats.count == len(digits)


def test_fid_callback_argument_errors(reference_stats):
    with pytest.raises(ValueError, match="exactly one"):
        callbacks.FIDCallback()
    with pytest.raises(ValueError, match="not both"):
        callbacks.FIDCallback(reference_stats=reference_stats, every_n_steps=1, every_n_epochs=1)
    with pytest.raises(ValueError, match="weights.h5"):
        callbacks.FIDCallback(reference_stats=reference_stats, save_best_to="best.h5")
    with pytest.raises(ValueError, match="reference_data"):
        callbacks.FIDCallback(reference_stats=reference_stats, extra_metrics=["kid"])
    with pytest.raises(ValueError, match="one integer label per sample"):
        callbacks.FIDCallback(reference_stats=reference_stats, num_samples=10, labels=[0, 1])
    plain = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64)])
    plain.compile(optimizer="sgd", loss="mse")
    fid = callbacks.FIDCallback(reference_stats=reference_stats, verbose=0)
    with pytest.raises(TypeError, match="no `sample"):
        plain.fit(np.zeros((4, 16)), np.zeros((4, 64)), epochs=1, callbacks=[fid], verbose=0)


def test_sample_grid_callback_writes_png_of_fixed_samples(tmp_path, training_data):
    model = tiny_generator(learning_rate=0.0)
    grids = callbacks.SampleGridCallback(
        str(tmp_path / "samples_{epoch:02d}.png"),
        num_samples=10,
        labels=10,
        num_columns=5,
        scale=2,
        padding=1,
    )
    model.fit(*training_data, batch_size=32, epochs=2, callbacks=[grids], verbose=0)

    assert grids.saved_paths == [str(tmp_path / "samples_01.png"), str(tmp_path / "samples_02.png")]
    first, second = (np.array(Image.open(path)) for path in grids.saved_paths)
    with Image.open(grids.saved_paths[0]) as image:
        # 5 columns and 2 rows of 16x16 (8x8 upscaled twice), 1-pixel separators.
        assert image.size == (5 * 17 + 1, 2 * 17 + 1) and image.mode == "L"
    np.testing.assert_array_equal(first, second)  # same weights and noise, same picture
