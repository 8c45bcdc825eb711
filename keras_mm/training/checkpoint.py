"""Checkpoints that survive a kill at any moment, and refuse non-finite weights.

`RunCheckpoint` replaces `keras.callbacks.BackupAndRestore` for the runs of
`keras_mm.training`. After each Keras epoch (`checkpoint_every` steps) it writes, in
RUN_DIR/backup:

    ckpt-000003.weights.h5   every variable of the model: weights, optimizer state, the
                             SeedGenerator states (`keras_mm.backend.trainer`)
    ckpt-000003.json         {"epoch": 3, "weights_sha256": ...}: written last, it marks the
                             checkpoint complete and lets a resume detect a damaged file

Each file is written to `.tmp-NAME` in the same directory, flushed to disk (fsync) and renamed
into place (`os.replace`, atomic), so a kill leaves either the old file or the new one,
never half of one. The previous complete checkpoint is deleted only after the new one is
complete. A resume takes the newest checkpoint whose weights match their checksum and load,
and says so when it falls back to an older one. Before writing, the weights are checked:
non-finite weights (or a non-finite loss) stop the run with `DivergenceError` instead of
overwriting the last good checkpoint.

    checkpoint = RunCheckpoint("runs/teacher/backup", steps_per_epoch=100)
    teacher.fit(stream, epochs=10, steps_per_epoch=100, callbacks=[checkpoint])
"""

import glob
import hashlib
import json
import math
import os
import re

import keras
import numpy as np

from keras_mm.configs import ConfigError
from keras_mm.training import faults

TEMPORARY_PREFIX = ".tmp-"
KEEP = 2  # the newest complete checkpoint and the one before it
_NAME = re.compile(r"ckpt-(\d+)\.json$")


class DivergenceError(ConfigError):
    """Training produced a non-finite loss or non-finite weights (one line, with the cause)."""


