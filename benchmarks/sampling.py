"""Sampling throughput: the exported SavedModel sampler against the in-process one.

Prints a markdown table of images/s for k = 1, 2, 4, 8 steps (the distilled samplers) and
64 and 256 steps (the teacher), on the digits preset (UViT "uvit_digits", 8x8x1, 10
classes), for:

- exported: `keras_mm.export_sampler(...)` loaded with `tf.saved_model.load` in this process,
  `sample(labels, seed)` (noise drawn in the graph, uint8 output);
- in-process: `DiffusionModel.sample(labels=..., num_steps=k, seed=...)` as a user calls it;
- compiled: the same `sample` call inside `jax.jit` / `tf.function` (JAX and TensorFlow
  backends), with the noise drawn beforehand. This is the fastest in-process sampler.

A distilled generator has its teacher's architecture, so a k-step sampler of the (untrained)
teacher network costs what the k-step student costs; the weights do not change the timing.

Runs in about 5 minutes on a 2-core CPU with JAX or TensorFlow, 8 with torch (most of it
exporting, and the in-process 64- and 256-step rows):

    KERAS_BACKEND=jax python benchmarks/sampling.py
    KERAS_BACKEND=tensorflow python benchmarks/sampling.py
    KERAS_BACKEND=torch python benchmarks/sampling.py   # exports through a subprocess
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import keras_mm
from keras_mm.export import export_sampler, sampler_noise

# ---------------------------------------------------------------------- hyperparameters
BATCH_SIZE = 64
STUDENT_STEPS = (1, 2, 4, 8)
TEACHER_STEPS = (64, 256)
# Timed calls of each sampler per row, after one warm-up call; the fastest counts.
REPEATS = {1: 10, 2: 10, 4: 8, 8: 6, 64: 2, 256: 1}
SEED = 0


def build_model():
    """The digits preset; a small conv net if UViT is not available in this checkout."""
    try:
        from keras_mm.models.uvit import UViT
    except ImportError:
        UViT = None
    keras.utils.set_random_seed(SEED)
    if UViT is not None:
        return keras_mm.DiffusionModel(UViT.from_preset("uvit_digits")), "UViT uvit_digits"
    from tests.helpers import TinyConvNet

    print("keras_mm.models.uvit is missing: falling back to a small conv net.")
    network = TinyConvNet(width=64)
    return keras_mm.DiffusionModel(network), "TinyConvNet(width=64) (UViT missing)"


def images_per_second(samplers, repeats):
    """Images/s of each `name -> fn` sampler: the fastest of `repeats` interleaved calls.

    Interleaving and taking the fastest call keep other processes on a shared CPU from
    favouring one sampler.
    """
    for fn in samplers.values():
        fn()  # warm-up: compiles, fills caches
    best = {name: float("inf") for name in samplers}
    for _ in range(repeats):
        for name, fn in samplers.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: BATCH_SIZE / seconds for name, seconds in best.items()}


def compiled_sampler(model, num_steps):
    """`model.sample` under `jax.jit` / `tf.function`: `(noise, labels) -> images`, or None."""
    backend = keras.backend.backend()

    def sample(noise, labels):
        return model.sample(noise=noise, condition={"labels": labels}, num_steps=num_steps)

    if backend == "jax":
        import jax

        def stateless_sample(values, noise, labels):
            with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
                return sample(noise, labels)

        jitted = jax.jit(stateless_sample)
        return lambda noise, labels: jitted([v.value for v in model.variables], noise, labels)
    if backend == "tensorflow":
        return tf.function(sample, autograph=False)
    return None  # torch: no compiled route measured


def measure(model, labels, num_steps, folder):
    """Export a `num_steps` sampler and time it against the in-process ones."""
    path = os.path.join(folder, f"sampler_{num_steps}")
    start = time.perf_counter()
    export_sampler(model, path, num_steps=num_steps, verbose=False)
    export_seconds = time.perf_counter() - start
    served = tf.saved_model.load(path)
    seed = tf.constant([SEED, 0], tf.int32)
    label_tensor = tf.constant(labels)
    samplers = {
        "exported": lambda: served.sample(labels=label_tensor, seed=seed).numpy(),
        "in_process": lambda: keras.ops.convert_to_numpy(
            model.sample(labels=labels, num_steps=num_steps, seed=SEED)
        ),
    }
    compiled_fn = compiled_sampler(model, num_steps)
    if compiled_fn is not None:
        noise = keras.ops.convert_to_tensor(
            sampler_noise(SEED, BATCH_SIZE, model.image_shape, num_steps)
        )
        label_input = keras.ops.convert_to_tensor(labels)
        samplers["compiled"] = lambda: keras.ops.convert_to_numpy(
            compiled_fn(noise, label_input)
        )
    speed = images_per_second(samplers, REPEATS.get(num_steps, 2))
    return speed["exported"], speed["in_process"], speed.get("compiled"), export_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="*", default=STUDENT_STEPS + TEACHER_STEPS)
    args = parser.parse_args()
    model, model_name = build_model()
    labels = np.arange(BATCH_SIZE, dtype="int32") % model.num_classes
    backend = keras.backend.backend()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for num_steps in args.steps:
            exported, in_process, compiled, export_seconds = measure(
                model, labels, num_steps, folder
            )
            rows.append((num_steps, exported, in_process, compiled, export_seconds))
            compiled_text = "n/a" if compiled is None else f"{compiled:.1f}"
            print(f"  {num_steps:>3} steps: exported {exported:.1f} img/s, in-process "
                  f"{in_process:.1f} img/s, compiled {compiled_text} img/s (export "
                  f"{export_seconds:.1f} s)", flush=True)

    print(f"\nBackend {backend}, {model_name} ({model.network.count_params():,} parameters), "
          f"batch {BATCH_SIZE}, ancestral sampler, {os.cpu_count()} CPU cores.\n")
    print("| steps | exported img/s | in-process `sample` img/s | in-process compiled img/s "
          "| exported / in-process | exported / compiled | export s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for num_steps, exported, in_process, compiled, export_seconds in rows:
        compiled_text = "n/a" if compiled is None else f"{compiled:.1f}"
        ratio_text = "n/a" if compiled is None else f"{exported / compiled:.2f}"
        print(f"| {num_steps} | {exported:.1f} | {in_process:.1f} | {compiled_text} | "
              f"{exported / in_process:.2f} | {ratio_text} | {export_seconds:.1f} |")
    by_steps = {row[0]: row for row in rows}
    if 8 in by_steps and 256 in by_steps:
        print(f"\n8 steps vs 256 steps: exported {by_steps[8][1] / by_steps[256][1]:.1f}x "
              f"faster, in-process {by_steps[8][2] / by_steps[256][2]:.1f}x faster "
              "(goal: >= 30x).")


if __name__ == "__main__":
    main()
