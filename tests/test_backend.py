import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm import backend
from keras_mm.backend import autodiff
from keras_mm.datasets import load_digits
from keras_mm.distillation import distiller as distiller_module
from tests.helpers import TinyConvNet


def np_(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def test_current_stateless_scope_follows_keras_scopes():
    # keras_mm's one read of a private Keras module: fails here if a release moves it.
    assert autodiff.current_stateless_scope() is None
    with keras.StatelessScope() as outer:
        assert autodiff.current_stateless_scope() is outer
        with keras.StatelessScope() as inner:
            assert autodiff.current_stateless_scope() is inner
        assert autodiff.current_stateless_scope() is outer
    assert autodiff.current_stateless_scope() is None


def test_bound_inherits_the_enclosing_scope():
    a = keras.Variable(1.0)
    b = keras.Variable(2.0)
    with (autodiff.bound([a], [ops.convert_to_tensor(10.0)]),
          autodiff.bound([b], [ops.convert_to_tensor(20.0)])):
        assert float(np_(a.value)) == 10.0 and float(np_(b.value)) == 20.0
    assert float(np_(a.value)) == 1.0 and float(np_(b.value)) == 2.0


def test_stopped_gives_the_value_and_no_gradient():
    layer = keras.layers.Dense(3)
    x = ops.convert_to_tensor(np.random.default_rng(0).normal(size=(4, 2)), "float32")
    layer.build(x.shape)
    expected = np_(layer(x))

    def loss():
        out = backend.stopped(layer, x)
        if keras.backend.backend() == "torch":
            # Run under torch.no_grad: no graph is recorded for the stopped forward pass,
            # although the layer's weights require gradients.
            assert layer.kernel.value.requires_grad
            assert out.grad_fn is None and not out.requires_grad
        return ops.sum(out * out) + ops.sum(layer(x)), out

    _, out, grads = backend.value_and_grad(loss, layer.trainable_variables)()
    np.testing.assert_allclose(np_(out), expected, rtol=1e-6)
    # Only the unstopped sum(layer(x)) contributes: d/dW sum(xW + b) = column sums of x.
    np.testing.assert_allclose(np_(grads[0]), np.tile(np_(x).sum(0)[:, None], (1, 3)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(grads[1]), np.full(3, 4.0), rtol=1e-6)
    assert backend.stopped(lambda: (x, None))[1] is None


@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(0)
    return keras_mm.DiffusionModel(TinyConvNet(), seed=0)


def _update_gradients(teacher, method):
    images = np.random.default_rng(1).uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    labels = np.arange(8) % 10
    distiller = keras_mm.MomentMatchingDistiller(
        teacher, num_steps=4, method=method, seed=3,
        preconditioner="identity" if method == "instant" else None)
    # Generator and auxiliary differ from the teacher, as after some training.
    for network in (distiller.generator.network,
                    distiller.auxiliary.network if distiller.auxiliary else None):
        if network is not None:
            network.set_weights([w + 0.05 * np.random.default_rng(2).normal(size=w.shape)
                                 for w in network.get_weights()])
    condition = teacher.check_condition({"labels": ops.convert_to_tensor(labels, "int32")})
    images = ops.convert_to_tensor(images)
    generator = distiller.generator.network.trainable_variables
    if method == "instant":
        nu = distiller.teacher_gradient(distiller.draw(images[:4], {"labels":
                                                                    condition["labels"][:4]}))
        draws = distiller.draw(images[4:], {"labels": condition["labels"][4:]})
        losses = {"instant": (lambda: (distiller.instant_loss(draws, nu), None), generator)}
    else:
        draws = distiller.draw(images, condition)
        losses = {
            "auxiliary": (lambda: (distiller.auxiliary_loss(draws), None),
                          distiller.auxiliary.network.trainable_variables),
            "generator": (lambda: distiller.generator_loss(draws), generator),
        }
    return {name: [np_(g) for g in backend.value_and_grad(fn, variables)()[2]]
            for name, (fn, variables) in losses.items()}


@pytest.mark.parametrize("method", ["alternating", "instant"])
def test_stopped_forward_passes_leave_the_updates_unchanged(teacher, method, monkeypatch):
    """Each update's gradients with `stopped` (no autograd graph on torch) equal those of
    plain `stop_gradient` on the same outputs, the code path before `stopped`."""
    fast = _update_gradients(teacher, method)
    monkeypatch.setattr(distiller_module, "stopped",
                        lambda fn, *args: keras.tree.map_structure(ops.stop_gradient,
                                                                   fn(*args)))
    reference = _update_gradients(teacher, method)
    for name in reference:
        assert sum(np.abs(g).sum() for g in reference[name]) > 0, name
        for got, want in zip(fast[name], reference[name]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=name)


def test_default_compile_uses_xla_where_keras_auto_does(teacher):
    """Keras 3.15's jit_compile="auto": XLA on JAX, on TensorFlow only with an accelerator
    visible, never on torch. A layer without `supports_jit` would silently turn it off."""
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=2)
    distiller.compile()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        expected = bool([d for d in tf.config.list_physical_devices() if d.device_type != "CPU"])
    else:
        expected = keras.backend.backend() == "jax"
    assert distiller.jit_compile is expected


def test_computed_after_gives_the_same_bits_and_depends_on_its_dependencies():
    # Subnormals aside: XLA on CPU flushes them to zero in any arithmetic.
    x = np.array([-0.0, 0.0, 1.5, -2.0, np.nan, np.inf, -np.inf], "float32")
    labels = ops.convert_to_tensor(np.arange(3), "int32")
    for dependency in ([0.5, 2.0], [np.nan, 1.0], [np.inf], [-1e30, 0.0]):
        dependency = ops.convert_to_tensor(np.array(dependency, "float32"))
        out = backend.computed_after({"x": ops.convert_to_tensor(x), "labels": labels},
                                     [dependency, None])
        assert np.asarray(ops.convert_to_numpy(out["x"])).tobytes() == x.tobytes()
        np.testing.assert_array_equal(ops.convert_to_numpy(out["labels"]), np.arange(3))
    if keras.backend.backend() == "jax":
        import jax

        # The output is computed from the dependency (what orders a compiled step).
        jaxpr = jax.make_jaxpr(backend.computed_after)(ops.ones(3), ops.ones(2)).jaxpr
        needed = set(map(str, jaxpr.outvars))
        for equation in reversed(jaxpr.eqns):
            if needed & set(map(str, equation.outvars)):
                needed |= {str(v) for v in equation.invars if hasattr(v, "aval")}
        assert str(jaxpr.invars[1]) in needed


@pytest.mark.parametrize("method", ["alternating", "instant"])
def test_the_ordered_step_trains_as_before(teacher, monkeypatch, method):
    """The generator update waits for the auxiliary's update (alternating) or for nu
    (instant) (`computed_after`): two compiled fit steps give the same weights and losses
    as without that dependence."""
    images, labels = load_digits()
    results = []
    for ordered in (True, False):
        if not ordered:
            monkeypatch.setattr(distiller_module, "computed_after", lambda t, d: t)
        distiller = keras_mm.MomentMatchingDistiller(
            teacher, num_steps=2, lora_rank=2, seed=4, method=method,
            **({"preconditioner": "identity"} if method == "instant" else {}))
        distiller.compile(learning_rate=1e-2, warmup_steps=0,
                          jit_compile=keras.backend.backend() != "torch")
        history = distiller.fit(images[:32], labels[:32], batch_size=16, epochs=1,
                                verbose=0, shuffle=False)
        results.append(([np_(w) for w in distiller.trainable_weights], history.history))
    (weights, history), (plain_weights, plain_history) = results
    assert max(np.abs(w).max() for w in weights) > 0  # the deltas moved
    for got, want in zip(weights, plain_weights):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for key, values in plain_history.items():
        np.testing.assert_allclose(history[key], values, rtol=1e-6, err_msg=key)
