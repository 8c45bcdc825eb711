"""Callbacks that measure and show sample quality during `fit`: `FIDCallback`, `SampleGridCallback`.

Both call the trained model's `sample(num_samples=None, labels=None, condition=None,
num_steps=..., seed=..., sampler=..., guidance_scale=...)` (a `DiffusionModel` teacher or a
`MomentMatchingDistiller` generator, or anything with that method) on the same seed and
labels or captions at every call, so that successive values and pictures differ only through
the weights. The sampling and scoring is `keras_mm.metrics.Evaluator`; these only schedule it.
"""

import inspect
import json
import math
import os
import threading
import time
import warnings

import keras
from keras import ops

from keras_mm.images import save_image_grid
from keras_mm.metrics.evaluation import (
    Evaluator,
    balanced_labels,
    check_can_sample,
    per_sample_condition,
    sample_batches,
)


def optimizer_iterations(model):
    """The model's optimizer step count (0 for a model without an optimizer)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return 0
    return int(ops.convert_to_numpy(optimizer.iterations))


class FIDCallback(keras.callbacks.Callback):
    """Fréchet distance of the model's samples to reference data, logged as `fid` during `fit`.

    Every `every_n_epochs` epochs (or `every_n_steps` steps) it runs an `Evaluator` (fixed
    seeds, hence noise, and fixed labels or captions, as the paper's protocol asks) and
    writes `fid` and the `extra_metrics` into the logs, so that `History`, `CSVLogger`,
    `TensorBoard`, `EarlyStopping(monitor="fid", mode="min")` and `ModelCheckpoint` see them
    when they come after this callback in the `callbacks` list (Keras cannot infer the
    direction of a logged value that is not a compiled metric, so pass `mode="min"`). With
    `every_n_steps`, the values go into the logs of the batch they were computed at, and
    each epoch's logs carry the latest ones.

    The best value is tracked (`best_fid`, `best_epoch`, `best_step`; steps are optimizer
    iterations, so they continue across a resume). With `save_best_to`, the weights that
    gave it are saved there and the record of when is ONE file beside them,
    `best_record_path` (`best.weights.h5` -> `best.best.json`: `best_fid`, `best_epoch`,
    `best_step`, `feature_extractor`, `num_samples`, `num_steps`). Which run the record
    belongs to is read from the optimizer at the first epoch (after `BackupAndRestore` has
    restored it, wherever it sits in the list):

    - a fresh run (optimizer iterations 0) deletes an earlier run's record and best weights,
      so it saves its own best even if the old run's FID was lower;
    - a resumed run (iterations > 0, e.g. restored by `keras.callbacks.BackupAndRestore`)
      starts from the recorded best when the record measured the same thing (feature
      extractor, `num_samples`, `num_steps`), so a worse evaluation after the restart does
      not overwrite the best weights.

    A plain `ModelCheckpoint(monitor="fid", mode="min", save_best_only=True)` after this
    callback also keeps the best weights of an uninterrupted run (keras-io's DDIM example
    does so with KID); it starts from +inf after a restart, which is why `save_best_to`
    exists.

    Args:
        reference_stats, reference_data, num_samples, num_steps, seed, labels, condition,
            feature_extractor, batch_size, sampler, guidance_scale, extra_metrics: the
            evaluation, as for `keras_mm.metrics.Evaluator` (the same defaults). Or give:
        evaluator: a `keras_mm.metrics.Evaluator` instead of those arguments.
        every_n_steps: evaluate every this many training steps. Give this or
            `every_n_epochs` (default: every epoch).
        every_n_epochs: evaluate at the end of every this many epochs.
        save_best_to: path ending in `.weights.h5` where the best weights are kept (see
            above).
        verbose: 1 prints a line per evaluation, 0 is silent.

    Example:

    ```python
    reference = keras_mm.metrics.FeatureStatistics.from_images(
        digits, keras_mm.metrics.DigitsFeatures()
    )
    fid = keras_mm.callbacks.FIDCallback(
        reference_stats=reference, num_samples=1000, every_n_epochs=5, num_steps=8,
        labels=10, save_best_to="runs/best.weights.h5",
    )
    history = distiller.fit(
        dataset, epochs=50,
        callbacks=[fid, keras.callbacks.EarlyStopping(monitor="fid", mode="min", patience=4)],
    )
    history.history["fid"], fid.best_fid
    ```

    References:
        Salimans et al. 2024, "Multistep Distillation of Diffusion Models via Moment
        Matching", section 5 and appendix (best FID over training, fixed seeds and data).
    """

    def __init__(
        self,
        reference_stats=None,
        reference_data=None,
        num_samples=10_000,
        every_n_steps=None,
        every_n_epochs=None,
        num_steps=None,
        seed=0,
        labels=None,
        condition=None,
        feature_extractor=None,
        save_best_to=None,
        batch_size=500,
        sampler=None,
        guidance_scale=None,
        extra_metrics=(),
        verbose=1,
        evaluator=None,
    ):
        super().__init__()
        evaluation = {
            "reference_stats": reference_stats, "reference_data": reference_data,
            "num_samples": num_samples, "num_steps": num_steps, "seed": seed,
            "labels": labels, "condition": condition, "feature_extractor": feature_extractor,
            "batch_size": batch_size, "sampler": sampler, "guidance_scale": guidance_scale,
            "extra_metrics": extra_metrics,
        }  # fmt: skip
        if evaluator is None:
            evaluator = Evaluator(**evaluation)
        elif given_arguments(evaluation, Evaluator.__init__):
            raise ValueError(
                f"Give either `evaluator` or the evaluation arguments "
                f"{given_arguments(evaluation, Evaluator.__init__)}, not both: set them on "
                "the Evaluator."
            )
        if every_n_steps is not None and every_n_epochs is not None:
            raise ValueError(
                f"Give one of `every_n_steps` ({every_n_steps}) and `every_n_epochs` "
                f"({every_n_epochs}), not both."
            )
        if every_n_steps is None and every_n_epochs is None:
            every_n_epochs = 1
        for arg, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{arg}` must be an integer >= 1, got {value!r}.")
        if save_best_to is not None and not str(save_best_to).endswith(".weights.h5"):
            raise ValueError(
                f"`save_best_to` must end in '.weights.h5' (Keras weights format), got "
                f"{save_best_to!r}."
            )
        self.evaluator = evaluator
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.save_best_to = None if save_best_to is None else str(save_best_to)
        self.verbose = verbose
        # Per-batch work is a counter only when evaluating per epoch, so Keras may then
        # dispatch batch-end callbacks asynchronously.
        self.async_safe = every_n_steps is None
        self.evaluations = []  # one dict of results, with "epoch" and "step", per evaluation
        self.best_fid = math.inf
        self.best_epoch = None
        self.best_step = None
        self._step = 0
        self._step_lock = threading.Lock()
        self._epoch_start_step = 0
        self._last_evaluated_step = 0
        self._last_results = None
        self._run_begun = False

    @property
    def num_steps(self):
        """The evaluation's sampling steps (the evaluator's; settable)."""
        return self.evaluator.num_steps

    @num_steps.setter
    def num_steps(self, value):
        self.evaluator.num_steps = value

    def evaluate(self, model=None):
        """The evaluator's results for `model` (default: the model being trained).

        Returns:
            A dict with `fid` and the `extra_metrics`' keys; all NaN (with a warning) when
            the samples are not finite.
        """
        return self.evaluator.evaluate(self.model if model is None else model)

    @property
    def best_record_path(self):
        """The best record beside `save_best_to` (None without it)."""
        if self.save_best_to is None:
            return None
        return self.save_best_to[: -len(".weights.h5")] + ".best.json"

    def on_train_begin(self, logs=None):
        # Fail before the first epoch, not after it.
        check_can_sample(self.model)
        self.evaluator.check_model(self.model)
        self.evaluator.prepare_reference()
        self._run_begun = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._run_begun:
            self._begin_run()
        self._epoch_start_step = self._step

    def _begin_run(self):
        """After every callback's `on_train_begin`, hence after a restore: a run that starts
        at optimizer iteration 0 is fresh and forgets any earlier best; a resumed one reads
        the record."""
        self._run_begun = True
        self._step = self._last_evaluated_step = optimizer_iterations(self.model)
        if self._step == 0:
            self.best_fid, self.best_epoch, self.best_step = math.inf, None, None
            self.evaluations, self._last_results = [], None
            for path in (self.save_best_to, self.best_record_path):
                if path is not None and os.path.exists(path):
                    os.remove(path)
        elif self.best_fid == math.inf and self.best_record_path is not None:
            self._read_best_record()

    def _record_key(self):
        evaluator = self.evaluator
        return {"feature_extractor": evaluator.feature_extractor.name,
                "num_samples": evaluator.num_samples, "num_steps": evaluator.num_steps}

    def _read_best_record(self):
        path = self.best_record_path
        if not os.path.exists(path):
            return
        with open(path) as file:
            record = json.load(file)
        key = self._record_key()
        if {name: record.get(name) for name in key} != key:
            warnings.warn(
                f"FIDCallback: ignoring the best record {path}: it measured "
                f"{ {name: record.get(name) for name in key} }, this run measures {key}."
            )
            return
        self.best_fid = record["best_fid"]
        self.best_epoch, self.best_step = record["best_epoch"], record["best_step"]
        if self.verbose:
            print(f"FIDCallback: resuming with best fid={self.best_fid:.4f} from {path}")

    def _write_best_record(self):
        # Each file through a temporary one renamed into place: a kill mid-write leaves the
        # old file or the new one, never a truncated one that a resumed run would load.
        from keras_mm.training.checkpoint import write_atomically

        os.makedirs(os.path.dirname(os.path.abspath(self.save_best_to)), exist_ok=True)
        write_atomically(self.save_best_to, self.model.save_weights)
        record = {"best_fid": float(self.best_fid), "best_epoch": self.best_epoch,
                  "best_step": self.best_step, **self._record_key()}

        def write_record(path):
            with open(path, "w") as file:
                json.dump(record, file, indent=2)

        write_atomically(self.best_record_path, write_record)

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the last step index within the epoch (steps_per_execution may skip some).
        # With async dispatch, batch ends may run out of order on worker threads.
        with self._step_lock:
            self._step = max(self._step, self._epoch_start_step + batch + 1)
        if self.every_n_steps is None:
            return
        if self._step // self.every_n_steps > self._last_evaluated_step // self.every_n_steps:
            self._last_evaluated_step = self._step
            results = self._evaluate_and_track(epoch=None)
            if logs is not None:
                logs.update(results)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            results = self._evaluate_and_track(epoch=epoch + 1)
        else:
            results = self._last_results
        if results is not None and logs is not None:
            logs.update(results)

    def _evaluate_and_track(self, epoch):
        start = time.time()
        # On JAX, `self.model` syncs the training state into the model's variables, which
        # the sampler reads; it is only touched here.
        results = self.evaluator.evaluate(self.model)
        fid = results["fid"]
        improved = fid < self.best_fid
        if improved:
            self.best_fid, self.best_epoch, self.best_step = fid, epoch, self._step
            if self.save_best_to is not None:
                self._write_best_record()
        self.evaluations.append({"epoch": epoch, "step": self._step, **results})
        self._last_results = results
        if self.verbose:
            where = f"epoch {epoch}, step {self._step}" if epoch else f"step {self._step}"
            saved = f", saved to {self.save_best_to}" if improved and self.save_best_to else ""
            others = "".join(
                f", {key}={value:.4f}" for key, value in results.items() if key != "fid"
            )
            print(
                f"\nFIDCallback ({where}): fid={fid:.4f}{others} (best {self.best_fid:.4f}"
                f"{saved}; {self.evaluator.num_samples} samples in {time.time() - start:.1f}s)"
            )
        return results


def given_arguments(arguments, function):
    """The names in `arguments` whose values differ from `function`'s defaults."""
    defaults = inspect.signature(function).parameters
    given = []
    for name, value in arguments.items():
        default = defaults[name].default
        if isinstance(value, list):
            value = tuple(value)
        try:
            same = value is default or bool(value == default)
        except (TypeError, ValueError):  # arrays compare elementwise
            same = False
        if not same:
            given.append(name)
    return given


