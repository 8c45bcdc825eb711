"""Nothing lost: `keras-mm train-teacher` and `distill` killed (SIGKILL) at random moments and
inside their writes, two commands on one run directory, a diverging run, a damaged checkpoint.

The commands run as forked children of the test process (`main(argv)` after `os.fork()`), so
that each of the ~50 runs costs its training, not a new interpreter's imports; a kill is a
real SIGKILL of the child, from the parent at a random moment or from the child itself at a
named point (`KERAS_MM_FAULT`, `keras_mm.training.faults`). The subject does not depend on
the test process's backend, so the kill tests run in the torch pass only.
"""

import json
import os
import pathlib
import random
import signal
import sys
import time
import traceback

import keras
import numpy as np
import pytest

from keras_mm.cli import main
from keras_mm.training import checkpoint, faults
from tests.helpers import read_csv

TINY = [
    "--config", "digits",
    "--set", "model.uvit_preset=uvit_tiny",
    "--set", "eval.teacher_num_steps=4",
    "--set", "eval.num_samples=20",
    "--set", "eval.batch_size=20",
    "--set", "grid.num_samples=20",
    "--checkpoint-every", "1", "--batch-size", "16", "--verbose", "0",
]  # fmt: skip
TEACHER_STEPS = 10  # one checkpoint per step
DISTILL_STEPS = 8
KILLS = 20


def teacher_command(run_dir, *extra):
    return ["train-teacher", *TINY, "--steps", str(TEACHER_STEPS),
            "--set", "teacher.sample_every=0", "--run-dir", str(run_dir), *extra]


def distill_command(run_dir, teacher_path, *extra):
    return ["distill", *TINY, "--steps", str(DISTILL_STEPS), "--teacher", str(teacher_path),
            "--num-steps", "2", "--set", "distill.warmup_steps=1",
            "--set", "distill.sample_every=0", "--set", "distill.fid_every=4",
            "--run-dir", str(run_dir), *extra]


def start_child(argv, log_path, fault=None):
    """Fork a child that runs `main(argv)` with its output appended to `log_path`."""
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open until os._exit
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        os.environ.pop(faults.ENV, None)
        if fault:
            os.environ[faults.ENV] = fault
        print(f"--- {' '.join(argv[:1])} fault={fault}")
        code = main(argv)
    except BaseException:  # noqa: BLE001 - the child reports everything and exits
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def wait(pid, kill_after=None):
    """The child's exit code (-9 when killed); with `kill_after` seconds, SIGKILL it then."""
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run(argv, log_path, fault=None, kill_after=None):
    return wait(start_child(argv, log_path, fault), kill_after)


def variables_of(path):
    """Every variable of a saved model, its optimizers' included: `[(path, value)]`."""
    model = keras.saving.load_model(path)
    variables = list(model.variables)
    for optimizer in {id(o): o for o in vars(model).values()
                      if isinstance(o, keras.optimizers.Optimizer)}.values():
        variables += optimizer.variables
    return [(v.path, keras.ops.convert_to_numpy(v.value)) for v in variables]


def assert_identical(path, reference):
    got, expected = variables_of(path), variables_of(reference)
    assert len(got) == len(expected) and len(got) > 10
    different = [name for (name, a), (_, b) in zip(got, expected) if not np.array_equal(a, b)]
    assert not different, f"{len(different)} variables differ, e.g. {different[:3]}"


def kill_points(rng, final_points):
    """20 kills over one run's life: first at random moments (two at a random time in
    start-up, three after a random training step), then inside checkpoint writes, mixed, then inside
    the final saves and before the cleanup. A write kill is "NAME:N" or "NAME:N:half" (the
    temporary file cut to half, as a kill mid-write leaves it), see `faults`."""
    inside = [f"{name}{half}" for name in ("checkpoint", "checkpoint_record")
              for half in ("", ":half")] * 3
    rng.shuffle(inside)
    randoms = KILLS - len(inside) - len(final_points)
    return [None] * randoms + inside + list(final_points)


def write_kill(point, run_dir, total_epochs):
    """`point` ("checkpoint:half") as a fault spec: the second write of the process when two
    epochs are left (so that the run gains a checkpoint), else the first."""
    resumed = checkpoint.resume_epoch(os.path.join(run_dir, "backup"), report=lambda line: None)
    name, *half = point.split(":")
    assert resumed < total_epochs, "the run finished before its write kills; lower KILLS"
    return ":".join([name, "2" if resumed + 2 <= total_epochs else "1", *half])


