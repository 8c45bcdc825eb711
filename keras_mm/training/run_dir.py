"""A training run's directory and plan: start, refuse another config's checkpoint, resume.

A run trains in checkpoints of `checkpoint_every` steps (a Keras "epoch" each); after each
one `keras_mm.training.checkpoint.RunCheckpoint` saves RUN_DIR/backup (atomically, the
previous checkpoint kept), so calling the same run again resumes it. RUN_DIR/config.json
holds the config the run was started with. A run is finished when its artifacts exist and
its checkpoints are gone: the artifacts are written (atomically) before the checkpoints are
removed, so a run killed in between resumes at its last step and writes them again.

    steps_per_epoch, epochs = training_plan(config["teacher"], "teacher")
    resumed_epoch = prepare_run_dir("runs/teacher", ["teacher.keras"], config)
"""

import glob
import json
import os
import shutil

from keras_mm.configs import ConfigError, get_config
from keras_mm.training import checkpoint

CONFIG_FILE = "config.json"
BACKUP_DIR = "backup"
# What every run writes besides its artifacts (see `keras_mm.training.callbacks`), and the
# FID reference statistics, which depend on the config. The caption-embedding cache stays:
# it is keyed by caption and encoder.
# What a resumed run may change: the cure of a divergence. The model, data and plan may not.
RESUMABLE_CHANGES = ("teacher.learning_rate", "distill.learning_rate",
                     "distill.teacher_guidance_scale")
RUN_FILES = (CONFIG_FILE, "log.csv", "tensorboard", "samples", BACKUP_DIR, "reference_*.npz",
             checkpoint.TEMPORARY_PREFIX + "*")


def training_plan(section, name):
    """`(steps_per_epoch, epochs)` of a config section with `steps` and `checkpoint_every`
    (`name`: the section's name, for errors)."""
    steps = section["steps"]
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"{name}.steps must be an integer >= 1; got {steps!r}.")
    every = min(section["checkpoint_every"], steps)
    if every < 1 or steps % every:
        raise ConfigError(
            f"{name}.steps ({steps}) must be a multiple of {name}.checkpoint_every "
            f"({section['checkpoint_every']}): training runs in checkpoints of that many steps."
        )
    return every, steps // every


def in_checkpoints(value, steps_per_epoch, key):
    """`value` steps as a whole number of checkpoints (None for 0: disabled)."""
    if not value:
        return None
    if value % steps_per_epoch:
        raise ConfigError(
            f"{key} ({value}) must be a multiple of the checkpoint interval "
            f"({steps_per_epoch} steps), or 0 to disable it."
        )
    return value // steps_per_epoch


def clear_run_dir(run_dir, artifacts):
    """Delete everything a run wrote in `run_dir`: its `artifacts` (names or glob patterns)
    and `RUN_FILES`. Other files are left alone."""
    for pattern in (*artifacts, *RUN_FILES):
        for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def prepare_run_dir(run_dir, artifacts, config, overwrite=False, outputs=()):
    """Create `run_dir`, decide between resuming and starting, write config.json.

    Args:
        run_dir: the run directory.
        artifacts: names (or glob patterns) of the files the run writes besides
            `RUN_FILES`, e.g. `["teacher.keras"]`; a finished run is recognised by them.
        config: the run's config (a dict); an interrupted run resumes only with the same.
        overwrite: delete an earlier run's files first (`clear_run_dir`).
        outputs: other names (or glob patterns) the run writes, e.g. its best-FID weights
            and record; deleted with the artifacts. A fresh start deletes those of a run
            that ended before its first checkpoint, so nothing of it carries over.

    Returns:
        The epoch (checkpoint) to resume from, 0 for a fresh start.
    """
    if overwrite and os.path.isdir(run_dir):
        clear_run_dir(run_dir, [*artifacts, *outputs])
    config_path = os.path.join(run_dir, CONFIG_FILE)
    backup_dir = os.path.join(run_dir, BACKUP_DIR)
    remove_temporary_files(run_dir)
    if checkpoint.has_checkpoint(backup_dir):
        if check_same_config(run_dir, config):
            write_config(config_path, config)
        return checkpoint.resume_epoch(backup_dir)
    existing = [os.path.basename(path) for pattern in artifacts
                for path in glob.glob(os.path.join(glob.escape(run_dir), pattern))]
    if existing:
        raise ConfigError(
            f"{run_dir} already holds {', '.join(existing)} from a finished run. Pass "
            "--overwrite to replace them, or choose another --run-dir."
        )
    if os.path.isdir(run_dir):
        clear_run_dir(run_dir, outputs)
    os.makedirs(run_dir, exist_ok=True)
    write_config(config_path, config)
    return 0


def write_config(path, config):
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(config, f, indent=2)

    checkpoint.write_atomically(path, write)


def check_same_config(run_dir, config):
    """An interrupted run resumes only with the config it started with, but for
    `RESUMABLE_CHANGES` (said in one line). Returns whether the config changed."""
    try:
        saved = get_config(os.path.join(run_dir, CONFIG_FILE))  # with defaults added since
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{run_dir} holds an interrupted run whose {CONFIG_FILE} cannot be read ({error}). "
            "Pass --overwrite to start over.") from None
    changed = sorted(differences(saved, config))
    if set(changed) - set(RESUMABLE_CHANGES):
        raise ConfigError(
            f"{run_dir} holds an interrupted run with another config (changed: "
            f"{', '.join(changed)}). Resume with the same config (only "
            f"{', '.join(RESUMABLE_CHANGES)} may change), or pass --overwrite to start over."
        )
    for key in changed:
        section, name = key.split(".")
        print(f"Resuming with {key} changed from {saved[section][name]!r} to "
              f"{config[section][name]!r}.")
    return bool(changed)


def remove_temporary_files(run_dir):
    """Delete what killed writes left (`checkpoint.write_atomically`'s temporary files)."""
    for directory in (run_dir, os.path.join(run_dir, BACKUP_DIR)):
        pattern = os.path.join(glob.escape(directory), checkpoint.TEMPORARY_PREFIX + "*")
        for path in glob.glob(pattern):
            os.remove(path)


def differences(a, b, prefix=""):
    """The dotted keys whose values differ between the nested dicts `a` and `b`."""
    for key in set(a) | set(b):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            yield from differences(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            yield f"{prefix}{key}"
