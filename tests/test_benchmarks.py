import os
import re
import subprocess
import sys

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_benchmark_smoke_runs_end_to_end():
    """`benchmarks/gpu.py --smoke` on this backend: every row measured, nothing failed."""
    backend = keras.backend.backend()
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1",
           # Smoke sizes: XLA's compile time, not the steps, is most of the run on a CPU.
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--smoke",
                          "--backends", backend, "--time-limit", "900"],
                         env=env, capture_output=True, text=True, timeout=960, check=False)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith(f"| {backend} |")]
    training, sampling = rows
    number = r"[0-9]+\.[0-9]+"
    # Teacher step ms, then each update's ms and ratio to it; the pipelines against arrays.
    assert re.search(rf"\| mixed_bfloat16 \| 4 \| {number} \| "
                     + r" \| ".join([rf"{number} \({number}x\)"] * 3)
                     + rf" \| {number}x / {number}x \| [0-9]+ \(cpu RSS\) \|$", training), training
    speeds = rf"\| 1: {number} \| 4: {number} \| [0-9]+ \(cpu RSS\) \|$"
    assert re.search(speeds, sampling), sampling
