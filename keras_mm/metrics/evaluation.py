"""Sample a model with fixed seeds and conditions, and score the samples against real data."""

import math
import os
import time
import warnings

import numpy as np
from keras import ops

from keras_mm import checks
from keras_mm.backend import no_grad
from keras_mm.metrics.class_accuracy import ClassAccuracy
from keras_mm.metrics.extractors import get_feature_extractor
from keras_mm.metrics.feature_statistics import (
    FeatureStatistics,
    check_same_feature_space,
    iterate_image_batches,
)
from keras_mm.metrics.functional import (
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)

# extra metric -> the keys it adds to the results (besides "fid").
EXTRA_METRICS = {
    "kid": ("kid", "kid_std"),
    "precision_recall": ("precision", "recall"),
    "inception_score": ("inception_score", "inception_score_std"),
    "class_accuracy": ("class_accuracy",),
}


def balanced_labels(labels, num_samples):
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


def per_sample_condition(condition, num_samples):
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
    """Raises a TypeError unless `model` has a `sample(...)` method."""
    if not callable(getattr(model, "sample", None)):
        raise TypeError(
            f"{type(model).__name__} has no `sample(...)` method. Sample-quality evaluation "
            "needs a model like `keras_mm.DiffusionModel` or `keras_mm.MomentMatchingDistiller`."
        )


def condition_check(model):
    """The model's `check_condition(condition, batch_size)` (a distiller's is its
    generator's), or None for a model without one (any object with `sample`)."""
    return getattr(model, "check_condition", None) or getattr(
        getattr(model, "generator", None), "check_condition", None
    )


def sample_batches(model, num_samples, seed, batch_size, condition=None, **sample_kwargs):
    """Yields `(images, batch_condition)` numpy batches of `model.sample`, batch i drawn with
    seed + i.

    Args:
        model: anything with `sample(num_samples=None, labels=None, condition=None, ...,
            seed=...)`, e.g. a `DiffusionModel` or a `MomentMatchingDistiller`.
        num_samples: samples in all.
        seed: seed of the first batch.
        batch_size: samples per `model.sample` call (the last batch may be smaller).
        condition: a dict of per-sample arrays of `num_samples` rows, sliced per batch;
            `"labels"` are passed as `labels=`, the rest as `condition=`.
        **sample_kwargs: passed to `model.sample`; those that are `None` are left out, so
            the model's defaults apply.
    """
    check_can_sample(model)
    sample_kwargs = {key: value for key, value in sample_kwargs.items() if value is not None}
    condition = condition or {}
    for index, start in enumerate(range(0, num_samples, batch_size)):
        stop = min(start + batch_size, num_samples)
        batch = {key: value[start:stop] for key, value in condition.items()}
        inputs = {} if batch else {"num_samples": stop - start}
        if "labels" in batch:
            inputs["labels"] = batch["labels"]
        if set(batch) - {"labels"}:
            inputs["condition"] = {key: value for key, value in batch.items() if key != "labels"}
        with no_grad():
            images = model.sample(seed=seed + index, **inputs, **sample_kwargs)
        yield np.asarray(ops.convert_to_numpy(images), "float32"), batch


def _checked_reference(images):
    """Reference images as float32 in [-1, 1]: uint8 converted, NaN/inf and values far
    outside [-1, 1] refused (a NaN reference gave a finite FID)."""
    return checks.to_unit_range(np.asarray(images), "reference images")


