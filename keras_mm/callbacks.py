"""Callbacks that measure and show sample quality during `fit`: `FIDCallback`, `SampleGridCallback`.

Both call the trained model's `sample(num_samples=None, labels=None, condition=None,
num_steps=..., seed=..., sampler=..., guidance_scale=...)` (a `DiffusionModel` teacher or a
`MomentMatchingDistiller` generator, or anything with that method) on the same seed and
labels or captions at every call, so that successive values and pictures differ only through
the weights.
"""

import json
import math
import os
import threading
import time
import warnings

import keras
import numpy as np
from keras import ops

from keras_mm.backend import no_grad
from keras_mm.images import save_image_grid
from keras_mm.metrics.feature_extractor import get_feature_extractor
from keras_mm.metrics.feature_statistics import FeatureStatistics, iterate_image_batches
from keras_mm.metrics.frechet_distance import check_same_feature_space, frechet_distance
from keras_mm.metrics.inception_score import inception_score
from keras_mm.metrics.kernel_inception_distance import kernel_inception_distance
from keras_mm.metrics.precision_recall import precision_recall

EXTRA_METRICS = ("kid", "inception_score", "precision_recall", "class_accuracy")


def fixed_labels(labels, num_samples):
    """The labels of an evaluation: `None`, an int array of `num_samples` labels, or, for an
    int `labels`, that many classes in turn (`arange(num_samples) % labels`, balanced)."""
    if labels is None:
        return None
    if isinstance(labels, (int, np.integer)) and not isinstance(labels, bool):
        if labels < 1:
            raise ValueError(f"An int `labels` is a number of classes >= 1, got {labels}.")
        return (np.arange(num_samples) % labels).astype("int32")
    labels = np.asarray(ops.convert_to_numpy(labels)).reshape(-1)
    if len(labels) != num_samples or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must hold one integer label per sample ({num_samples}), got "
            f"{len(labels)} values of dtype {labels.dtype}. Pass an int (the number of "
            "classes) for balanced labels."
        )
    return labels.astype("int32")


def fixed_condition(condition, num_samples):
    """The per-sample condition of an evaluation (e.g. the text embeddings and masks of
    `num_samples` captions, from `keras_mm.TextEncoder.encode`) as NumPy arrays, or None."""
    if condition is None:
        return None
    if not isinstance(condition, dict) or not condition:
        raise ValueError(
            "`condition` must be a dict of per-sample arrays, e.g. "
            "text_encoder.encode(captions) = {'text_embeddings': [N, L, D], 'text_mask': "
            f"[N, L]}}; got {type(condition).__name__}."
        )
    condition = {key: np.asarray(ops.convert_to_numpy(value)) for key, value in condition.items()}
    for key, value in condition.items():
        if len(value) != num_samples:
            raise ValueError(
                f"`condition[{key!r}]` has {len(value)} rows; it needs one per sample "
                f"(num_samples={num_samples}). Encode num_samples captions."
            )
    return condition


def check_can_sample(model):
    if not callable(getattr(model, "sample", None)):
        raise TypeError(
            f"{type(model).__name__} has no `sample(...)` method. Sample-quality callbacks "
            "need a model like `keras_mm.DiffusionModel` or `keras_mm.MomentMatchingDistiller`."
        )


def draw_samples(model, num_samples, labels, seed, batch_size, condition=None, **sample_kwargs):
    """Yields `(images, labels)` numpy batches of `model.sample`, batch i drawn with seed+i.

    `condition` (a dict of per-sample arrays, e.g. text embeddings and masks) is sliced
    like the labels. `sample_kwargs` with value `None` are left out, so the model's
    defaults apply.
    """
    check_can_sample(model)
    sample_kwargs = {key: value for key, value in sample_kwargs.items() if value is not None}
    for index, start in enumerate(range(0, num_samples, batch_size)):
        size = min(batch_size, num_samples - start)
        batch_labels = None if labels is None else labels[start : start + size]
        with no_grad():
            if condition is not None:
                batch_condition = {k: v[start : start + size] for k, v in condition.items()}
                images = model.sample(labels=batch_labels, condition=batch_condition,
                                      seed=seed + index, **sample_kwargs)
            elif labels is None:
                images = model.sample(num_samples=size, seed=seed + index, **sample_kwargs)
            else:
                images = model.sample(labels=batch_labels, seed=seed + index, **sample_kwargs)
        yield np.asarray(ops.convert_to_numpy(images), "float32"), batch_labels


