"""Rematerialisation (`remat=True`): the same gradients, with each layer's activations
recomputed in the backward pass (jax.checkpoint / tf.recompute_grad / torch checkpoint)."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm.backend import remat as remat_module
from keras_mm.backend import rematerialized, value_and_grad
from keras_mm.backend.autodiff import bound
from keras_mm.datasets import load_digits
from tests.helpers import TinyConvNet

JIT = keras.backend.backend() != "torch"


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


@pytest.fixture(scope="module")
def setup():
    images, labels = load_digits()
    keras.utils.set_random_seed(0)
    teacher = keras_mm.DiffusionModel(TinyConvNet(), seed=0)
    batch = (ops.convert_to_tensor(images[:16]), {"labels": ops.convert_to_tensor(labels[:16])})
    return teacher, batch, (images[:32], labels[:32])


def counting_remat(monkeypatch):
    calls = []
    checkpoint = remat_module.checkpoint

    def counted(fn):
        calls.append(fn)
        return checkpoint(fn)

    monkeypatch.setattr(remat_module, "checkpoint", counted)
    return calls


def assert_same(first, second):
    for a, b in zip(first, second):
        np.testing.assert_allclose(np_(a), np_(b), rtol=1e-5, atol=1e-7)


def test_rematerialized_gradients_equal_the_plain_ones(setup, monkeypatch, lora_rank=2):
    """Generator, auxiliary (alternating) and nu (instant, through the teacher): gradients
    with checkpointed layers equal the plain ones, and the checkpoints were really used."""
    teacher, (images, condition), _ = setup
    calls = counting_remat(monkeypatch)
    alternating = keras_mm.MomentMatchingDistiller(teacher, num_steps=2, lora_rank=lora_rank,
                                                   seed=1, remat=True)
    instant = keras_mm.MomentMatchingDistiller(teacher, num_steps=2, method="instant",
                                               lora_rank=lora_rank, seed=1,
                                               preconditioner="identity")
    rng = np.random.default_rng(0)
    for variable in alternating.trainable_variables:  # LoRA's B starts at zero: move it
        variable.assign(0.1 * rng.normal(size=variable.shape).astype("float32"))
    draws = alternating.draw(images, condition)
    computations = [
        (lambda: alternating.generator_loss(draws), alternating.generator),
        (lambda: (alternating.auxiliary_loss(draws), None), alternating.auxiliary),
    ]
    for loss, model in computations:
        variables = model.network.trainable_variables
        plain = value_and_grad(loss, variables)()
        before = len(calls)
        with rematerialized(alternating.remat_layers()):
            checkpointed = value_and_grad(loss, variables)()
        assert len(calls) > before
        assert_same(plain[:1] + tuple(plain[2]), checkpointed[:1] + tuple(checkpointed[2]))
    plain_nu = instant.teacher_gradient(draws)
    before = len(calls)
    with rematerialized(teacher.network.layers):
        checkpointed_nu = instant.teacher_gradient(draws)
    assert len(calls) > before
    assert_same(plain_nu, checkpointed_nu)
    assert max(np.abs(np_(g)).max() for g in plain_nu) > 0


def test_remat_distiller_step_is_the_plain_one(setup, method="instant"):
    """One compiled fit step (jit on JAX and TensorFlow) with remat=True: the same losses
    as without (they are computed before any update), and the option is saved. The
    instant method: nu differentiates the teacher's checkpointed layers, and its JVP runs
    them plainly (forward mode; the alternating updates are in the test above)."""
    teacher, _, (images, labels) = setup
    logs = []
    for remat in (False, True):
        distiller = keras_mm.MomentMatchingDistiller(
            teacher, num_steps=2, method=method, lora_rank=2, seed=5, remat=remat,
            preconditioner="identity" if method == "instant" else None)
        distiller.compile(jit_compile=JIT)
        history = distiller.fit(images[:16], labels[:16], batch_size=16, epochs=1, verbose=0,
                                shuffle=False)
        logs.append({k: v[-1] for k, v in history.history.items()})
    first = "auxiliary_loss" if method == "alternating" else "instant_objective"
    np.testing.assert_allclose(logs[1][first], logs[0][first], rtol=1e-5)
    assert distiller.get_config()["remat"] is True
    assert not any("call" in vars(layer) for layer in teacher.network.layers)  # restored


@pytest.mark.one_backend("jax")
def test_jax_checkpoints_keep_less_in_the_compiled_step():
    """XLA:CPU scheduled `jax.checkpoint`'s recomputations before the backward pass, all
    live at once: here 15.9 MB of compiled temporaries against 13.2 MB without remat (a LoRA
    alternating step: 149 MB against 135 MB). keras_mm's checkpoint recomputes each block
    when its cotangent arrives: 2.9 MB."""
    import jax

    # Residual MLP blocks, as a transformer's: the 4x-wide hidden activations are what a
    # checkpointed block recomputes instead of keeping.
    layers = [keras.Sequential([keras.layers.Dense(512, activation="gelu"),
                                keras.layers.Dense(128)]) for _ in range(6)]
    x = ops.ones((256, 128))
    for layer in layers:
        layer.build((None, 128))
    variables = [v for layer in layers for v in layer.trainable_variables]

    def loss():
        y = x
        for layer in layers:
            y = y + layer(y)
        return ops.sum(y * y), None

    def temporaries(remat):
        def step(values):
            with bound(variables, values), rematerialized(layers if remat else []):
                return value_and_grad(loss, variables)()[2]

        values = [v.value for v in variables]
        compiled = jax.jit(step).lower(values).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain, checkpointed = temporaries(False), temporaries(True)
    assert checkpointed < 0.5 * plain, (checkpointed, plain)


@pytest.mark.one_backend("jax")
def test_jax_checkpoint_differentiates_closed_over_values():
    """A checkpointed function may read a bound weight it is not given (another layer's):
    its gradient is the plain one (a custom VJP would otherwise leak a tracer)."""
    from keras_mm.backend.remat import checkpoint

    weight = keras.Variable(np.full((3,), 2.0, "float32"))
    x = ops.convert_to_tensor(np.array([0.1, 0.5, 1.0], "float32"))

    def loss(remat):
        def fn(inputs):
            return ops.sin(inputs * weight.value)

        return ops.sum((checkpoint(fn) if remat else fn)(x) ** 2), None

    plain = value_and_grad(lambda: loss(False), [weight])()
    checkpointed = value_and_grad(lambda: loss(True), [weight])()
    assert_same(plain[:1] + tuple(plain[2]), checkpointed[:1] + tuple(checkpointed[2]))
