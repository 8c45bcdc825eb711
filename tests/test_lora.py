"""Students as low-rank deltas on the teacher's one copy of theta (`lora_rank`)."""

import math
import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm.backend import value_and_grad
from keras_mm.datasets import load_digits
from keras_mm.distillation import LoRANetwork, merge_lora
from keras_mm.distillation.lora import in_dtype
from keras_mm.models.diffusion_model import per_example_mean_square
from tests.helpers import InterruptAt, TinyConvNet

BACKEND = keras.backend.backend()
RANK = 2


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def size(variables):
    return sum(math.prod(v.shape) for v in variables)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits()
    return images[:256], labels[:256]


@pytest.fixture(scope="module")
def teacher(digits):
    keras.utils.set_random_seed(0)  # untrained: the deltas' bookkeeping is what is tested
    return keras_mm.DiffusionModel(TinyConvNet(), seed=0)


def lora_distiller(teacher, method, **options):
    return keras_mm.MomentMatchingDistiller(
        teacher, num_steps=2, method=method, lora_rank=RANK, seed=3,
        preconditioner="identity" if method == "instant" else None, **options)


def expected_delta_size(network):
    """r (fan_in + fan_out) per kernel, the full size of each vector, nothing else."""
    total = 0
    for variable in network:
        if variable.path.endswith("kernel"):
            total += RANK * (math.prod(variable.shape[:-1]) + variable.shape[-1])
        elif len(variable.shape) == 1:
            total += variable.shape[0]
    return total


