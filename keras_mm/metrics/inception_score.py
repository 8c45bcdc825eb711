"""Streaming Inception Score: exp E_x KL(p(y|x) ‖ p(y)) from a classifier's logits."""

import numpy as np
from keras import ops

from keras_mm.metrics.extractors import get_feature_extractor
from keras_mm.metrics.functional import inception_score


class InceptionScore:
    """Streaming Inception Score of generated samples (needs a classifier head).

    Args:
        feature_extractor: a `FeatureExtractor` with a classifier head (e.g.
            `InceptionFeatures(classifier_head=True)` or `DigitsFeatures()`), or its name.
            When given, `update_state` takes images in [-1, 1]; when `None`, logits [B, K].
        num_splits: number of splits (10 in Salimans et al.).
        name: name of the metric.

    Example:

    ```python
    score = keras_mm.metrics.InceptionScore(keras_mm.metrics.DigitsFeatures())
    score.update_state(samples)
    score.result()  # {"inception_score": ..., "inception_score_std": ...}
    ```

    References:
        Salimans et al. 2016, "Improved Techniques for Training GANs", section 4.
    """

    def __init__(self, feature_extractor=None, num_splits=10, name="inception_score"):
        self.feature_extractor = (
            None if feature_extractor is None else get_feature_extractor(feature_extractor)
        )
        if self.feature_extractor is not None and not getattr(
            self.feature_extractor, "has_classifier", True
        ):
            raise ValueError(
                f"InceptionScore needs a classifier head, but feature extractor "
                f"{self.feature_extractor.name!r} has none. Use e.g. "
                "`FIDInceptionFeatures()` or `InceptionFeatures(classifier_head=True)`."
            )
        self.num_splits = num_splits
        self.name = name
        self.reset_state()

    def update_state(self, generated):
        """Adds a batch of generated images (or logits when there is no extractor)."""
        if self.feature_extractor is None:
            self._logits.append(np.asarray(ops.convert_to_numpy(generated), "float64"))
        else:
            self._logits.append(self.feature_extractor.predict_logits(generated))

    def result(self):
        """`{"inception_score": mean, "inception_score_std": std over splits}`."""
        if not self._logits:
            raise ValueError(f"{self.name} has no samples; call `update_state` first.")
        score, score_std = inception_score(np.concatenate(self._logits), self.num_splits)
        return {"inception_score": score, "inception_score_std": score_std}

    def reset_state(self):
        self._logits = []
