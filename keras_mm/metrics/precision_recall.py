"""Improved precision and recall: k-NN manifolds of real and generated features."""

import numpy as np
from keras import ops

from keras_mm.metrics.feature_extractor import get_feature_extractor


def _squared_distances(features1, features2):
    squared = (
        np.sum(features1**2, axis=1)[:, None]
        + np.sum(features2**2, axis=1)[None, :]
        - 2.0 * features1 @ features2.T
    )
    return np.clip(squared, 0.0, None)


def _knn_radii(features, k, chunk_size):
    """Squared distance from each point to its k-th nearest other point."""
    radii = np.empty(len(features))
    for start in range(0, len(features), chunk_size):
        distances = _squared_distances(features[start : start + chunk_size], features)
        # Index k of the sorted row skips the point itself (distance 0 at index 0).
        radii[start : start + chunk_size] = np.partition(distances, k, axis=1)[:, k]
    return radii


def _fraction_inside(queries, manifold, manifold_radii, chunk_size):
    """Fraction of `queries` inside some ball (manifold point, its k-NN radius)."""
    inside = np.empty(len(queries), dtype=bool)
    for start in range(0, len(queries), chunk_size):
        distances = _squared_distances(queries[start : start + chunk_size], manifold)
        inside[start : start + chunk_size] = np.any(distances <= manifold_radii[None, :], axis=1)
    return float(np.mean(inside))


def precision_recall(real_features, generated_features, k=3, chunk_size=1024):
    """Improved precision and recall of generated samples (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points, each ball reaching the
    point's k-th nearest neighbour in the same set. Precision is the fraction of generated
    samples inside the real manifold (quality); recall is the fraction of real samples
    inside the generated manifold (coverage).

    Args:
        real_features: [M, F] features of real data.
        generated_features: [N, F] features of generated data.
        k: the neighbour that sets each ball's radius (3 in the paper).
        chunk_size: rows of the pairwise-distance matrix computed at once (memory).

    Returns:
        `(precision, recall)`, each in [0, 1].

    Example:

    ```python
    precision, recall = keras_mm.metrics.precision_recall(real_features, generated_features)
    ```
    """
    real_features = np.asarray(real_features, "float64")
    generated_features = np.asarray(generated_features, "float64")
    if real_features.ndim != 2 or generated_features.ndim != 2:
        raise ValueError(
            f"Features must have shape [N, F]; got {real_features.shape} and "
            f"{generated_features.shape}."
        )
    if real_features.shape[1] != generated_features.shape[1]:
        raise ValueError(
            f"Real features have {real_features.shape[1]} dimensions but generated ones "
            f"{generated_features.shape[1]}; use the same feature extractor."
        )
    if min(len(real_features), len(generated_features)) <= k:
        raise ValueError(
            f"Precision/recall with k={k} needs more than {k} samples per side; got "
            f"{len(real_features)} real and {len(generated_features)} generated."
        )
    real_radii = _knn_radii(real_features, k, chunk_size)
    generated_radii = _knn_radii(generated_features, k, chunk_size)
    precision = _fraction_inside(generated_features, real_features, real_radii, chunk_size)
    recall = _fraction_inside(real_features, generated_features, generated_radii, chunk_size)
    return precision, recall


class PrecisionRecall:
    """Streaming improved precision and recall (k-NN manifolds, Kynkäänniemi et al. 2019).

    Keeps all features; the k-NN computation is quadratic in the number of samples (the
    paper uses 50k per side on GPUs; a few thousand is practical on CPU).

    Args:
        feature_extractor: a `FeatureExtractor` or its name; when given, `update_state`
            takes images in [-1, 1], otherwise features [B, F].
        k: the neighbour that sets each ball's radius.
        name: name of the metric.

    Example:

    ```python
    metric = keras_mm.metrics.PrecisionRecall(keras_mm.metrics.DigitsFeatures())
    metric.update_state(real=real_images, generated=samples)
    metric.result()  # {"precision": ..., "recall": ...}
    ```

    References:
        Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
        Generative Models", section 2.
    """

    def __init__(self, feature_extractor=None, k=3, name="precision_recall"):
        self.feature_extractor = (
            None if feature_extractor is None else get_feature_extractor(feature_extractor)
        )
        self.k = k
        self.name = name
        self.reset_state()

    def update_state(self, real=None, generated=None):
        """Adds a batch of real and/or generated images (or features)."""
        if real is not None:
            self._real.append(self._features(real))
        if generated is not None:
            self._generated.append(self._features(generated))

    def result(self):
        """`{"precision": ..., "recall": ...}`."""
        if not self._real or not self._generated:
            raise ValueError(
                f"{self.name} needs real and generated samples; call `update_state` first."
            )
        precision, recall = precision_recall(
            np.concatenate(self._real), np.concatenate(self._generated), self.k
        )
        return {"precision": precision, "recall": recall}

    def reset_state(self):
        self._real, self._generated = [], []

    def _features(self, inputs):
        if self.feature_extractor is None:
            return np.asarray(ops.convert_to_numpy(inputs), "float64")
        return self.feature_extractor(inputs)
