import os
import re
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# One backend: the smoke checks the script's plumbing (a subprocess per backend and
# configuration, its RESULT line, the two tables), which is the same for every backend. The
# training steps it times under mixed_bfloat16 are tested on every backend, compiled as Keras
# compiles them by default, by tests/test_mixed_precision.py; the device-memory branches run
# on GPUs only (a CPU reports peak RSS on every backend). Not covered on a CPU any more: the
# steps under TensorFlow with jit_compile=True (XLA), which Keras uses on TensorFlow only
# with an accelerator; that smoke took 232 s of CI (torch: 13 s).
@pytest.mark.one_backend("torch")
def test_gpu_benchmark_smoke_runs_end_to_end():
    """`benchmarks/gpu.py --smoke` on this backend: every row measured, nothing failed."""
    backend = keras.backend.backend()
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--smoke",
                          "--backends", backend, "--time-limit", "900"],
                         env=env, capture_output=True, text=True, timeout=960, check=False)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith(f"| {backend} |")]
    training, sampling = rows
    number = r"[0-9]+\.[0-9]+"
    # Teacher step ms, then each update's ms and ratio to it, the no-grad forward's ms and
    # its fraction of the teacher step; the pipelines against arrays.
    assert re.search(rf"\| mixed_bfloat16 \| 4 \| {number} \| "
                     + r" \| ".join([rf"{number} \({number}x\)"] * 3)
                     + rf" \| {number} \({number}\) \| {number}x / {number}x"
                     + r" \| [0-9]+ \(cpu RSS\) \|$", training), training
    speeds = rf"\| 1: {number} \| 4: {number} \| [0-9]+ \(cpu RSS\) \|$"
    assert re.search(speeds, sampling), sampling