class Evaluator:
    """Samples a model with fixed seeds and conditions and scores the samples.

    Every `evaluate(model)` draws `num_samples` samples with the same seeds, hence the same
    noise, and the same labels or captions (the paper's protocol: "keeping evaluation data
    and random seeds fixed across evaluations"), embeds them with `feature_extractor` and
    compares them with the real data: the Fréchet distance `fid` (FID with Inception
    features) and the `extra_metrics`. Two evaluations of one model give the same numbers,
    so successive values during training differ only through the weights. `FIDCallback`
    runs one during `fit`; call it directly to score a saved model.

    Args:
        reference_stats: `FeatureStatistics` of the real data, or the path of their `.npz`
            (see `FeatureStatistics.from_images(...).save(path)`). Give this or
            `reference_data`.
        reference_data: real images [N, H, W, C] in [-1, 1], or an iterable of batches; their
            features are computed once, at the first evaluation.
        num_samples: samples per evaluation (the paper: 50k; FID is biased upwards for
            small counts, so compare values at equal `num_samples` only).
        num_steps: sampling steps passed to `model.sample`; `None` keeps the model's default.
        seed: seed of the first sample batch; batch i uses `seed + i`.
        labels: for class-conditional models, one int label per sample, or an int number of
            classes for balanced labels (`arange(num_samples) % labels`).
        condition: for text-conditional models, the per-sample condition
            `{"text_embeddings": [N, L, D], "text_mask": [N, L]}` of `num_samples` captions
            (e.g. `text_encoder.encode(captions)` for captions of the reference images).
        feature_extractor: a `keras_mm.metrics.FeatureExtractor` or its name; defaults to
            the one named in `reference_stats`, else `"inception_v3"`.
        batch_size: samples per `model.sample` call.
        sampler: passed to `model.sample` (`"ancestral"` or `"ddim"`); `None` keeps the
            model's default.
        guidance_scale: passed to `model.sample`; `None` keeps the model's default.
        extra_metrics: more scores of the same samples: `"kid"` (`kid`, `kid_std`) and
            `"precision_recall"` (`precision`, `recall`, k = 3) need `reference_data`;
            `"inception_score"` (`inception_score`, `inception_score_std`) and
            `"class_accuracy"` need a classifier head whose classes are the labels.

    Example:

    ```python
    evaluator = keras_mm.metrics.Evaluator(
        reference_data=digits, feature_extractor="digits", num_samples=1000, labels=10,
        num_steps=8, extra_metrics=["precision_recall", "class_accuracy"],
    )
    evaluator.evaluate(distiller)  # {"fid": ..., "precision": ..., "recall": ..., ...}
    ```

    References:
        Salimans et al. 2024, "Multistep Distillation of Diffusion Models via Moment
        Matching", section 5 and appendix (fixed seeds and data across evaluations).
    """

    def __init__(
        self,
        reference_stats=None,
        reference_data=None,
        num_samples=10_000,
        num_steps=None,
        seed=0,
        labels=None,
        condition=None,
        feature_extractor=None,
        batch_size=500,
        sampler=None,
        guidance_scale=None,
        extra_metrics=(),
    ):
        if (reference_stats is None) == (reference_data is None):
            raise ValueError(
                "Give exactly one of `reference_stats` (FeatureStatistics or an .npz path) "
                "and `reference_data` (real images)."
            )
        for arg, value in (("num_samples", num_samples), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be an integer >= 1, got {value!r}.")
        if num_samples < 2:
            raise ValueError(f"`num_samples` must be >= 2 for a covariance, got {num_samples}.")
        extra_metrics = tuple(extra_metrics)
        unknown = set(extra_metrics) - set(EXTRA_METRICS)
        if unknown:
            raise ValueError(
                f"Unknown `extra_metrics` {sorted(unknown)}; expected some of "
                f"{list(EXTRA_METRICS)}."
            )
        needs_data = {"kid", "precision_recall"} & set(extra_metrics)
        if needs_data and reference_data is None:
            raise ValueError(
                f"`extra_metrics` {sorted(needs_data)} compare individual feature vectors; "
                "give `reference_data` instead of `reference_stats`."
            )
        if "class_accuracy" in extra_metrics and labels is None:
            raise ValueError("`extra_metrics=['class_accuracy']` needs `labels`.")
        condition = per_sample_condition(condition, num_samples)
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
        self.num_steps = num_steps
        self.seed = seed
        self.labels = balanced_labels(labels, num_samples)
        self.condition = condition
        self.batch_size = batch_size
        self.sampler = sampler
        self.guidance_scale = guidance_scale
        self.extra_metrics = extra_metrics
        self.sampling_seconds = None  # time spent in `model.sample` by the last evaluation
        self._reference_features = None

    @property
    def metric_names(self):
        """The keys of `evaluate`'s results: `"fid"`, then those of the extra metrics."""
        return ("fid",) + sum((EXTRA_METRICS[name] for name in self.extra_metrics), ())

    def prepare_reference(self):
        """Computes the reference statistics (and features) from `reference_data`, once."""
        if self.reference_stats is None:
            features = [
                self.feature_extractor(batch)
                for batch in iterate_image_batches(self.reference_data, self.batch_size,
                                                   check=_checked_reference)
            ]
            if not features:
                raise ValueError("`reference_data` is empty.")
            self._reference_features = np.concatenate(features)
            self.reference_stats = FeatureStatistics.from_features(
                self._reference_features, self.feature_extractor.name
            )
        return self.reference_stats

    def sample_condition(self):
        """The per-sample labels and condition of the samples, as one dict of arrays."""
        condition = dict(self.condition or {})
        if self.labels is not None:
            condition["labels"] = self.labels
        return condition

    def check_model(self, model):
        """Raises unless `model` can be sampled with this evaluation's labels and condition
        (the model's own `check_condition` on the first batch: e.g. labels for an
        unconditional model, or none for a conditional one)."""
        check_can_sample(model)
        check = condition_check(model)
        if check is not None:
            size = min(self.batch_size, self.num_samples)
            check({key: value[:size] for key, value in self.sample_condition().items()}, size)

    def evaluate(self, model, return_samples=False):
        """Samples from `model` and scores the samples.

        Args:
            model: a `DiffusionModel`, a `MomentMatchingDistiller` (sampled with its
                generator's k steps unless `num_steps` is set), or anything with `sample`.
            return_samples: also return the samples.

        Returns:
            A dict with `fid` and the extra metrics' keys (see `metric_names`), floats; all
            NaN (with a warning) when the samples are not finite. With `return_samples`,
            `(results, samples)`, the samples a numpy array [num_samples, H, W, C] (fewer
            when sampling stopped at non-finite samples).
        """
        self.check_model(model)
        reference = self.prepare_reference()
        generated = FeatureStatistics(self.feature_extractor.name)
        samples, features, logits, labels = [], [], [], []
        self.sampling_seconds = 0.0
        for images, batch in self._timed(self._sample_batches(model)):
            if return_samples:
                samples.append(images)
            if not np.all(np.isfinite(images)):
                warnings.warn("Evaluator: the model produced NaN or infinite samples.")
                results = dict.fromkeys(self.metric_names, math.nan)
                return (results, np.concatenate(samples)) if return_samples else results
            if hasattr(self.feature_extractor, "features_and_logits"):
                batch_features, batch_logits = self.feature_extractor.features_and_logits(images)
            else:
                batch_features, batch_logits = self.feature_extractor(images), None
            generated.update(batch_features)
            # Kept only for the metrics that need them (50k Inception features: 800 MB).
            if {"kid", "precision_recall"} & set(self.extra_metrics):
                features.append(batch_features)
            logits.append(batch_logits)
            labels.append(batch.get("labels"))
        results = self._scores(reference, generated, features, logits, labels)
        return (results, np.concatenate(samples)) if return_samples else results

    def _sample_batches(self, model):
        return sample_batches(
            model, self.num_samples, self.seed, self.batch_size,
            condition=self.sample_condition(), num_steps=self.num_steps,
            sampler=self.sampler, guidance_scale=self.guidance_scale,
        )  # fmt: skip

    def _timed(self, batches):
        """`batches`, adding the time spent drawing each to `sampling_seconds`."""
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.sampling_seconds += time.perf_counter() - start
            if batch is None:
                return
            yield batch

    def _scores(self, reference, generated, features, logits, labels):
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
            accuracy = ClassAccuracy()
            accuracy.update_state(np.concatenate(logits), np.concatenate(labels))
            results["class_accuracy"] = float(accuracy.result())
        return results


def sample_and_score(model, labels, num_steps, reference, feature_extractor,
                     sampler="ancestral", seed=0, chunk_size=500):
    """Samples one image per label and scores them against `reference` images.

    A shortcut for an `Evaluator` with `extra_metrics=["precision_recall",
    "class_accuracy"]`: chunk i of `chunk_size` labels is sampled with seed `seed + i`, so
    the same arguments give the same samples.

    Args:
        model: a `DiffusionModel` (teacher or a distiller's generator) or anything with
            `sample(labels=..., num_steps=..., sampler=..., seed=...)`.
        labels: int class labels, one per sample.
        num_steps: sampling steps.
        reference: real images `[N, H, W, C]` in [-1, 1].
        feature_extractor: a `keras_mm.metrics.FeatureExtractor` with a classifier head
            (e.g. `DigitsFeatures()`).
        sampler: `"ancestral"` or `"ddim"`.
        seed: seed of the first chunk.
        chunk_size: samples per `model.sample` call.

    Returns:
        `(samples, results)`: the samples as a numpy array, and a dict with `fd` (Fréchet
        distance in the extractor's feature space), `accuracy` (class accuracy of the
        extractor's head), `precision`, `recall` (k = 3) and `seconds` (sampling time).

    Example:
    ```python
    samples, scores = keras_mm.metrics.sample_and_score(
        teacher, np.arange(1000) % 10, 64, images, keras_mm.metrics.DigitsFeatures())
    ```
    """
    labels = np.asarray(labels, "int32")
    evaluator = Evaluator(
        reference_data=reference, num_samples=len(labels), num_steps=num_steps, seed=seed,
        labels=labels, feature_extractor=feature_extractor, batch_size=chunk_size,
        sampler=sampler, extra_metrics=("precision_recall", "class_accuracy"),
    )  # fmt: skip
    results, samples = evaluator.evaluate(model, return_samples=True)
    return samples, {"fd": results["fid"], "accuracy": results["class_accuracy"],
                     "precision": results["precision"], "recall": results["recall"],
                     "seconds": evaluator.sampling_seconds}
