import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm.datasets import load_digits
from tests.helpers import TinyConvNet


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def make_teacher(seed=0):
    keras.utils.set_random_seed(seed)
    return keras_mm.DiffusionModel(TinyConvNet(), seed=seed)


def test_teacher_fit_lowers_the_denoising_loss(digits):
    images, labels = digits
    teacher = make_teacher()
    rng = np.random.default_rng(0)
    x, y = images[:512], {"labels": labels[:512]}
    logsnr = teacher.schedule.logsnr(rng.uniform(size=512).astype("float32"))
    noise = rng.normal(size=x.shape).astype("float32")

    def held_loss():
        return float(np.mean(np_(teacher.denoising_loss(x, logsnr, noise, y, training=False))))

    before = held_loss()
    teacher.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = teacher.fit(images, labels, batch_size=128, epochs=6, verbose=0)
    after = held_loss()
    print(f"fixed-noise loss before {before:.3f} after {after:.3f};", history.history["loss"])
    assert after < 0.85 * before


def test_saved_teacher_gives_identical_predictions(tmp_path, digits):
    images, labels = digits
    teacher = make_teacher()
    teacher.compile()
    teacher.fit(images[:256], labels[:256], batch_size=128, epochs=1, verbose=0)
    path = str(tmp_path / "teacher.keras")
    teacher.save(path)
    restored = keras.saving.load_model(path)
    z = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    logsnr = np.array([-3.0, 0.0, 2.0, 5.0], "float32")
    cond = {"labels": np.array([0, 3, 9, 10], "int32")}
    np.testing.assert_allclose(
        np_(restored.denoise(z, logsnr, cond)), np_(teacher.denoise(z, logsnr, cond)), atol=1e-6
    )
    assert restored.schedule.shift == teacher.schedule.shift
    # The optimizer state travels too (needed for the instant method's preconditioner).
    assert int(np_(restored.optimizer.iterations)) == int(np_(teacher.optimizer.iterations))


def test_guidance_zero_equals_the_conditional_prediction():
    teacher = make_teacher()
    z = np.random.default_rng(1).normal(size=(3, 8, 8, 1)).astype("float32")
    logsnr = np.zeros(3, "float32")
    cond = {"labels": np.array([1, 2, 3], "int32")}
    plain = np_(teacher.denoise(z, logsnr, cond))
    np.testing.assert_allclose(np_(teacher.guided_denoise(z, logsnr, cond, 0.0)), plain)
    null = np_(teacher.denoise(z, logsnr, teacher.null_condition(3)))
    np.testing.assert_allclose(
        np_(teacher.guided_denoise(z, logsnr, cond, 1.5)), 2.5 * plain - 1.5 * null, atol=1e-5
    )
    samples = np_(teacher.sample(labels=[0, 1], num_steps=3, seed=0, guidance_scale=1.0,
                                 clip=True))
    assert samples.shape == (2, 8, 8, 1) and np.all(np.abs(samples) <= 1.0)


def test_bad_input_errors(digits):
    images, labels = digits
    teacher = make_teacher()
    teacher.compile()
    with pytest.raises(ValueError, match="image_shape"):
        teacher.fit(np.zeros((8, 16, 16, 1), "float32"), np.zeros(8, "int32"), verbose=0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        teacher.fit(images[:8], np.full(8, 12, "int32"), verbose=0)
    bad = images[:8].copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        teacher.fit(bad, labels[:8], verbose=0)
    with pytest.raises(ValueError, match="labels must be in"):
        teacher.sample(labels=[0, 11], num_steps=2)
    with pytest.raises(ValueError, match="num_steps"):
        teacher.sample(labels=[0], num_steps=0)
    with pytest.raises(ValueError, match="class-conditional"):
        teacher.sample(num_samples=2, num_steps=2)
    with pytest.raises(ValueError, match="image_shape"):
        keras_mm.DiffusionModel(keras.Sequential([keras.layers.Dense(2)]))
