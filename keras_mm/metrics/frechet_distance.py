"""Streaming Fréchet distance between real and generated features (FID with Inception)."""

import os

from keras_mm.metrics.extractors import get_feature_extractor
from keras_mm.metrics.feature_statistics import FeatureStatistics, check_same_feature_space
from keras_mm.metrics.functional import frechet_distance


class FrechetDistance:
    """Streaming Fréchet distance between real and generated features (FID, FD_digits).

    Accumulates the count, sum and sum of outer products of each side's features in
    float64 (`FeatureStatistics`) over any number of uneven batches; `result()` is
    `frechet_distance` of the two means and covariances. Either side may be given up front
    as reference statistics, computed once from a dataset and loaded from `.npz`.

    Follows the Keras metric API (`update_state`, `result`, `reset_state`) but is not a
    `keras.metrics.Metric`: the statistics are float64 numpy (JAX disables float64 by
    default) and an F×F covariance does not belong in a compiled training step.

    Args:
        feature_extractor: a `FeatureExtractor` or its name (`"inception_v3"`,
            `"digits"`). When given, `update_state` takes images in [-1, 1]; when `None`,
            it takes features [B, F].
        reference_stats: `FeatureStatistics` (or the path of their `.npz`) of the real
            data; fixed, so `update_state(real=...)` is then not allowed.
        name: name of the metric.

    Example:

    ```python
    fd = keras_mm.metrics.FrechetDistance(
        keras_mm.metrics.DigitsFeatures(), reference_stats="digits_reference.npz"
    )
    for batch in generated_batches:
        fd.update_state(generated=batch)
    fd.result()
    ```

    References:
        Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
        Local Nash Equilibrium" (FID).
    """

    def __init__(self, feature_extractor=None, reference_stats=None, name="frechet_distance"):
        self.feature_extractor = (
            None if feature_extractor is None else get_feature_extractor(feature_extractor)
        )
        extractor_name = getattr(self.feature_extractor, "name", None)
        if isinstance(reference_stats, (str, os.PathLike)):
            reference_stats = FeatureStatistics.load(reference_stats)
        if reference_stats is not None:
            check_same_feature_space(reference_stats, extractor_name)
        self.reference_stats = reference_stats
        self.name = name
        self.real_stats = (
            FeatureStatistics(extractor_name) if reference_stats is None else reference_stats
        )
        self.generated_stats = FeatureStatistics(extractor_name)

    def update_state(self, real=None, generated=None):
        """Adds a batch of real and/or generated images (or features)."""
        if real is not None:
            if self.reference_stats is not None:
                raise ValueError(
                    "This FrechetDistance has fixed `reference_stats`; pass only `generated` "
                    "to `update_state`, or build it without `reference_stats`."
                )
            self.real_stats.update(self._features(real))
        if generated is not None:
            self.generated_stats.update(self._features(generated))

    def result(self):
        """The Fréchet distance between the real and generated statistics, a float."""
        for side, stats in (("real", self.real_stats), ("generated", self.generated_stats)):
            if stats.count < 2:
                raise ValueError(
                    f"{self.name} has {stats.count} {side} samples; it needs at least 2 on each "
                    "side (and thousands for a meaningful value). Call `update_state` first."
                )
        if self.real_stats.num_features != self.generated_stats.num_features:
            raise ValueError(
                f"Real features have {self.real_stats.num_features} dimensions but generated "
                f"ones {self.generated_stats.num_features}; use the same feature extractor."
            )
        return frechet_distance(
            self.real_stats.mean,
            self.real_stats.covariance,
            self.generated_stats.mean,
            self.generated_stats.covariance,
        )

    def reset_state(self):
        """Clears the accumulated statistics; fixed `reference_stats` are kept."""
        self.generated_stats.reset()
        if self.reference_stats is None:
            self.real_stats.reset()

    def _features(self, inputs):
        if self.feature_extractor is None:
            return inputs
        return self.feature_extractor(inputs)
