"""A saved distiller keeps its teacher's Adam state: a reloaded teacher can start an instant
distillation with the same preconditioner Lambda as the original (issue 12, item 10)."""

import keras
import numpy as np
from keras import ops

import keras_mm
from tests.helpers import TinyConvNet


def test_saved_distiller_keeps_the_teachers_adam_state(tmp_path):
    teacher = keras_mm.DiffusionModel(TinyConvNet(), seed=0)
    teacher.compile()
    images = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    teacher.fit(images, np.arange(8), batch_size=8, epochs=2, verbose=0)
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=2)
    distiller.compile()
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras")

    saved = [ops.convert_to_numpy(v) for v in teacher.optimizer.variables]
    restored = [ops.convert_to_numpy(v) for v in loaded.teacher.optimizer.variables]
    assert len(restored) == len(saved) > 2  # iterations, learning rate and the moments
    for got, expected in zip(restored, saved):
        np.testing.assert_array_equal(got, expected)
    expected = keras_mm.MomentMatchingDistiller(teacher, method="instant").preconditioner
    got = keras_mm.MomentMatchingDistiller(loaded.teacher, method="instant").preconditioner
    for a, b in zip(got, expected):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-6)
