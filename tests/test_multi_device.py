"""Teacher training and both distillation methods on two (fake) devices, JAX backend.

`keras.distribution` shards data and weights on JAX only, and JAX fixes its device count
when it is imported, so the checks run in one subprocess started with
`XLA_FLAGS=--xla_force_host_platform_device_count=2`; the tests below read its results.
Run the subprocess by hand with `KERAS_BACKEND=jax python -m tests.test_multi_device`.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="JAX-only by design: keras.distribution (DataParallel, ModelParallel) shards only "
    "on the JAX backend; the check runs once, in the JAX test run.",
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 2
BATCH_SIZE = 16


def _step_result(history, before, after):
    return {"losses": history.history,
            "weights": [w.tolist() for w in after],
            "updates": [(a - b).tolist() for a, b in zip(after, before)]}


def _fit_all(distribution):
    """Two teacher steps, then one alternating and one instant distillation step, under
    `distribution` (None: one device). Returns losses, weights and the batch's shards.

    Plain SGD, so that the weight updates are linear in the gradients: Adam's bias-corrected
    first step is lr * g / |g|, whose sign float round-off can flip where g ~ 0.
    """
    import jax

    import keras_mm
    from keras_mm.datasets import load_digits
    from tests.helpers import TinyConvNet

    images, labels = load_digits()
    images, labels = images[: 2 * BATCH_SIZE], labels[: 2 * BATCH_SIZE]
    keras.utils.set_random_seed(0)
    keras.distribution.set_distribution(distribution)
    batch_shards = []

    def record_batch_shards(model):
        # The per-device shape of the batch as the compiled train step sees it.
        iteration = model.iteration

        def spy(data):
            images = data[0]
            jax.debug.inspect_array_sharding(
                images, callback=lambda s: batch_shards.append(s.shard_shape(images.shape)))
            return iteration(data)

        model.iteration = spy

    try:
        results = {}
        teacher = keras_mm.DiffusionModel(TinyConvNet(), seed=0)
        teacher.compile(optimizer=keras.optimizers.SGD(0.1))
        record_batch_shards(teacher)
        before = teacher.network.get_weights()
        history = teacher.fit(images, labels, batch_size=BATCH_SIZE, epochs=1, verbose=0,
                              shuffle=False)
        results["teacher"] = _step_result(history, before, teacher.network.get_weights())
        for method in ("alternating", "instant"):
            distiller = keras_mm.MomentMatchingDistiller(
                teacher, num_steps=4, method=method, preconditioner="identity", seed=1)
            distiller.compile(generator_optimizer=keras.optimizers.SGD(1.0),
                              auxiliary_optimizer=keras.optimizers.SGD(1.0))
            record_batch_shards(distiller)
            before = distiller.generator.network.get_weights()
            history = distiller.fit(images[:BATCH_SIZE], labels[:BATCH_SIZE],
                                    batch_size=BATCH_SIZE, epochs=1, verbose=0)
            results[method] = _step_result(history, before,
                                           distiller.generator.network.get_weights())
        results["weight_devices"] = len(teacher.parameters[0].value.sharding.device_set)
        results["batch_shards"] = batch_shards
        return results
    finally:
        keras.distribution.set_distribution(None)


def _spec(variable):
    spec = getattr(variable.value.sharding, "spec", None)
    return None if spec is None else list(spec)


def _uvit_model_parallel():
    """A forward pass of the tiny UViT sharded by `uvit_layout_map`, against one device.

    The network alone, built symbolically and called under `jax.jit` (an eager build and call
    take 5x longer); the train steps' equivalence under a distribution is `_fit_all`'s.
    """
    import jax

    from keras_mm.distribution import uvit_layout_map
    from keras_mm.models.uvit import UViT

    rng = np.random.default_rng(0)
    inputs = {"noisy": rng.normal(size=(4, 8, 8, 1)).astype("float32"),
              "logsnr": np.array([-2.0, 0.0, 1.0, 3.0], "float32"),
              "labels": np.array([0, 1, 2, 10], "int32")}
    mesh = keras.distribution.DeviceMesh((1, NUM_DEVICES), ["batch", "model"], jax.devices())
    outputs = {}
    for name, distribution in (
        ("single", None),
        ("sharded", keras.distribution.ModelParallel(layout_map=uvit_layout_map(mesh),
                                                     batch_dim_name="batch")),
    ):
        keras.utils.set_random_seed(0)
        keras.distribution.set_distribution(distribution)
        try:
            network = UViT.from_preset("uvit_tiny")
            network.build({"noisy": (None, 8, 8, 1), "logsnr": (None,), "labels": (None,)})
            prediction = jax.jit(lambda x, network=network: network(x))(inputs)
            query = next(v for v in network.weights
                         if v.path.endswith("transformer_0/self_attention/query/kernel"))
            adam = keras.optimizers.Adam()
            adam.build([query])
            outputs[name] = {
                "prediction": np.asarray(prediction).tolist(),
                "query_spec": _spec(query),
                "slot_specs": [_spec(v) for v in adam.variables if v.shape == query.shape],
                "sharded_fraction": sum(
                    int(np.prod(v.shape)) for v in network.weights
                    if _spec(v) is not None and "model" in _spec(v)
                ) / sum(int(np.prod(v.shape)) for v in network.weights),
            }
        finally:
            keras.distribution.set_distribution(None)
    return outputs


def _main():
    import jax

    assert len(jax.devices()) == NUM_DEVICES, jax.devices()
    results = {
        "single": _fit_all(None),
        "data_parallel": _fit_all(keras.distribution.DataParallel(devices=jax.devices())),
        "model_parallel": _uvit_model_parallel(),
    }
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def results():
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={NUM_DEVICES}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        # Toy sizes: XLA's optimizing compiles, not the steps, are most of the run.
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    }
    out = subprocess.run([sys.executable, "-m", "tests.test_multi_device"], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULTS ")]
    assert out.returncode == 0 and lines, (
        f"The two-device subprocess failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULTS "):])


def assert_same_step(single, parallel):
    """Same losses, and the same weight updates up to float32 round-off."""
    for name, values in single["losses"].items():
        np.testing.assert_allclose(parallel["losses"][name], values, rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    scale = max(np.abs(np.asarray(u)).max() for u in single["updates"])
    assert scale > 1e-4, "the step did not move the weights; nothing was compared"
    for a, b in zip(single["updates"], parallel["updates"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-3 * scale)
    for a, b in zip(single["weights"], parallel["weights"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-3 * scale)


def test_data_parallel_splits_the_batch_and_replicates_weights(results):
    parallel = results["data_parallel"]
    assert parallel["weight_devices"] == NUM_DEVICES
    # Every train step (teacher, alternating, instant) saw its batch split along axis 0:
    # each device holds BATCH_SIZE / NUM_DEVICES examples.
    shard = [BATCH_SIZE // NUM_DEVICES, 8, 8, 1]
    assert parallel["batch_shards"] == [shard] * 3
    assert results["single"]["batch_shards"] == [[BATCH_SIZE, 8, 8, 1]] * 3
    assert results["single"]["weight_devices"] == 1


@pytest.mark.parametrize("step", ["teacher", "alternating", "instant"])
def test_data_parallel_step_matches_one_device(results, step):
    assert_same_step(results["single"][step], results["data_parallel"][step])


def test_uvit_layout_map_shards_weights_and_forward_matches_one_device(results):
    single, sharded = results["model_parallel"]["single"], results["model_parallel"]["sharded"]
    assert sharded["query_spec"] == [None, "model"]
    # Adam's m and v follow the weight's layout.
    assert sharded["slot_specs"] and all(s == sharded["query_spec"]
                                         for s in sharded["slot_specs"])
    # Attention, MLP, modulation, ResBlock convolutions and FiLM: most parameters are split.
    print(f"parameters sharded along 'model': {sharded['sharded_fraction']:.0%}")
    assert sharded["sharded_fraction"] > 0.6  # 73% for uvit_tiny
    assert single["sharded_fraction"] == 0
    np.testing.assert_allclose(sharded["prediction"], single["prediction"], rtol=1e-5,
                               atol=1e-5)


def test_uvit_layout_map_rejects_a_mesh_without_the_model_axis():
    from keras_mm.distribution import uvit_layout_map

    mesh = keras.distribution.DeviceMesh((1,), ["batch"], keras.distribution.list_devices()[:1])
    with pytest.raises(ValueError, match="model"):
        uvit_layout_map(mesh)


if __name__ == "__main__":
    _main()
