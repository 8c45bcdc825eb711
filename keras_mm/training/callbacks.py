"""The standard callbacks of a training run, built from its config.

`standard_callbacks` gives, in order, the run's own callbacks (FID), sample grids, the CSV
and TensorBoard logs and the checkpoint (`keras_mm.training.checkpoint.RunCheckpoint`:
atomic, the previous one kept, non-finite weights refused), so that the checkpoint holds
what they saw. `fid_callbacks` keeps the best weights by FID (FIDCallback's own record).

    callbacks = standard_callbacks("runs/teacher", "teacher", config, steps_per_epoch=100,
                                   sample_every=500, num_steps=256)
"""

import importlib.util
import math
import os

import keras

from keras_mm.configs import ConfigError
from keras_mm.training.checkpoint import RunCheckpoint
from keras_mm.training.run_dir import BACKUP_DIR, in_checkpoints

BEST_WEIGHTS = "best_fid.weights.h5"  # FIDCallback records its best beside: best_fid.best.json


class StepNamedPath(str):
    """A `SampleGridCallback` path whose `{step}` is filled in from the epoch number.

    The callback formats its path with `epoch=`; here an epoch is `steps_per_epoch` steps,
    and grids named by training step read better.
    """

    def __new__(cls, template, steps_per_epoch):
        path = super().__new__(cls, template)
        path.steps_per_epoch = steps_per_epoch
        return path

    def format(self, epoch):
        return str.format(self, step=epoch * self.steps_per_epoch)


def standard_callbacks(run_dir, name, config, steps_per_epoch, sample_every, resume_from=0,
                       num_steps=None, captions=None, model_callbacks=(),
                       divergence_hint=None):
    """The run's callbacks, in order: `model_callbacks` (FID), sample grids every
    `sample_every` steps (0: none), CSV and TensorBoard logs, then the checkpoint.

    Args:
        run_dir: the run directory.
        name: the config section ("teacher" or "distill"), for grid names and errors.
        config: the run's config.
        steps_per_epoch: steps per checkpoint.
        sample_every: steps between sample grids.
        resume_from: the checkpoint (epoch) the run resumes from, 0 for a fresh start (the
            CSV log is appended to when resuming).
        num_steps: sampling steps of the grids (None: the model's default).
        captions: a `CaptionData` for text-to-image configs.
        model_callbacks: callbacks that run first.
        divergence_hint: what a diverged run's message suggests (see `RunCheckpoint`).

    The checkpoint callback is the last one, `callbacks[-1]`.
    """
    from keras_mm.callbacks import SampleGridCallback

    callbacks = list(model_callbacks)
    every = in_checkpoints(sample_every, steps_per_epoch, f"{name}.sample_every")
    if every:
        grid = config["grid"]
        path = StepNamedPath(os.path.join(run_dir, "samples", f"{name}_{{step:07d}}.png"),
                             steps_per_epoch)
        callbacks.append(SampleGridCallback(
            path, every_n_epochs=every, num_samples=grid["num_samples"],
            seed=config["eval"]["seed"], labels=config["data"]["num_classes"],
            condition=(captions.eval_condition(grid["num_samples"])
                       if captions is not None else None),
            num_steps=num_steps, num_columns=grid["num_columns"],
            scale=max(1, 64 // config["data"]["image_shape"][0]),
        ))
    callbacks.append(keras.callbacks.CSVLogger(os.path.join(run_dir, "log.csv"),
                                               append=bool(resume_from)))
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"),
                                                     write_graph=False))
    callbacks.append(RunCheckpoint(os.path.join(run_dir, BACKUP_DIR), steps_per_epoch,
                                   divergence_hint=divergence_hint, resume_from=resume_from))
    return callbacks


def tensorboard_available():
    """Keras's TensorBoard callback writes through tf.summary, which needs both packages."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("tensorflow", "tensorboard"))


def feature_extractor(config, classifier_head=False):
    """The feature extractor of eval.feature_extractor."""
    from keras_mm.metrics import FIDInceptionFeatures, InceptionFeatures, get_feature_extractor

    evaluation = config["eval"]
    name = evaluation["feature_extractor"]
    batch_size = min(64, evaluation["batch_size"])
    if name == "fid_inception":
        try:
            return FIDInceptionFeatures(weights=evaluation["fid_inception_weights"],
                                        batch_size=batch_size)
        except (FileNotFoundError, ValueError) as error:  # one line naming the fix
            raise ConfigError(f"eval.fid_inception_weights: {error}") from None
    if name != "inception_v3":
        options = {"image_shape": config["data"]["image_shape"]} if name == "color_layout" else {}
        try:
            return get_feature_extractor(name, **options)
        except ValueError as error:
            raise ConfigError(f"eval.feature_extractor: {error}") from None
    weights = evaluation["inception_weights"]
    try:
        return InceptionFeatures(weights=weights, classifier_head=classifier_head,
                                 batch_size=batch_size)
    except Exception as error:  # noqa: BLE001 - keras.utils.get_file raises bare Exception
        raise ConfigError(
            f"Could not build Inception-v3 with weights={weights!r} ({error}). Keras downloads "
            "the ImageNet weights on first use; without internet, pass a local weights file "
            "with --set eval.inception_weights='\"/path/to/weights.h5\"'."
        ) from None


def fid_callbacks(config, run_dir, every_n_epochs, verbose=1, captions=None):
    """`FIDCallback` every `every_n_epochs` checkpoints, keeping the best weights in
    RUN_DIR/best_fid.weights.h5 (its record beside them is read back on resume), and a
    callback giving the CSV log its `fid` column from the first row."""
    from keras_mm.callbacks import FIDCallback
    from keras_mm.metrics import FeatureStatistics
    from keras_mm.training.data import reference_images

    evaluation = config["eval"]
    extractor = feature_extractor(config)
    # The reference statistics are computed once per run directory (50k Inception passes).
    stats_path = os.path.join(run_dir, f"reference_{extractor.name}.npz")
    if not os.path.exists(stats_path):
        print(f"Computing the FID reference statistics ({extractor.name}).")
        FeatureStatistics.from_images(reference_images(config, captions),
                                      extractor).save(stats_path)
    fid = FIDCallback(
        reference_stats=stats_path,
        num_samples=evaluation["num_samples"],
        every_n_epochs=every_n_epochs,
        seed=evaluation["seed"],
        labels=config["data"]["num_classes"],
        condition=(captions.eval_condition(evaluation["num_samples"])
                   if captions is not None else None),
        feature_extractor=extractor,
        save_best_to=os.path.join(run_dir, BEST_WEIGHTS),
        batch_size=evaluation["batch_size"],
        guidance_scale=evaluation["guidance_scale"],
        verbose=int(verbose > 0),
    )

    def fid_column(epoch, logs):
        # CSVLogger fixes its columns at the first row: `fid` gets one from the first row,
        # and NaN on rows without an evaluation (FIDCallback's logs repeat the last value).
        if logs is not None and (epoch + 1) % every_n_epochs:
            logs["fid"] = math.nan

    return [fid, keras.callbacks.LambdaCallback(on_epoch_end=fid_column)]
