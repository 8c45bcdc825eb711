"""Streaming mean and covariance of features, in float64, saved to and loaded from `.npz`."""

import numpy as np
from keras import ops


class FeatureStatistics:
    """Count, mean and covariance of a stream of feature vectors, accumulated in float64.

    The sufficient statistics of the Fréchet distance: the running count, sum and sum of
    outer products of the features. Sums are taken around a fixed shift (the first batch's
    mean) so that the covariance does not lose precision to cancellation when the features'
    mean is large compared with their spread. Reference statistics of a dataset are computed
    once (`from_images`), saved with `save` and loaded with `load`; the `.npz` holds
    `mean`, `covariance`, `count` and `feature_extractor` (the feature space's name).

    Args:
        feature_extractor_name: name of the feature space the features come from, e.g.
            `"inception_v3"` or `"digits"`; checked before two statistics are compared.

    Example:

    ```python
    stats = keras_mm.metrics.FeatureStatistics("digits")
    for batch in np.array_split(features, 4):
        stats.update(batch)
    stats.mean, stats.covariance, stats.count
    stats.save("digits_reference.npz")
    stats = keras_mm.metrics.FeatureStatistics.load("digits_reference.npz")
    ```
    """

    def __init__(self, feature_extractor_name=None):
        self.feature_extractor_name = feature_extractor_name
        self.reset()

    def reset(self):
        self.count = 0
        self._shift = None
        self._sum = None
        self._outer_sum = None

    @property
    def num_features(self):
        return None if self._shift is None else len(self._shift)

    def update(self, features):
        """Adds a batch of features [B, F] (any array or backend tensor)."""
        features = np.asarray(ops.convert_to_numpy(features), dtype="float64")
        if features.ndim != 2:
            raise ValueError(
                f"Features must have shape [batch, num_features], got shape {features.shape}."
            )
        if len(features) == 0:
            return self
        if not np.all(np.isfinite(features)):
            raise ValueError(
                f"Features contain {np.sum(~np.isfinite(features))} NaN or infinite values; "
                "the images they were computed from are probably NaN (diverged model?)."
            )
        if self._shift is None:
            num_features = features.shape[1]
            self._shift = features.mean(axis=0)
            self._sum = np.zeros(num_features)
            self._outer_sum = np.zeros((num_features, num_features))
        elif features.shape[1] != self.num_features:
            raise ValueError(
                f"Features have {features.shape[1]} dimensions, but earlier batches had "
                f"{self.num_features}. Use one feature extractor for every batch."
            )
        centered = features - self._shift
        self.count += len(features)
        self._sum += centered.sum(axis=0)
        self._outer_sum += centered.T @ centered
        return self

    @property
    def mean(self):
        self._require(1, "mean")
        return self._shift + self._sum / self.count

    @property
    def covariance(self):
        """Unbiased sample covariance (divides by count - 1), as `np.cov`."""
        self._require(2, "covariance")
        centered_mean = self._sum / self.count
        covariance = (self._outer_sum - self.count * np.outer(centered_mean, centered_mean)) / (
            self.count - 1
        )
        return (covariance + covariance.T) / 2

    def _require(self, min_count, what):
        if self.count < min_count:
            raise ValueError(
                f"The {what} needs at least {min_count} feature vectors, but these statistics "
                f"have {self.count}. Call `update()` with more samples first."
            )

    @classmethod
    def from_features(cls, features, feature_extractor_name=None):
        """Statistics of an array of features [N, F]."""
        return cls(feature_extractor_name).update(features)

    @classmethod
    def from_images(cls, images, feature_extractor, batch_size=None):
        """Statistics of the features of `images` under `feature_extractor`.

        Args:
            images: an array [N, H, W, C] in [-1, 1], or an iterable of such batches (or of
                `(images, labels)` tuples, e.g. a `tf.data.Dataset`).
            feature_extractor: a `FeatureExtractor` (or any callable with a `.name`).
            batch_size: images per call of the extractor when `images` is an array;
                defaults to the extractor's own batching.
        """
        stats = cls(getattr(feature_extractor, "name", None))
        for batch in iterate_image_batches(images, batch_size):
            stats.update(feature_extractor(batch))
        if stats.count == 0:
            raise ValueError("`images` is empty; reference statistics need at least 2 images.")
        return stats

    def save(self, path):
        """Writes `mean`, `covariance`, `count` and `feature_extractor` to an `.npz` file."""
        np.savez(
            path,
            mean=self.mean,
            covariance=self.covariance,
            count=np.int64(self.count),
            feature_extractor=np.str_(self.feature_extractor_name or ""),
        )

    @classmethod
    def load(cls, path):
        """Reads statistics written by `save`; they can be updated further."""
        with np.load(path) as data:
            missing = {"mean", "covariance", "count"} - set(data.files)
            if missing:
                raise ValueError(
                    f"{path!r} is not a statistics file: it lacks {sorted(missing)}. Create one "
                    "with `FeatureStatistics.from_images(...).save(path)`."
                )
            mean, covariance = data["mean"].astype("float64"), data["covariance"].astype("float64")
            count = int(data["count"])
            name = str(data["feature_extractor"]) if "feature_extractor" in data.files else ""
        if count < 2 or covariance.shape != (len(mean), len(mean)):
            raise ValueError(
                f"{path!r} holds inconsistent statistics: count={count}, mean of shape "
                f"{mean.shape}, covariance of shape {covariance.shape}."
            )
        stats = cls(name or None)
        stats.count = count
        stats._shift = mean
        stats._sum = np.zeros_like(mean)
        stats._outer_sum = covariance * (count - 1)
        return stats

    def __repr__(self):
        return (
            f"FeatureStatistics(feature_extractor_name={self.feature_extractor_name!r}, "
            f"count={self.count}, num_features={self.num_features})"
        )


def iterate_image_batches(images, batch_size=None, check=None):
    """Yields numpy batches from an array (split by `batch_size`) or an iterable of batches,
    each passed through `check` (e.g. `keras_mm.checks.to_unit_range`) when given."""
    check = check or (lambda batch: batch)
    if isinstance(images, (list, tuple)) and images and np.ndim(images[0]) == 3:
        images = np.stack(images)
    if hasattr(images, "shape") and len(getattr(images, "shape", ())) == 4:
        images = ops.convert_to_numpy(images)
        step = batch_size or len(images) or 1
        for start in range(0, len(images), step):
            yield check(images[start : start + step])
        return
    for batch in images:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        elif isinstance(batch, dict):
            batch = batch["images"]
        yield check(ops.convert_to_numpy(batch))


def check_same_feature_space(stats, extractor_name):
    """Raises when `stats` were computed by another feature extractor than `extractor_name`."""
    stats_name = stats.feature_extractor_name
    if stats_name and extractor_name and stats_name != extractor_name:
        raise ValueError(
            f"The reference statistics were computed with feature extractor {stats_name!r}, "
            f"but the metric uses {extractor_name!r}. Distances across feature spaces are "
            "meaningless; recompute the reference statistics with the same extractor."
        )
