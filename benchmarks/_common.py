"""Shared helpers for the benchmark scripts: run once per backend, time compiled steps."""

import os
import statistics
import subprocess
import sys
import time

BACKENDS = ("jax", "tensorflow", "torch")


def run_per_backend(script, args=(), backends=BACKENDS):
    """Re-run `script` under each backend in a subprocess; return their stdout lines."""
    lines = []
    for backend in backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run([sys.executable, script, "--single", *args], env=env,
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            lines.append(f"| {backend} | failed: {last} |")
        else:
            lines.extend(line for line in out.stdout.splitlines() if line.startswith("|"))
    return lines


def load_average():
    """The 1-minute load average, to print beside every timing taken on a shared machine."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def synthetic_data(image_shape, num_classes, batch_size, steps, seed=0):
    """`steps` batches of random images in [-1, 1] and labels, as in-memory arrays."""
    import numpy as np

    rng = np.random.default_rng(seed)
    count = batch_size * steps
    images = rng.uniform(-1, 1, (count, *image_shape)).astype("float32")
    labels = rng.integers(0, num_classes or 1, count).astype("int32")
    return images, labels


def synchronize(model):
    """Wait for the device: read back one weight (JAX and torch dispatch asynchronously)."""
    from keras import ops

    ops.convert_to_numpy(model.trainable_variables[0].value)


def fit_runner(model, images, labels, batch_size, **fit_kwargs):
    """A function that runs one `fit` epoch over the arrays (or a stream), then syncs."""

    def run():
        if fit_kwargs.get("steps_per_epoch"):
            model.fit(images, epochs=1, verbose=0, **fit_kwargs)
        else:
            model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0,
                      shuffle=False, **fit_kwargs)
        synchronize(model)

    return run


def tf_data_stream(images, labels, batch_size, seed=0):
    """A shuffled, batched, prefetched `tf.data.Dataset` over the arrays, repeated."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(images), seed=seed).repeat()
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def pipeline_runs(model, images, labels, batch_size, steps):
    """`fit` runs of `steps` steps fed by the real input pipelines instead of arrays:
    `keras_mm.datasets.infinite_batches` (shuffled numpy batches from a generator, as the
    CLI and examples feed `fit`) and a shuffled `tf.data` pipeline with prefetch. One
    stream per run, consumed across its rounds as in a long `fit`."""
    from keras_mm.datasets import infinite_batches

    stream = infinite_batches(images, labels, batch_size=batch_size)
    dataset = tf_data_stream(images, labels, batch_size)
    return {
        "infinite_batches": fit_runner(model, stream, None, batch_size, steps_per_epoch=steps),
        "tf.data prefetch": fit_runner(model, dataset, None, batch_size, steps_per_epoch=steps),
    }


def interleaved_ms(runs, steps, rounds, warmup=1):
    """ms per step of each `name -> run()` (each run is `steps` steps), interleaved.

    Every run is first called `warmup` times (compilation, caches), then `rounds` rounds
    call each run in turn, so that a load change on a shared machine hits all of them alike
    and no run is "first in the process".

    Returns:
        `name -> [ms per step in each round]`.
    """
    for name, run in runs.items():
        start = time.perf_counter()
        for _ in range(warmup):
            run()
        # Progress on stderr: compilation dominates the first calls on a big network.
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr,
              flush=True)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - start) / steps)
    return times


def median_and_ratio(times, name, base):
    """The median ms of `name`, and the median over rounds of its ratio to `base`."""
    ratios = [a / b for a, b in zip(times[name], times[base])]
    return statistics.median(times[name]), statistics.median(ratios)


def device_peak_mb():
    """Peak device memory of this process in MB (accelerators), or peak RSS on a CPU."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            stats = device.memory_stats() if device.platform != "cpu" else None
            if stats and "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"] / 2**20, device.platform
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_physical_devices("GPU"):
                return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, "gpu"
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated() / 2**20, "cuda"
    except (RuntimeError, ValueError, KeyError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu RSS"


def time_fit_steps(model, data, steps, warmup=3):
    """ms per `fit` step after `warmup` compiled steps (one model, not interleaved)."""
    import numpy as np

    images, labels = data
    batch = len(images)
    x = np.concatenate([images] * (steps + warmup))
    y = np.concatenate([labels] * (steps + warmup))
    model.fit(x[: batch * warmup], y[: batch * warmup], batch_size=batch, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x[: batch * steps], y[: batch * steps], batch_size=batch, epochs=1, verbose=0)
    return 1000 * (time.perf_counter() - start) / steps
