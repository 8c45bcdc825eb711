"""`make demo`'s job at toy size: every stage runs and writes its table and grids."""

import math
import os
import re

import pytest

from keras_mm import demo


# One backend: the demo's own code (stages, table, grids) is the same on every backend, and
# the training, sampling and FD it calls are tested on all three by the library's tests. It
# runs under tensorflow, the backend `make demo` uses (DEMO_BACKEND in the Makefile).
@pytest.mark.one_backend("tensorflow")
def test_demo_writes_results_and_grids(tmp_path):
    rows = demo.main(["--out", str(tmp_path), "--teacher-epochs", "1", "--distill-steps", "4",
                      "--eval-every", "2", "--num-samples", "20"])
    assert [(name, steps) for name, steps, _, _ in rows] == [
        ("teacher", 8), ("teacher", 64), ("teacher", 256), ("student (instant)", 8)]
    for _, _, result, grid in rows:
        assert math.isfinite(result["fd"]) and result["fd"] > 0
        assert 0.0 <= result["accuracy"] <= 1.0
        assert os.path.getsize(tmp_path / grid) > 0
    table = (tmp_path / "results.md").read_text()
    numbers = re.findall(r"^\| (teacher|student \(instant\)) \| (\d+) \| ([\d.]+) \|",
                         table, flags=re.MULTILINE)
    assert [(name, int(steps)) for name, steps, _ in numbers] == [
        (name, steps) for name, steps, _, _ in rows]
    assert [float(fd) for _, _, fd in numbers] == pytest.approx(
        [r["fd"] for _, _, r, _ in rows], abs=1e-3)
    assert (tmp_path / "student_best.weights.h5").exists()
    curve = re.findall(r"(\d+): ([\d.]+)", table.split("(500 samples, step: FD):")[1])
    assert [int(step) for step, _ in curve] == [2, 4]  # an FD every --eval-every steps