def kill_and_resume(command, run_dir, total_epochs, final_points, artifact, reference, seed,
                    log_path):
    """Kill `command` KILLS times (`kill_points`), rerunning it after each, then let it
    finish; its `artifact` must equal `reference` bit for bit."""
    rng = random.Random(seed)
    output = pathlib.Path(log_path)
    for index, point in enumerate(kill_points(rng, final_points)):
        if point is None and index < 2:  # a moment in start-up: a run takes seconds
            code = run(command, log_path, kill_after=rng.uniform(0.05, 0.4))
        elif point is None:  # a moment in training: after step 1 or 2 of this process
            # (a wall-clock moment could land after the end on a fast machine)
            code = run(command, log_path, fault=f"step:{rng.randint(1, 2)}")
        else:
            if not point.startswith(("final", "cleanup")):
                point = write_kill(point, run_dir, total_epochs)
            code = run(command, log_path, fault=point)
        assert code == -signal.SIGKILL, f"kill {point}: exit {code}\n{output.read_text()}"
    assert run(command, log_path) == 0, output.read_text()
    assert_identical(os.path.join(run_dir, artifact), reference)
    assert not os.path.exists(os.path.join(run_dir, "backup"))
    assert not [name for name in os.listdir(run_dir) if name.startswith(".tmp-")]
    return output.read_text()


@pytest.fixture(scope="module")
def teacher_reference(tmp_path_factory):
    """An uninterrupted teacher run (forked like the others)."""
    import tensorflow  # noqa: F401 - imported once here, not in every child (TensorBoard)

    root = tmp_path_factory.mktemp("reference")
    log = root / "log.txt"
    assert run(teacher_command(root / "teacher"), log) == 0, log.read_text()
    return root / "teacher" / "teacher.keras", log


@pytest.mark.one_backend("torch")
def test_train_teacher_killed_20_times_ends_bit_identical(teacher_reference, tmp_path):
    reference, _ = teacher_reference
    run_dir = tmp_path / "teacher"
    output = kill_and_resume(teacher_command(run_dir), run_dir, TEACHER_STEPS,
                             ["final:1:half", "final:1", "cleanup:1"], "teacher.keras",
                             reference, seed=1, log_path=tmp_path / "log.txt")
    assert "Resuming from the checkpoint at step" in output
    assert "Traceback" not in output


@pytest.mark.one_backend("torch")
def test_distill_killed_20_times_ends_bit_identical(teacher_reference, tmp_path):
    teacher, _ = teacher_reference
    log = tmp_path / "log.txt"
    reference_dir = tmp_path / "reference"
    assert run(distill_command(reference_dir, teacher), log) == 0, log.read_text()
    run_dir = tmp_path / "student"
    output = kill_and_resume(distill_command(run_dir, teacher), run_dir, DISTILL_STEPS,
                             ["final:1:half", "final:2:half", "cleanup:1"], "generator.keras",
                             reference_dir / "generator.keras", seed=2, log_path=log)
    assert "Traceback" not in output
    assert_identical(run_dir / "distiller.keras", reference_dir / "distiller.keras")
    for name in ("best_fid.best.json",):
        assert json.loads((run_dir / name).read_text()) == json.loads(
            (reference_dir / name).read_text())
    # The FID of every 4th step, whatever the kills: a row's fid is NaN between evaluations.
    rows = {int(row["epoch"]): row["fid"] for row in read_csv(run_dir / "log.csv")}
    expected = {int(row["epoch"]): row["fid"] for row in read_csv(reference_dir / "log.csv")}
    assert rows == expected
    assert [epoch for epoch, fid in sorted(expected.items()) if fid != "nan"] == [3, 7]


@pytest.mark.one_backend("torch")
def test_two_commands_on_one_run_directory_one_is_refused(teacher_reference, tmp_path):
    reference, _ = teacher_reference
    run_dir, log = tmp_path / "teacher", tmp_path / "log.txt"
    first = start_child(teacher_command(run_dir), log)
    lock = run_dir / ".lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip() == str(first)):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    second_log = tmp_path / "second.txt"
    assert run(teacher_command(run_dir), second_log) == 2
    errors = [line for line in second_log.read_text().splitlines() if line.startswith("keras-mm ")]
    assert errors == [(f"keras-mm train-teacher: error: {run_dir} is in use by another "
                       f"keras-mm command (process {first}). Wait for it to finish or stop "
                       "it, or choose another --run-dir.")]
    assert wait(first) == 0, log.read_text()
    assert_identical(run_dir / "teacher.keras", reference)  # undisturbed by the second