class SampleGridCallback(keras.callbacks.Callback):
    """Saves a PNG grid of samples from fixed noise every few epochs.

    The same seed (hence noise) and labels at every call, so a user watches the same samples
    improve as training goes on.

    Args:
        path: PNG path; may hold `{epoch}` (1-based, e.g. `"runs/samples_{epoch:03d}.png"`)
            to keep one file per epoch, otherwise the file is overwritten.
        every_n_epochs: save at the end of every this many epochs.
        num_samples: images in the grid.
        seed: sampling seed.
        labels: for class-conditional models, one int label per sample, or an int number of
            classes for balanced labels (`arange(num_samples) % labels`: with 10 classes and
            10 columns, each column is one class).
        condition: for text-conditional models, `{"text_embeddings", "text_mask"}` of
            `num_samples` captions (e.g. `text_encoder.encode(captions)`).
        num_steps, sampler, guidance_scale: passed to `model.sample`; `None` keeps the
            model's default.
        num_columns: images per row; default `ceil(sqrt(num_samples))`.
        scale: integer upscaling of each image (nearest neighbour), e.g. 4 for 8x8 digits.
        padding: pixels between images (see `keras_mm.images.image_grid`).

    Example:

    ```python
    grids = keras_mm.callbacks.SampleGridCallback(
        "runs/samples_{epoch:03d}.png", num_samples=100, labels=10, num_columns=10, scale=4
    )
    distiller.fit(dataset, epochs=20, callbacks=[grids])
    ```
    """

    def __init__(
        self,
        path,
        every_n_epochs=1,
        num_samples=64,
        seed=0,
        labels=None,
        condition=None,
        num_steps=None,
        sampler=None,
        guidance_scale=None,
        num_columns=None,
        scale=1,
        padding=1,
    ):
        super().__init__()
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be an integer >= 1, got {every_n_epochs!r}.")
        self.path = path
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.seed = seed
        self.labels = balanced_labels(labels, num_samples)
        self.condition = per_sample_condition(condition, num_samples)
        self.num_steps = num_steps
        self.sampler = sampler
        self.guidance_scale = guidance_scale
        self.num_columns = num_columns
        self.scale = scale
        self.padding = padding
        self.saved_paths = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs != 0:
            return
        condition = dict(self.condition or {})
        if self.labels is not None:
            condition["labels"] = self.labels
        images, _ = next(
            sample_batches(
                self.model, self.num_samples, self.seed, self.num_samples,
                condition=condition, num_steps=self.num_steps, sampler=self.sampler,
                guidance_scale=self.guidance_scale,
            )
        )
        path = self.path.format(epoch=epoch + 1)
        save_image_grid(
            images, path, ncols=self.num_columns, padding=self.padding, scale=self.scale
        )
        self.saved_paths.append(path)