def write_atomically(path, write, fault_name=None):
    """Write `path` through `write(temporary_path)`, then fsync and rename it into place.

    The temporary file is `.tmp-NAME` beside `path` (it keeps the suffix that Keras's
    savers check). A kill at any moment leaves the old `path` (or none) or the complete new
    one, and perhaps a stale temporary file, which the next write replaces. `fault_name`
    names the write for `keras_mm.training.faults` (a test's kill inside it)."""
    temporary = temporary_path(path)
    write(temporary)
    if fault_name is not None:
        faults.maybe_kill(fault_name, temporary)
    with open(temporary, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def temporary_path(path):
    """Where `write_atomically` writes `path` before renaming it."""
    directory, name = os.path.split(path)
    return os.path.join(directory, TEMPORARY_PREFIX + name)


def fsync_directory(directory):
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_path(backup_dir, epoch):
    return os.path.join(backup_dir, f"ckpt-{epoch:06d}.weights.h5")


def record_path(backup_dir, epoch):
    return os.path.join(backup_dir, f"ckpt-{epoch:06d}.json")


def complete_checkpoints(backup_dir, report=print):
    """The epochs of the complete, undamaged checkpoints in `backup_dir`, newest first.

    A checkpoint is complete when its record parses and its weights file matches the
    record's checksum; a damaged one is reported (`report`, one line) and skipped."""
    good = []
    for epoch in recorded_epochs(backup_dir):
        problem = checkpoint_problem(backup_dir, epoch)
        if problem is None:
            good.append(epoch)
        else:
            report(f"Checkpoint {os.path.basename(record_path(backup_dir, epoch))} is "
                   f"damaged ({problem}); trying the one before it.")
    return good


def recorded_epochs(backup_dir):
    """The epochs of the checkpoint records in `backup_dir`, newest first (unchecked)."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(backup_dir), "ckpt-*.json")):
        match = _NAME.search(os.path.basename(path))
        if match:
            found.append(int(match.group(1)))
    return sorted(found, reverse=True)


def checkpoint_problem(backup_dir, epoch):
    """Why the checkpoint of `epoch` cannot be used, or None."""
    try:
        with open(record_path(backup_dir, epoch)) as file:
            record = json.load(file)
        expected = record["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable record: {error}"
    path = weights_path(backup_dir, epoch)
    if not os.path.exists(path):
        return "its weights file is missing"
    if sha256(path) != expected:
        return "its weights file does not match its checksum"
    return None


def has_checkpoint(backup_dir):
    """Whether `backup_dir` holds anything of an interrupted run (even a damaged one)."""
    return os.path.isdir(backup_dir) and any(
        name.endswith((".json", ".h5")) and not name.startswith(TEMPORARY_PREFIX)
        for name in os.listdir(backup_dir))


def resume_epoch(backup_dir, report=print):
    """The epoch a run in `backup_dir` resumes from: the newest complete checkpoint's, 0
    for none."""
    epochs = complete_checkpoints(backup_dir, report)
    return epochs[0] if epochs else 0


def non_finite_variables(model):
    """The paths of the model's variables holding NaN or infinity."""
    bad = []
    for variable in model.variables:
        value = keras.ops.convert_to_numpy(variable.value)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            bad.append(variable.path)
    return bad


class RunCheckpoint(keras.callbacks.Callback):
    """Atomic, checksummed checkpoints every epoch, the previous one kept; restores the
    newest good one at the start of `fit`; refuses non-finite weights.

    Args:
        backup_dir: the directory of the checkpoints (created).
        steps_per_epoch: optimizer steps per epoch, to name steps in messages.
        divergence_hint: what to suggest when training diverges, e.g. "lower
            teacher.learning_rate (now 1e+12)".
        resume_from: the epoch whose checkpoint to restore (0: none), as chosen before the
            data stream was positioned (`keras_mm.training.prepare_run_dir`); None: the
            newest that loads.

    Attributes:
        restored_epoch: the epoch restored by `on_train_begin` (0: none).

    Call `remove()` once the run's final artifacts are written: until then the checkpoint
    is what a rerun resumes from (it is not removed at the end of `fit`).
    """

    def __init__(self, backup_dir, steps_per_epoch=1, divergence_hint=None, resume_from=None):
        super().__init__()
        self.backup_dir = backup_dir
        self.steps_per_epoch = steps_per_epoch
        self.divergence_hint = divergence_hint
        self.resume_from = resume_from
        self.restored_epoch = 0
        self._last_saved_epoch = 0
        self._epoch = 0

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError("RunCheckpoint needs a built model: call it on a batch first.")
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        if self.resume_from is None:
            candidates = complete_checkpoints(self.backup_dir)
        else:
            candidates = [self.resume_from] if self.resume_from else []
        for epoch in candidates:
            path = weights_path(self.backup_dir, epoch)
            try:
                self.model.load_weights(path)
            except Exception as error:  # noqa: BLE001 - h5py and Keras raise many kinds
                if self.resume_from is not None:
                    raise ConfigError(
                        f"The checkpoint {path} does not load ({type(error).__name__}: "
                        f"{error}). Delete it to resume from the one before it, or pass "
                        "--overwrite to start over.") from None
                print(f"Checkpoint {os.path.basename(path)} does not load "
                      f"({type(error).__name__}: {error}); trying the one before it.")
                continue
            self.restored_epoch = self._last_saved_epoch = epoch
            self.model._initial_epoch = epoch
            return

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        faults.maybe_kill("step")  # a kill test's moment in training (unset: a dict lookup)
        # `loss` for a teacher; `generator_loss`, `auxiliary_loss`, `instant_loss` for a
        # distiller (each a running mean, non-finite from the bad step on).
        for name, value in (logs or {}).items():
            if name.endswith("loss") and not math.isfinite(float(value)):
                self._diverged(f"{name} is {float(value)}", first_batch=batch == 0)

    def on_epoch_end(self, epoch, logs=None):
        bad = non_finite_variables(self.model)
        if bad:
            self._diverged(f"{len(bad)} variables are not finite, e.g. {bad[0]}")
        self.save(epoch + 1)

    def _diverged(self, what, first_batch=False):
        step = _optimizer_step(self.model)
        dropped = ""
        if first_batch and self._last_saved_epoch == self._epoch and self._epoch:
            # The epoch's first loss was computed on the weights of the newest checkpoint:
            # finite but exploded, they are no checkpoint to resume from.
            for path in (record_path(self.backup_dir, self._epoch),
                         weights_path(self.backup_dir, self._epoch)):
                if os.path.exists(path):
                    os.remove(path)
            dropped = (f"the checkpoint of step {self._epoch * self.steps_per_epoch} gave it "
                       "and is removed; ")
        kept = recorded_epochs(self.backup_dir) if os.path.isdir(self.backup_dir) else []
        kept_text = (f"the last good checkpoint (step {kept[0] * self.steps_per_epoch}) stays "
                     f"in {self.backup_dir}" if kept else "no good checkpoint was written")
        hint = self.divergence_hint or "lower the learning rate"
        rerun = "rerun to resume from it (--overwrite to start over)" if kept else "rerun"
        raise DivergenceError(
            f"Training diverged at step {step}: {what}; {dropped}{kept_text}. Likely cause: "
            f"a learning rate or guidance scale too large: {hint}, and {rerun}."
        )

    def save(self, epoch):
        """Write the checkpoint of `epoch`, then delete all but the newest `KEEP`."""
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = weights_path(self.backup_dir, epoch)
        write_atomically(weights, lambda path: self.model.save_weights(path, overwrite=True),
                         fault_name="checkpoint")
        record = {"epoch": epoch, "step": epoch * self.steps_per_epoch,
                  "weights_sha256": sha256(weights)}
        write_atomically(record_path(self.backup_dir, epoch),
                         lambda path: _write_json(path, record), fault_name="checkpoint_record")
        self._last_saved_epoch = epoch
        for old in recorded_epochs(self.backup_dir)[KEEP:]:
            for path in (record_path(self.backup_dir, old), weights_path(self.backup_dir, old)):
                if os.path.exists(path):
                    os.remove(path)

    def remove(self):
        """Delete the checkpoints (once the run's final artifacts are safely written)."""
        import shutil

        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _write_json(path, value):
    with open(path, "w") as file:
        json.dump(value, file)


def _optimizer_step(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return "?"
    return int(keras.ops.convert_to_numpy(optimizer.iterations))