@pytest.mark.parametrize("method", ["alternating", "instant"])
def test_lora_student_holds_one_copy_of_theta_and_trains_only_its_deltas(teacher, digits,
                                                                          method, tmp_path):
    theta = [np_(v) for v in teacher.network.weights]
    distiller = lora_distiller(teacher, method)
    # It starts as the teacher: the same 2-step samples from the same noise.
    np.testing.assert_allclose(np_(distiller.sample(labels=[1, 2, 3], seed=0)),
                               np_(teacher.sample(labels=[1, 2, 3], num_steps=2, seed=0)),
                               atol=1e-6)
    deltas = expected_delta_size(teacher.parameters)
    networks = 2 if method == "alternating" else 1
    assert size(distiller.trainable_variables) == networks * deltas
    # Every weight the distiller holds: theta once, the deltas, and (instant) Lambda and nu.
    held = {id(v): v for v in distiller.weights}.values()
    p = size(teacher.network.weights)
    # The instant method adds Lambda and the moving average of nu, both teacher-sized.
    teacher_sized = 2 * p if method == "instant" else 0
    other = size(held) - (p + networks * deltas + teacher_sized)
    assert 0 <= other < 20  # random-generator states only (2 values each): no copy of theta
    # Tiny steps: the compiled step is tested elsewhere, and compiling costs more here.
    distiller.compile(learning_rate=1e-2, warmup_steps=1, jit_compile=False)
    history = distiller.fit(digits[0][:128], digits[1][:128], batch_size=64, epochs=1,
                            verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    for before, after in zip(theta, teacher.network.weights):
        np.testing.assert_array_equal(before, np_(after))  # theta is never written
    assert max(np.abs(np_(b)).max() for b in distiller.generator.network.lora_b) > 0
    # Saved and loaded with its teacher; merged into a plain network, saved alone.
    labels = [0, 4, 7]
    samples = np_(distiller.sample(labels=labels, seed=1))
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    revived = keras.saving.load_model(path, custom_objects={"TinyConvNet": TinyConvNet})
    np.testing.assert_array_equal(np_(revived.sample(labels=labels, seed=1)), samples)
    assert isinstance(revived.generator.network, LoRANetwork)
    merged = merge_lora(distiller.generator)
    assert not isinstance(merged.network, LoRANetwork)
    assert size(merged.network.weights) == size(teacher.network.weights)
    np.testing.assert_allclose(np_(merged.sample(labels=labels, num_steps=2, seed=1)), samples,
                               atol=1e-5)
    with pytest.raises(ValueError, match="merge_lora"):
        distiller.generator.save(str(tmp_path / "generator.keras"))
    merged.save(str(tmp_path / "generator.keras"))
    alone = keras.saving.load_model(str(tmp_path / "generator.keras"),
                                    custom_objects={"TinyConvNet": TinyConvNet})
    np.testing.assert_allclose(np_(alone.sample(labels=labels, num_steps=2, seed=1)), samples,
                               atol=1e-5)


def test_delta_gradients_are_the_chain_rule_of_the_kernel_gradients(teacher, digits):
    """For W = theta + (alpha / r) A B: dL/dA = s G B^T and dL/dB = s A^T G with G = dL/dW
    of the merged plain network, and a bias delta's gradient is the bias gradient."""
    network = LoRANetwork(teacher.network, rank=RANK)
    rng = np.random.default_rng(0)
    for variable in network.weights:  # deltas away from zero, so no term vanishes
        variable.assign(0.05 * rng.normal(size=variable.shape).astype("float32"))
    student = keras_mm.DiffusionModel(network, schedule=teacher.schedule)
    merged = merge_lora(student)
    images, labels = digits
    x = ops.convert_to_tensor(images[:16])
    noise = ops.convert_to_tensor(rng.normal(size=x.shape).astype("float32"))
    logsnr = ops.convert_to_tensor(np.linspace(-4, 4, 16).astype("float32"))
    condition = {"labels": ops.convert_to_tensor(labels[:16])}

    def loss_of(model):
        def loss():
            x_hat = model.denoise(noise, logsnr, condition)
            return ops.mean(per_example_mean_square(x - x_hat)), None
        return loss

    loss_lora, _, grads = value_and_grad(loss_of(student), network.weights)()
    loss_plain, _, plain_grads = value_and_grad(loss_of(merged),
                                                merged.network.trainable_variables)()
    np.testing.assert_allclose(np_(loss_lora), np_(loss_plain), rtol=1e-5)
    # The merged network is a fresh instance of the base's class: same variable order.
    assert [v.shape for v in merged.network.trainable_variables] == [
        v.shape for v in network._base.parameters]
    grad_of = {id(v): np_(g) for v, g in zip(network.weights, grads)}
    scale = network.alpha / network.rank
    checked = 0
    for variable, g_w in zip(network._base.parameters, plain_grads):
        g_w = np_(g_w)
        entry = network._deltas.get(id(variable))
        if entry is None:
            continue
        if entry[0] == "full":
            np.testing.assert_allclose(grad_of[id(entry[1])], g_w, rtol=1e-4, atol=1e-7)
        else:
            _, a, b = entry
            g = g_w.reshape(-1, g_w.shape[-1])
            np.testing.assert_allclose(grad_of[id(a)], scale * g @ np_(b).T, rtol=1e-3,
                                       atol=1e-7)
            np.testing.assert_allclose(grad_of[id(b)], scale * np_(a).T @ g, rtol=1e-3,
                                       atol=1e-7)
        checked += 1
    assert checked == len(network._deltas)


@pytest.mark.skipif(BACKEND == "torch", reason="torch exports through a TF subprocess; "
                    "the merged model it exports is a plain one, as in test_export.py")
def test_exported_lora_student_matches_in_process_sampling(teacher, tmp_path):
    import tensorflow as tf

    from keras_mm.export import export_sampler, sampler_noise

    distiller = lora_distiller(teacher, "alternating")
    rng = np.random.default_rng(1)
    for variable in distiller.generator.network.weights:  # a student away from the teacher
        variable.assign(0.05 * rng.normal(size=variable.shape).astype("float32"))
    export_sampler(distiller.generator, str(tmp_path / "sampler"), num_steps=2,
                   output="float", verbose=False)
    served = tf.saved_model.load(str(tmp_path / "sampler"))
    labels = [0, 4, 7]
    noise = sampler_noise(0, 3, teacher.image_shape, 2)
    out = served.sample_from_noise(noise=tf.constant(noise),
                                   labels=tf.constant(labels, tf.int32))
    expected = np_(distiller.sample(noise=noise, labels=labels))
    assert np.abs(expected - np_(teacher.sample(noise=noise, labels=labels,
                                                num_steps=2))).max() > 1e-2
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4)


