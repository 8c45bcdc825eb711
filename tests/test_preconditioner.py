"""Lambda (the instant method's preconditioner) stays finite where a weight had no gradient."""

import keras
import numpy as np
from keras import ops

import keras_mm
from keras_mm.datasets import load_digits
from keras_mm.distillation.preconditioner import finite_preconditioner
from tests.helpers import TinyConvNet


def np_(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def digits_without(label, count=192):
    images, labels = load_digits()
    keep = labels != label
    return images[keep][:count], labels[keep][:count]


def embedding_index(teacher):
    return next(i for i, p in enumerate(teacher.parameters) if "embeddings" in p.path)


def test_finite_preconditioner_against_adam_formula():
    eps = 1e-8
    seen = np.array([[4.0, 1e-4], [0.0, 0.25]])
    unseen = np.zeros((3,))
    lambdas = finite_preconditioner([seen, unseen], eps)
    expected_seen = 1.0 / (np.sqrt([4.0, 1e-4, 0.25]) + eps)
    np.testing.assert_allclose(lambdas[0][[0, 0, 1], [0, 1, 1]], expected_seen, rtol=1e-6)
    # The zero entry takes its variable's median; the unseen variable the global median.
    np.testing.assert_allclose(lambdas[0][1, 0], np.median(expected_seen), rtol=1e-6)
    np.testing.assert_allclose(lambdas[1], np.median(expected_seen), rtol=1e-6)
    assert max(lam.max() for lam in lambdas) <= expected_seen.max() * (1 + 1e-6)


def test_estimated_preconditioner_is_bounded_for_an_absent_class():
    """Class 9 never appears in the estimation batches: its embedding row gets no gradient.
    With condition dropout the null label (row 10) does get one, as in `fit`."""
    keras.utils.set_random_seed(0)
    teacher = keras_mm.DiffusionModel(TinyConvNet(), condition_dropout=0.5, seed=0)
    teacher.compile()
    images, labels = digits_without(9)
    teacher.fit(images, labels, batch_size=64, epochs=1, verbose=0)
    before = [np_(p) for p in teacher.parameters]
    seed_before = np_(teacher.seed_generator.state.value)
    batches = [(images[i:i + 64], labels[i:i + 64]) for i in range(0, 192, 64)]
    lambdas = keras_mm.estimate_preconditioner(teacher, batches, steps=3)

    table = lambdas[embedding_index(teacher)]
    trained_rows = np.concatenate([table[:9], table[10:]])  # all rows but class 9's
    np.testing.assert_allclose(table[9], np.median(trained_rows), rtol=1e-6)
    assert table.max() <= trained_rows.max() * (1 + 1e-6)
    assert all(np.isfinite(lam).all() and lam.max() < 1e6 for lam in lambdas)
    # The null label's row was trained through condition dropout: Adam's value, not a fill.
    assert not np.allclose(table[10], table[9])
    # The teacher is unchanged, its random state included.
    for a, b in zip(before, teacher.parameters):
        np.testing.assert_array_equal(a, np_(b))
    np.testing.assert_array_equal(seed_before, np_(teacher.seed_generator.state.value))


def test_preconditioner_from_adam_is_bounded_for_a_class_never_trained():
    keras.utils.set_random_seed(0)
    teacher = keras_mm.DiffusionModel(TinyConvNet(), seed=0)
    teacher.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-12))
    teacher.fit(*digits_without(9), batch_size=64, epochs=1, verbose=0)
    lambdas = keras_mm.preconditioner_from_adam(teacher)
    table = lambdas[embedding_index(teacher)]
    # Without the fill, row 9 would be 1 / eps = 1e12. Row 10 (null label) is trained
    # through the default condition dropout.
    np.testing.assert_allclose(table[9], np.median(np.concatenate([table[:9], table[10:]])),
                               rtol=1e-6)
    assert all(np.isfinite(lam).all() and lam.max() < 1e9 for lam in lambdas)
