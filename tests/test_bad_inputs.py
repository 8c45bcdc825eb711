"""Bad inputs at the library's boundary: each refused with one line naming the fix (the rows
of docs/reliability.md's "Bad inputs" table), on every backend, and a refused batch leaves
the model's weights as they were."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_mm
from keras_mm.metrics import DigitsFeatures, FeatureStatistics
from tests.helpers import TinyConvNet

BATCH = 8


def images_and_labels(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (BATCH, 8, 8, 1)).astype("float32")
    return images, (np.arange(BATCH) % 10).astype("int32")


def teacher(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras_mm.DiffusionModel(TinyConvNet(), seed=seed)
    model.compile()
    return model


def weights_of(model):
    return [np.array(ops.convert_to_numpy(v)) for v in model.weights]


def repeat(images, labels):
    def batches():
        while True:
            yield images, labels

    return batches()


def one_line(error):
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def shared_teacher():
    """One compiled teacher for the refusal tests (JAX compiles its step once)."""
    return teacher()


# ---------------------------------------------------------------------- NumPy arrays given to fit
def test_uint8_images_train_as_images_scaled_to_unit_range():
    images, labels = images_and_labels()
    pixels = np.round((images + 1.0) * 127.5).astype("uint8")
    from_uint8 = teacher().fit(pixels, labels, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    scaled = pixels.astype("float32") / 127.5 - 1.0
    from_float = teacher().fit(scaled, labels, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    loss = from_uint8.history["loss"][0]
    assert 0.1 < loss < 10.0  # a loss of images in [-1, 1], not 1275
    np.testing.assert_allclose(loss, from_float.history["loss"][0], rtol=1e-5)


ARRAY_CASES = {
    "images in 0..255 as floats": (lambda x, y: ((x + 1) * 127.5, y),
                                   r"must be in \[-1, 1\]; got values in \[.*\]: scale them"),
    "NaN image": (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), y),
                  "contain 1 NaN or inf values"),
    "int32 images": (lambda x, y: (np.round((x + 1) * 127.5).astype("int32"), y),
                     r"dtype int32; pass uint8"),
    "float labels": (lambda x, y: (x, y + 0.5), "labels must be integers; got dtype float64"),
    "label -1": (lambda x, y: (x, y - 1), r"labels must be in \[0, 10\).*got values in \[-1,"),
    "label 11": (lambda x, y: (x, y + 4), r"labels must be in \[0, 10\).*got values in \[4, 11\]"),
}


@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_bad_arrays_refused_before_fit(shared_teacher, case):
    make, message = ARRAY_CASES[case]
    images, labels = make(*images_and_labels())
    with pytest.raises(ValueError, match=message) as error:
        shared_teacher.fit(images, labels, batch_size=BATCH, epochs=1, verbose=0)
    one_line(error)


# ---------------------------------------------------------------------- batches inside the step
BATCH_CASES = {
    "NaN image": (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), y),
                  "images contain .*NaN or inf values"),
    "images in 0..255 as floats": (lambda x, y: ((x + 1) * 127.5, y),
                                   r"images must be in \[-1, 1\].*scale them"),
    "label -1": (lambda x, y: (x, y - 1), r"labels must be in \[0, 10\)"),
    "label 11": (lambda x, y: (x, y + 4), r"labels must be in \[0, 10\)"),
    "float labels": (lambda x, y: (x, y + 0.5), "labels must be integers"),
}


@pytest.mark.parametrize("source", ["generator", "tf.data"])
@pytest.mark.parametrize("case", list(BATCH_CASES))
def test_bad_batches_refused_inside_the_step(shared_teacher, case, source):
    make, message = BATCH_CASES[case]
    images, labels = make(*images_and_labels())
    if source == "generator":
        data = repeat(images, labels)
    else:
        data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    before = weights_of(shared_teacher)
    with pytest.raises(ValueError, match="^Bad training batch: " + message) as error:
        shared_teacher.fit(data, steps_per_epoch=1, epochs=1, verbose=0)
    one_line(error)
    # Refused before any update: no weight moved, and the model still trains.
    for after, expected in zip(weights_of(shared_teacher), before):
        np.testing.assert_array_equal(after, expected)
    history = shared_teacher.fit(repeat(*images_and_labels()), steps_per_epoch=1, epochs=1,
                                 verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_uint8_batches_from_tf_data_train_as_scaled_images():
    images, labels = images_and_labels()
    pixels = np.round((images + 1.0) * 127.5).astype("uint8")
    scaled = pixels.astype("float32") / 127.5 - 1.0
    losses = []
    for batch in (pixels, scaled):
        data = tf.data.Dataset.from_tensors((batch, labels)).repeat()
        history = teacher().fit(data, steps_per_epoch=1, epochs=1, verbose=0)
        losses.append(history.history["loss"][0])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_bad_batch_refused_in_a_distillers_step():
    distiller = keras_mm.MomentMatchingDistiller(teacher(), num_steps=2)
    distiller.compile()
    images, labels = images_and_labels()
    with pytest.raises(ValueError, match=r"^Bad training batch: labels must be in \[0, 10\)"):
        distiller.fit(repeat(images, labels - 1), steps_per_epoch=1, epochs=1, verbose=0)


# ---------------------------------------------------------------------- sampling and distillation
SAMPLE_CASES = {
    "labels=[]": ({"labels": []}, "labels is empty; pass at least one label"),
    "float labels": ({"labels": [1.5, 2.0]}, r"labels must be integers.*1\.5"),
    "label -1": ({"labels": [-1]}, r"labels must be in \[0, 10\)"),
    "NaN guidance_scale": ({"labels": [1], "guidance_scale": float("nan")},
                           "guidance_scale must be a finite number; got nan"),
    "negative guidance_scale": ({"labels": [1], "guidance_scale": -1.0},
                                "guidance_scale must be >= 0.0; got -1.0"),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_bad_sample_arguments_refused(shared_teacher, case):
    kwargs, message = SAMPLE_CASES[case]
    with pytest.raises(ValueError, match=message) as error:
        shared_teacher.sample(num_steps=2, seed=0, **kwargs)
    one_line(error)


def test_bad_guidance_scale_and_preconditioner_refused():
    shared_teacher = teacher()  # a distiller freezes its teacher
    with pytest.raises(ValueError, match="teacher_guidance_scale must be a finite number"):
        keras_mm.MomentMatchingDistiller(shared_teacher, teacher_guidance_scale=float("nan"))
    ones = [np.ones(v.shape, "float32") for v in shared_teacher.parameters]
    for bad, message in ((np.nan, "holds NaN or inf values"), (-1.0, "has values <= 0")):
        values = [v.copy() for v in ones]
        values[1].reshape(-1)[0] = bad
        with pytest.raises(ValueError, match="preconditioner array 1 .*" + message) as error:
            keras_mm.MomentMatchingDistiller(shared_teacher, method="instant",
                                             preconditioner=values)
        one_line(error)


# ---------------------------------------------------------------------- FID reference data
def test_fid_reference_data_uint8_converted_and_bad_values_refused():
    images, _ = images_and_labels()
    pixels = np.round((images + 1.0) * 127.5).astype("uint8")
    extractor = DigitsFeatures()
    from_uint8 = FeatureStatistics.from_images(pixels, extractor)
    from_float = FeatureStatistics.from_images(pixels / 127.5 - 1.0, extractor)
    np.testing.assert_allclose(from_uint8.mean, from_float.mean, atol=1e-6)
    nan_images = images.copy()
    nan_images[2, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="reference images contain 1 NaN or inf values"):
        keras_mm.metrics.Evaluator(reference_data=nan_images, feature_extractor=extractor,
                                   num_samples=4).prepare_reference()
    with pytest.raises(ValueError, match=r"reference images must be in \[-1, 1\]"):
        keras_mm.metrics.Evaluator(reference_data=(images + 1) * 127.5, feature_extractor=extractor,
                                   num_samples=4).prepare_reference()


# ---------------------------------------------------------------------- the exported sampler
@pytest.mark.one_backend("tensorflow")  # the limit is in the TensorFlow wrapper of every export
def test_exported_sampler_refuses_batches_beyond_max_batch_size(tmp_path):
    path = str(tmp_path / "sampler")
    keras_mm.export_sampler(teacher(), path, num_steps=1, max_batch_size=2, verbose=False)
    sampler = tf.saved_model.load(path)
    seed = tf.constant([0, 0])
    assert sampler.sample(labels=tf.constant([1, 2]), seed=seed).shape == (2, 8, 8, 1)
    assert int(sampler.metadata()["max_batch_size"]) == 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than max_batch_size=2"):
        sampler.sample(labels=tf.constant([1, 2, 3]), seed=seed)
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than max_batch_size=2"):
        sampler.sample_from_noise(labels=tf.constant([1, 2, 3]),
                                  noise=tf.zeros([1, 3, 8, 8, 1]))


def test_export_to_a_file_or_unwritable_directory_refused(tmp_path):
    model = teacher()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; a SavedModel is a directory") as error:
        keras_mm.export_sampler(model, tmp_path / "file", num_steps=1, verbose=False)
    one_line(error)
    with pytest.raises(ValueError, match="max_batch_size must be an integer >= 1; got 0"):
        keras_mm.export_sampler(model, tmp_path / "s", num_steps=1, max_batch_size=0)
    with pytest.raises(ValueError, match="'.*file' is not a writable directory") as error:
        keras_mm.export_sampler(model, tmp_path / "file" / "sampler", num_steps=1, verbose=False)
    one_line(error)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root can write to a read-only directory")
def test_export_to_a_read_only_directory_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="is not a writable directory") as error:
        keras_mm.export_sampler(teacher(), locked / "sampler", num_steps=1, verbose=False)
    one_line(error)