@pytest.mark.one_backend("torch")
def test_a_diverging_run_stops_and_its_last_good_checkpoint_resumes(teacher_reference,
                                                                     tmp_path):
    reference, _ = teacher_reference
    run_dir, log = tmp_path / "teacher", tmp_path / "log.txt"
    # Three good steps, killed in the 4th checkpoint write; then resumed at learning rate
    # 1e30 (a resume may change it): step 4 leaves finite but exploded weights, which
    # checkpoint 4 holds; step 5's loss on them is NaN.
    assert run(teacher_command(run_dir), log, fault="checkpoint:4") == -signal.SIGKILL
    assert run(teacher_command(run_dir, "--learning-rate", "1e30"), log) == 2
    errors = [line for line in log.read_text().splitlines() if line.startswith("keras-mm ")]
    assert errors == [(
        "keras-mm train-teacher: error: Training diverged at step 5: loss is nan; the "
        "checkpoint of step 4 gave it and is removed; the last good checkpoint (step 3) "
        f"stays in {run_dir / 'backup'}. Likely cause: a learning rate or guidance scale too "
        "large: lower teacher.learning_rate (now 1e+30), and rerun to resume from it "
        "(--overwrite to start over).")]
    assert not (run_dir / "teacher.keras").exists()
    assert checkpoint.complete_checkpoints(str(run_dir / "backup")) == [3]
    # Rerun with the learning rate that works: it resumes from step 3 and ends where the
    # uninterrupted run ends.
    assert run(teacher_command(run_dir), log) == 0, log.read_text()
    output = log.read_text()
    assert "Resuming with teacher.learning_rate changed from 1e+30 to 0.001." in output
    assert output.count("Resuming from the checkpoint at step 3.") == 2
    assert_identical(run_dir / "teacher.keras", reference)
    # A distillation diverging at its first step names the guidance scale, writes nothing.
    student_dir = tmp_path / "student"
    command = distill_command(student_dir, reference,
                              "--set", "distill.teacher_guidance_scale=1e38",
                              "--set", "distill.fid_every=0")
    assert run(command, log) == 2
    assert ("error: Training diverged at step 1: auxiliary_loss is inf; no good checkpoint "
            "was written. Likely cause: a learning rate or guidance scale too large: lower "
            "distill.learning_rate (now 0.0003) or distill.teacher_guidance_scale (now "
            "1e+38), and rerun.") in log.read_text()
    assert not [name for name in os.listdir(student_dir) if name.endswith(".keras")]


@pytest.mark.one_backend("torch")
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(teacher_reference,
                                                                  tmp_path):
    reference, _ = teacher_reference
    run_dir, log = tmp_path / "teacher", tmp_path / "log.txt"
    assert run(teacher_command(run_dir), log, fault="checkpoint:4") == -signal.SIGKILL
    backup = str(run_dir / "backup")
    assert checkpoint.complete_checkpoints(backup) == [3, 2]  # the previous one is kept
    with open(checkpoint.weights_path(backup, 3), "r+b") as file:  # a flipped byte
        file.seek(4000)
        byte = file.read(1)
        file.seek(4000)
        file.write(bytes([byte[0] ^ 0xFF]))
    assert run(teacher_command(run_dir), log) == 0, log.read_text()
    output = log.read_text()
    assert ("Checkpoint ckpt-000003.json is damaged (its weights file does not match its "
            "checksum); trying the one before it.") in output
    assert "Resuming from the checkpoint at step 2." in output
    assert_identical(run_dir / "teacher.keras", reference)


@pytest.mark.one_backend("torch")
def test_a_lock_is_exclusive_and_a_dead_holders_lock_is_taken_over(tmp_path):
    from keras_mm.training.lock import RunDirLockedError, RunLock

    (tmp_path / ".lock").write_text("999999999\n")  # left by a killed process
    with RunLock(str(tmp_path)):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunDirLockedError, match=f"in use .*process {os.getpid()}"):
            RunLock(str(tmp_path)).__enter__()
    with RunLock(str(tmp_path)):  # released on exit
        pass


@pytest.mark.one_backend("torch")
def test_infinite_batches_from_a_start_continue_the_stream():
    from keras_mm.datasets import infinite_batches

    images = np.arange(10, dtype="float32")[:, None, None, None]
    labels = np.arange(10)
    whole = infinite_batches(images, labels, batch_size=3, seed=5)
    batches = [next(whole) for _ in range(10)]  # 3 per pass: passes 0..3
    for start in (0, 1, 3, 7):
        resumed = infinite_batches(images, labels, batch_size=3, seed=5, start=start)
        for expected in batches[start:]:
            got = next(resumed)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])
    with pytest.raises(ValueError, match="start must be an integer >= 0"):
        next(infinite_batches(images, batch_size=3, start=-1))