def test_lora_distillation_resumes_to_the_same_deltas(teacher, digits, tmp_path):
    def run(callbacks):
        distiller = lora_distiller(teacher, "alternating")
        distiller.compile(warmup_steps=2, jit_compile=False)
        distiller.fit(digits[0][:128], digits[1][:128], batch_size=64, epochs=3, verbose=0,
                      shuffle=False, callbacks=callbacks)
        return [np_(w) for w in distiller.generator.network.weights]

    reference = run([])
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        run([keras.callbacks.BackupAndRestore(backup), InterruptAt(2)])
    assert os.path.exists(os.path.join(backup, "training_metadata.json"))
    resumed = run([keras.callbacks.BackupAndRestore(backup)])
    for a, b in zip(reference, resumed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_teacher_with_float32_deltas(teacher, digits):
    """The frozen teacher held in bfloat16, the deltas, their Adam state and Lambda in
    float32: a step of each method runs, theta stays bfloat16 and unchanged, and the first
    losses are the float32 teacher's to bfloat16 precision (same seeds, same batch)."""
    half = in_dtype(teacher, "bfloat16")
    assert {str(v.dtype) for v in half.network.weights} == {"bfloat16"}
    for full, cast in zip(teacher.network.weights, half.network.weights):
        np.testing.assert_allclose(np_(ops.cast(cast, "float32")), np_(full), rtol=1e-2)
    theta = [np_(ops.cast(v, "float32")) for v in half.network.weights]
    for method in ("alternating", "instant"):
        logs = []
        for source in (teacher, half):
            distiller = lora_distiller(source, method)
            distiller.compile(jit_compile=False)
            history = distiller.fit(digits[0][:64], digits[1][:64], batch_size=64, epochs=1,
                                    verbose=0, shuffle=False)
            logs.append({k: v[-1] for k, v in history.history.items()})
        assert {str(v.dtype) for v in distiller.trainable_variables} == {"float32"}
        slots = [v for v in distiller.optimizer.variables if "float" in str(v.dtype)]
        assert slots and {str(v.dtype) for v in slots} == {"float32"}
        if method == "instant":
            assert {str(v.dtype) for v in distiller.preconditioner} == {"float32"}
        first = "auxiliary_loss" if method == "alternating" else "instant_objective"
        np.testing.assert_allclose(logs[1][first], logs[0][first], rtol=0.05)
    for before, after in zip(theta, half.network.weights):
        assert str(after.dtype) == "bfloat16"
        np.testing.assert_array_equal(before, np_(ops.cast(after, "float32")))
    assert {str(v.dtype) for v in teacher.network.weights} == {"float32"}  # a copy


def test_lora_arguments_are_checked(teacher):
    with pytest.raises(ValueError, match="lora_rank must be an integer >= 1"):
        keras_mm.MomentMatchingDistiller(teacher, lora_rank=0)
    with pytest.raises(ValueError, match="matched no kernel"):
        keras_mm.MomentMatchingDistiller(teacher, lora_rank=2, lora_targets=["no_such_layer"])


def test_lora_students_default_to_their_own_learning_rate(teacher):
    """compile() without a learning rate: 3e-4 for low-rank students, 1e-4 for full ones (the
    measured defaults, `keras_mm.distillation.optimizers.default_learning_rate`); a given
    rate is used as it is."""
    def peak_rates(distiller):
        return [optimizer._learning_rate.learning_rate
                for optimizer in distiller.optimizer.optimizers]

    for lora_rank, expected in ((2, 3e-4), (None, 1e-4)):
        distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=2, lora_rank=lora_rank)
        distiller.compile(jit_compile=False)
        assert peak_rates(distiller) == [expected, expected]
        distiller.compile(learning_rate=5e-5, jit_compile=False)
        assert peak_rates(distiller) == [5e-5, 5e-5]
