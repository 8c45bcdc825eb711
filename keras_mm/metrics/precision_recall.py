"""Streaming improved precision and recall: k-NN manifolds of real and generated features."""

import numpy as np
from keras import ops

from keras_mm.metrics.extractors import get_feature_extractor
from keras_mm.metrics.functional import precision_recall


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
