"""The sample-quality metrics as pure functions of features or logits (NumPy, float64).

Fréchet distance, KID, improved precision/recall and Inception Score, each the formula of its
paper. They take arrays, not images, so they import no feature extractor; the streaming
classes (`FrechetDistance`, ...) and `Evaluator` compute the features and call these.
"""

import numpy as np
from scipy.special import log_softmax


def frechet_distance(mean1, covariance1, mean2, covariance2):
    """Fréchet distance between N(mean1, covariance1) and N(mean2, covariance2).

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)   (Heusel et al. 2017, eq. 6; Dowson &
    Landau 1982).

    Tr((Σ₁Σ₂)^½) is the sum of the square roots of the eigenvalues of Σ₁Σ₂, which are those
    of the symmetric positive semi-definite Σ₁^½ Σ₂ Σ₁^½. Both square roots are taken by
    symmetric eigendecomposition with round-off negatives clipped to zero, so the result is
    real and stays accurate for singular or ill-conditioned covariances (fewer samples than
    feature dimensions), where `scipy.linalg.sqrtm(Σ₁ @ Σ₂)` leaves complex parts or fails.

    Args:
        mean1, mean2: feature means, shape [F].
        covariance1, covariance2: feature covariances, shape [F, F].

    Returns:
        A Python float >= 0.

    Example:

    ```python
    d = keras_mm.metrics.frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2))
    # 2.0
    ```
    """
    mean1, mean2 = np.asarray(mean1, "float64"), np.asarray(mean2, "float64")
    covariance1 = np.asarray(covariance1, "float64")
    covariance2 = np.asarray(covariance2, "float64")
    num_features = mean1.shape[-1]
    shapes = (mean1.shape, mean2.shape, covariance1.shape, covariance2.shape)
    if shapes != ((num_features,),) * 2 + ((num_features, num_features),) * 2:
        raise ValueError(
            "Means must have shape [F] and covariances [F, F] with one F; got mean shapes "
            f"{mean1.shape} and {mean2.shape}, covariance shapes {covariance1.shape} and "
            f"{covariance2.shape}. Were the two statistics computed by different feature "
            "extractors?"
        )
    sqrt_covariance1 = _psd_sqrt(covariance1)
    product = sqrt_covariance1 @ covariance2 @ sqrt_covariance1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt_product = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
    distance = (
        np.sum((mean1 - mean2) ** 2)
        + np.trace(covariance1)
        + np.trace(covariance2)
        - 2.0 * trace_sqrt_product
    )
    # Round-off can take a zero distance slightly below 0.
    return float(max(distance, 0.0))


def _psd_sqrt(matrix):
    """Symmetric square root of a positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


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


def _feature_pair(real_features, generated_features):
    """Both feature sets as float64 [N, F] arrays of one width, or a ValueError."""
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
    return real_features, generated_features


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
    real_features, generated_features = _feature_pair(real_features, generated_features)
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
    real_features, generated_features = _feature_pair(real_features, generated_features)
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
