"""Inception Score: exp E_x KL(p(y|x) ‖ p(y)) from a classifier's logits."""

import numpy as np
from keras import ops
from scipy.special import log_softmax

from keras_mm.metrics.feature_extractor import get_feature_extractor


def inception_score(logits, num_splits=10):
    """Inception Score of generated samples from their classifier logits.

    IS = exp(E_x KL(p(y|x) ‖ p(y))), with p(y) the mean of p(y|x) over the split
    (Salimans et al. 2016), computed on `num_splits` equal splits.

    Args:
        logits: [N, K] classifier logits (unnormalized log-probabilities) of the samples.
        num_splits: number of splits; the score is averaged over them.

    Returns:
        `(score, score_std)`: mean and standard deviation over splits. The score lies in
        [1, K]; it is high when each sample is classified confidently and the classes are
        diverse.

    Example:

    ```python
    score, score_std = keras_mm.metrics.inception_score(logits, num_splits=10)
    ```
    """
    logits = np.asarray(logits, "float64")
    if logits.ndim != 2:
        raise ValueError(f"Logits must have shape [N, num_classes], got {logits.shape}.")
    if len(logits) < num_splits:
        raise ValueError(
            f"Inception Score with {num_splits} splits needs at least {num_splits} samples, got "
            f"{len(logits)}. Lower `num_splits` or add samples."
        )
    log_probs = log_softmax(logits, axis=-1)
    scores = []
    for split in np.array_split(log_probs, num_splits):
        log_marginal = np.log(np.mean(np.exp(split), axis=0))
        kl = np.sum(np.exp(split) * (split - log_marginal), axis=-1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


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
                "`InceptionFeatures(classifier_head=True)`."
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
