"""Kernel Inception Distance: unbiased MMD² with a cubic polynomial kernel, over subsets."""

import numpy as np
from keras import ops

from keras_mm.metrics.feature_extractor import get_feature_extractor


def polynomial_kernel(features1, features2, degree=3, coef0=1.0):
    """k(x, y) = (x·y / F + coef0)^degree, the KID kernel (Bińkowski et al. 2018)."""
    return (features1 @ features2.T / features1.shape[1] + coef0) ** degree


def unbiased_mmd2(real_features, generated_features, degree=3, coef0=1.0):
    """Unbiased estimate of MMD² between two samples under `polynomial_kernel`.

    MMD²ᵤ = Σ_{i≠j} k(xᵢ, xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (n(n−1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / (mn)
    (Gretton et al. 2012, eq. 3). Its expectation is zero when both samples come from one
    distribution, so it can be negative.
    """
    m, n = len(real_features), len(generated_features)
    k_xx = polynomial_kernel(real_features, real_features, degree, coef0)
    k_yy = polynomial_kernel(generated_features, generated_features, degree, coef0)
    k_xy = polynomial_kernel(real_features, generated_features, degree, coef0)
    return (
        (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        - 2.0 * k_xy.sum() / (m * n)
    )


def kernel_inception_distance(
    real_features, generated_features, num_subsets=100, subset_size=1000, seed=0
):
    """KID: mean and standard deviation of `unbiased_mmd2` over random subsets.

    Each of `num_subsets` subsets draws `subset_size` real and `subset_size` generated
    feature vectors without replacement (fewer when a side has fewer samples), as in
    Bińkowski et al. 2018.

    Args:
        real_features: [M, F] features of real data.
        generated_features: [N, F] features of generated data.
        num_subsets: number of subsets averaged.
        subset_size: samples per side in a subset.
        seed: seed of the subset draws, so that repeated evaluations are comparable.

    Returns:
        `(kid, kid_std)`: the mean over subsets and the standard deviation of the subset
        estimates.

    Example:

    ```python
    kid, kid_std = keras_mm.metrics.kernel_inception_distance(real, generated)
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
    size = min(subset_size, len(real_features), len(generated_features))
    if size < 2:
        raise ValueError(
            f"KID needs at least 2 samples per side; got {len(real_features)} real and "
            f"{len(generated_features)} generated."
        )
    rng = np.random.default_rng(seed)
    estimates = [
        unbiased_mmd2(
            real_features[rng.choice(len(real_features), size, replace=False)],
            generated_features[rng.choice(len(generated_features), size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(estimates)), float(np.std(estimates))


class KernelInceptionDistance:
    """Streaming Kernel Inception Distance (KID) between real and generated features.

    Unlike FID, KID is an unbiased estimator: its expectation does not depend on the number
    of samples and it is zero in expectation for two samples of one distribution. It keeps
    all features (not sufficient statistics), so memory grows with the number of samples.

    Args:
        feature_extractor: a `FeatureExtractor` or its name; when given, `update_state`
            takes images in [-1, 1], otherwise features [B, F].
        num_subsets: number of random subsets averaged (100 in Bińkowski et al.).
        subset_size: samples per side and subset (1000 in Bińkowski et al.).
        seed: seed of the subset draws.
        name: name of the metric.

    Example:

    ```python
    kid = keras_mm.metrics.KernelInceptionDistance(subset_size=500)
    kid.update_state(real=real_features, generated=generated_features)
    kid.result()  # {"kid": ..., "kid_std": ...}
    ```

    References:
        Bińkowski et al. 2018, "Demystifying MMD GANs", section 4.
    """

    def __init__(
        self,
        feature_extractor=None,
        num_subsets=100,
        subset_size=1000,
        seed=0,
        name="kernel_inception_distance",
    ):
        self.feature_extractor = (
            None if feature_extractor is None else get_feature_extractor(feature_extractor)
        )
        self.num_subsets = num_subsets
        self.subset_size = subset_size
        self.seed = seed
        self.name = name
        self.reset_state()

    def update_state(self, real=None, generated=None):
        """Adds a batch of real and/or generated images (or features)."""
        if real is not None:
            self._real.append(self._features(real))
        if generated is not None:
            self._generated.append(self._features(generated))

    def result(self):
        """`{"kid": mean, "kid_std": standard deviation over subsets}`."""
        if not self._real or not self._generated:
            raise ValueError(
                f"{self.name} needs real and generated samples; call `update_state` first."
            )
        kid, kid_std = kernel_inception_distance(
            np.concatenate(self._real),
            np.concatenate(self._generated),
            self.num_subsets,
            self.subset_size,
            self.seed,
        )
        return {"kid": kid, "kid_std": kid_std}

    def reset_state(self):
        self._real, self._generated = [], []

    def _features(self, inputs):
        if self.feature_extractor is None:
            return np.asarray(ops.convert_to_numpy(inputs), "float64")
        return self.feature_extractor(inputs)
