"""Shared helpers for the benchmark scripts: run once per backend, time compiled steps."""

import os
import subprocess
import sys
import time

BACKENDS = ("jax", "tensorflow", "torch")


def run_per_backend(script, args=()):
    """Re-run `script` under each backend in a subprocess; return their stdout lines."""
    lines = []
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run([sys.executable, script, "--single", *args], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            lines.append(f"| {backend} | failed: {out.stderr.strip().splitlines()[-1]} |")
        else:
            lines.extend(line for line in out.stdout.splitlines() if line.startswith("|"))
    return lines


def time_fit_steps(model, data, steps, warmup=3):
    """Median-free simple timing: ms per `fit` step after `warmup` compiled steps."""
    import numpy as np

    images, labels = data
    batch = len(images)
    x = np.concatenate([images] * (steps + warmup))
    y = np.concatenate([labels] * (steps + warmup))
    model.fit(x[: batch * warmup], y[: batch * warmup], batch_size=batch, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x[: batch * steps], y[: batch * steps], batch_size=batch, epochs=1, verbose=0)
    return 1000 * (time.perf_counter() - start) / steps