class FIDCallback(keras.callbacks.Callback):
    """Fréchet distance of the model's samples to reference data, logged as `fid` during `fit`.

    At every evaluation it draws `num_samples` samples with the same seeds, hence the same
    noise, and the same labels (the paper's protocol: "keeping evaluation data and random
    seeds fixed across evaluations"), embeds them with `feature_extractor` and writes the
    Fréchet distance to the reference statistics into the logs as `fid`. `History`,
    `ModelCheckpoint(monitor="fid", mode="min")` and `EarlyStopping(monitor="fid",
    mode="min")` see it when they come after this callback in the `callbacks` list (Keras
    cannot infer the direction of a logged value that is not a compiled metric, so pass
    `mode="min"`). The best value is tracked (`best_fid`, `best_epoch`, `best_step`), and
    with `save_best_to` the weights that gave it are saved.

    With `every_n_steps`, `fid` is written into the logs of the batch it was computed at,
    and each epoch's logs carry the latest value so that epoch-level callbacks see it.

    Args:
        reference_stats: `FeatureStatistics` of the real data, or the path of their `.npz`
            (see `FeatureStatistics.from_images(...).save(path)`). Give this or
            `reference_data`.
        reference_data: real images [N, H, W, C] in [-1, 1], or an iterable of batches; their
            statistics are computed once, at the start of training.
        num_samples: samples per evaluation (the paper: 50k; FID is biased upwards for
            small counts, so compare values at equal `num_samples` only).
        every_n_steps: evaluate every this many training steps. Give this or
            `every_n_epochs` (default: every epoch).
        every_n_epochs: evaluate at the end of every this many epochs.
        num_steps: sampling steps passed to `model.sample`; `None` keeps the model's default.
        seed: seed of the first sample batch; batch i uses `seed + i`.
        labels: for class-conditional models, one int label per sample, or an int number of
            classes for balanced labels (`arange(num_samples) % labels`).
        condition: for text-conditional models, the per-sample condition
            `{"text_embeddings": [N, L, D], "text_mask": [N, L]}` of `num_samples` captions
            (e.g. `text_encoder.encode(captions)` for captions of the reference images).
        feature_extractor: a `keras_mm.metrics.FeatureExtractor` or its name; defaults to
            the one named in `reference_stats`, else `"inception_v3"`.
        save_best_to: path ending in `.weights.h5`; the model's weights are saved there
            whenever `fid` improves, and the best FID with its epoch and step next to them
            (`*.best.json`). A run resumed with the same `save_best_to` (e.g. after
            `keras.callbacks.BackupAndRestore`) starts from that best FID, so a worse
            evaluation after the restart does not overwrite the best weights.
        batch_size: samples per `model.sample` call.
        sampler: passed to `model.sample` (`"ancestral"` or `"ddim"`); `None` keeps the
            model's default.
        guidance_scale: passed to `model.sample`; `None` keeps the model's default.
        extra_metrics: more metrics to log from the same samples: `"kid"` (`kid`, `kid_std`)
            and `"precision_recall"` (`precision`, `recall`) need `reference_data`;
            `"inception_score"` and `"class_accuracy"` need a classifier head whose classes
            are the labels.
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
    ):
        super().__init__()
        if (reference_stats is None) == (reference_data is None):
            raise ValueError(
                "Give exactly one of `reference_stats` (FeatureStatistics or an .npz path) "
                "and `reference_data` (real images)."
            )
        if every_n_steps is not None and every_n_epochs is not None:
            raise ValueError(
                f"Give one of `every_n_steps` ({every_n_steps}) and `every_n_epochs` "
                f"({every_n_epochs}), not both."
            )
        if every_n_steps is None and every_n_epochs is None:
            every_n_epochs = 1
        for arg, value in (
            ("num_samples", num_samples),
            ("batch_size", batch_size),
            ("every_n_steps", every_n_steps),
            ("every_n_epochs", every_n_epochs),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{arg}` must be an integer >= 1, got {value!r}.")
        if num_samples < 2:
            raise ValueError(f"`num_samples` must be >= 2 for a covariance, got {num_samples}.")
        unknown = set(extra_metrics) - set(EXTRA_METRICS)
        if unknown:
            raise ValueError(
                f"Unknown `extra_metrics` {sorted(unknown)}; expected some of {EXTRA_METRICS}."
            )
        needs_data = {"kid", "precision_recall"} & set(extra_metrics)
        if needs_data and reference_data is None:
            raise ValueError(
                f"`extra_metrics` {sorted(needs_data)} compare individual feature vectors; "
                "give `reference_data` instead of `reference_stats`."
            )
        if "class_accuracy" in extra_metrics and labels is None:
            raise ValueError("`extra_metrics=['class_accuracy']` needs `labels`.")
        if save_best_to is not None and not str(save_best_to).endswith(".weights.h5"):
            raise ValueError(
                f"`save_best_to` must end in '.weights.h5' (Keras weights format), got "
                f"{save_best_to!r}."
            )
        if isinstance(reference_stats, (str, os.PathLike)):
            reference_stats = FeatureStatistics.load(reference_stats)
        if feature_extractor is None:
            feature_extractor = (
                getattr(reference_stats, "feature_extractor_name", None) or "inception_v3"
            )
        self.feature_extractor = get_feature_extractor(feature_extractor)
        if reference_stats is not None:
            check_same_feature_space(reference_stats, self.feature_extractor.name)
        needs_head = {"inception_score", "class_accuracy"} & set(extra_metrics)
        if needs_head and not getattr(self.feature_extractor, "has_classifier", False):
            raise ValueError(
                f"`extra_metrics` {sorted(needs_head)} need a classifier head, but feature "
                f"extractor {self.feature_extractor.name!r} has none."
            )
        self.reference_stats = reference_stats
        self.reference_data = reference_data
        self.num_samples = num_samples
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.num_steps = num_steps
        self.seed = seed
        self.labels = fixed_labels(labels, num_samples)
        self.condition = fixed_condition(condition, num_samples)
        self.save_best_to = save_best_to
        self.batch_size = batch_size
        self.sampler = sampler
        self.guidance_scale = guidance_scale
        self.extra_metrics = tuple(extra_metrics)
        self.verbose = verbose
        # Per-batch work is a counter only when evaluating per epoch, so Keras may then
        # dispatch batch-end callbacks asynchronously.
        self.async_safe = every_n_steps is None
        self._reference_features = None
        self.evaluations = []  # one dict of results, with "epoch" and "step", per evaluation
        self.best_fid = math.inf
        self.best_epoch = None
        self.best_step = None
        self._step = 0
        self._step_lock = threading.Lock()
        self._epoch_start_step = 0
        self._last_evaluated_step = 0
        self._last_results = None

    def prepare_reference(self):
        """Computes the reference statistics (and features) from `reference_data`, once."""
        if self.reference_stats is None:
            features = [
                self.feature_extractor(batch)
                for batch in iterate_image_batches(self.reference_data, self.batch_size)
            ]
            if not features:
                raise ValueError("`reference_data` is empty.")
            self._reference_features = np.concatenate(features)
            self.reference_stats = FeatureStatistics.from_features(
                self._reference_features, self.feature_extractor.name
            )
        return self.reference_stats

    def evaluate(self, model=None):
        """Samples from `model` (default: the model being trained) and returns the metrics.

        Usable outside `fit`, e.g. to compare a teacher's FID across `num_steps`.

        Returns:
            A dict with `fid` and the `extra_metrics`. `fid` is NaN (with a warning) when
            the samples are not finite.
        """
        model = self.model if model is None else model
        reference = self.prepare_reference()
        generated = FeatureStatistics(self.feature_extractor.name)
        features, logits, labels = [], [], []
        for images, batch_labels in draw_samples(
            model,
            self.num_samples,
            self.labels,
            self.seed,
            self.batch_size,
            condition=self.condition,
            num_steps=self.num_steps,
            sampler=self.sampler,
            guidance_scale=self.guidance_scale,
        ):
            if not np.all(np.isfinite(images)):
                warnings.warn("FIDCallback: the model produced NaN or infinite samples.")
                return {"fid": math.nan}
            if hasattr(self.feature_extractor, "features_and_logits"):
                batch_features, batch_logits = self.feature_extractor.features_and_logits(images)
            else:
                batch_features, batch_logits = self.feature_extractor(images), None
            generated.update(batch_features)
            features.append(batch_features)
            logits.append(batch_logits)
            labels.append(batch_labels)
        results = {
            "fid": frechet_distance(
                reference.mean, reference.covariance, generated.mean, generated.covariance
            )
        }
        if "kid" in self.extra_metrics:
            results["kid"], results["kid_std"] = kernel_inception_distance(
                self._reference_features, np.concatenate(features), seed=self.seed
            )
        if "precision_recall" in self.extra_metrics:
            results["precision"], results["recall"] = precision_recall(
                self._reference_features, np.concatenate(features)
            )
        if "inception_score" in self.extra_metrics:
            num_splits = min(10, self.num_samples)
            results["inception_score"], results["inception_score_std"] = inception_score(
                np.concatenate(logits), num_splits
            )
        if "class_accuracy" in self.extra_metrics:
            predicted = np.argmax(np.concatenate(logits), axis=-1)
            results["class_accuracy"] = float(np.mean(predicted == np.concatenate(labels)))
        return results

    @property
    def best_record_path(self):
        """Where the best FID is recorded next to `save_best_to` (None without it)."""
        if self.save_best_to is None:
            return None
        return str(self.save_best_to)[: -len(".weights.h5")] + ".best.json"

    def on_train_begin(self, logs=None):
        check_can_sample(self.model)  # fail before the first epoch, not after it
        self.prepare_reference()
        record = self.best_record_path
        if record is not None and self.best_fid == math.inf and os.path.exists(record):
            with open(record) as file:
                best = json.load(file)
            self.best_fid = best["best_fid"]
            self.best_epoch, self.best_step = best["best_epoch"], best["best_step"]
            if self.verbose:
                print(f"FIDCallback: resuming with best fid={self.best_fid:.4f} from {record}")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start_step = self._step

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the last step index within the epoch (steps_per_execution may skip some).
        # With async dispatch, batch ends may run out of order on worker threads.
        with self._step_lock:
            self._step = max(self._step, self._epoch_start_step + batch + 1)
        if self.every_n_steps is None:
            return
        if self._step // self.every_n_steps > self._last_evaluated_step // self.every_n_steps:
            self._last_evaluated_step = self._step
            if logs is not None:
                logs.update(self._evaluate_and_track(epoch=None))

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
        model = self.model
        results = self.evaluate(model)
        fid = results["fid"]
        improved = fid < self.best_fid
        if improved:
            self.best_fid, self.best_epoch, self.best_step = fid, epoch, self._step
            if self.save_best_to is not None:
                directory = os.path.dirname(os.path.abspath(self.save_best_to))
                os.makedirs(directory, exist_ok=True)
                model.save_weights(self.save_best_to)
                with open(self.best_record_path, "w") as file:
                    json.dump({"best_fid": float(fid), "best_epoch": epoch,
                               "best_step": self._step}, file)
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
                f"{saved}; {self.num_samples} samples in {time.time() - start:.1f}s)"
            )
        return results


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
        self.labels = fixed_labels(labels, num_samples)
        self.condition = fixed_condition(condition, num_samples)
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
        images, _ = next(
            draw_samples(
                self.model,
                self.num_samples,
                self.labels,
                self.seed,
                self.num_samples,
                condition=self.condition,
                num_steps=self.num_steps,
                sampler=self.sampler,
                guidance_scale=self.guidance_scale,
            )
        )
        path = self.path.format(epoch=epoch + 1)
        save_image_grid(
            images, path, ncols=self.num_columns, padding=self.padding, scale=self.scale
        )
        self.saved_paths.append(path)
