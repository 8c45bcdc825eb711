import ast
import pathlib
import time

import keras
import numpy as np
import pytest
import scipy.linalg
from sklearn.datasets import load_digits

from keras_mm import metrics


def scipy_frechet_distance(features1, features2):
    """Independent FD: np.cov and scipy.linalg.sqrtm of the covariance product."""
    mean1, mean2 = features1.mean(axis=0), features2.mean(axis=0)
    covariance1 = np.cov(features1, rowvar=False)
    covariance2 = np.cov(features2, rowvar=False)
    sqrt_product = np.real(scipy.linalg.sqrtm(covariance1 @ covariance2))
    return np.sum((mean1 - mean2) ** 2) + np.trace(covariance1 + covariance2 - 2.0 * sqrt_product)


def gaussian_samples(rng, num_samples, num_features, condition_number=1.0, shift=0.0):
    """Samples of N(shift, Q diag(s²) Qᵀ) with singular values s spanning `condition_number`."""
    rotation, _ = np.linalg.qr(rng.normal(size=(num_features, num_features)))
    scales = np.logspace(0.0, -0.5 * np.log10(condition_number), num_features)
    return (rng.normal(size=(num_samples, num_features)) * scales) @ rotation.T + shift


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.images[..., None] / 8.0 - 1.0).astype("float32"), data.target


@pytest.fixture(scope="module")
def digits_features():
    return metrics.DigitsFeatures()


@pytest.mark.parametrize(
    "num_samples, num_features, condition_number",
    [(2000, 32, 1.0), (2000, 32, 1e8), (40, 64, 1.0), (30, 64, 1e4)],
    ids=["well_conditioned", "ill_conditioned", "fewer_samples_than_dims", "fewer_and_ill"],
)
def test_frechet_distance_matches_scipy_sqrtm(num_samples, num_features, condition_number):
    rng = np.random.default_rng(0)
    real = gaussian_samples(rng, num_samples, num_features, condition_number)
    generated = gaussian_samples(rng, num_samples, num_features, condition_number, shift=0.1)
    metric = metrics.FrechetDistance()
    metric.update_state(real=real, generated=generated)
    expected = scipy_frechet_distance(real, generated)
    assert isinstance(metric.result(), float)
    np.testing.assert_allclose(metric.result(), expected, rtol=1e-6)


def test_frechet_distance_streams_uneven_batches_like_one_batch():
    rng = np.random.default_rng(1)
    # A large common offset: the shifted sums keep the covariance exact anyway.
    real = rng.normal(size=(500, 16)) + 1e4
    generated = rng.normal(size=(300, 16)) * 1.5 + 1e4
    one_batch = metrics.FrechetDistance()
    one_batch.update_state(real=real, generated=generated)
    streamed = metrics.FrechetDistance()
    for part in np.split(real, [1, 8, 150, 151]):
        streamed.update_state(real=part)
    for part in np.split(generated, [3, 200]):
        streamed.update_state(generated=part)

    assert streamed.real_stats.count == 500
    np.testing.assert_allclose(streamed.real_stats.mean, real.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        streamed.real_stats.covariance, np.cov(real, rowvar=False), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(streamed.result(), one_batch.result(), rtol=1e-9)
    np.testing.assert_allclose(
        streamed.result(), scipy_frechet_distance(real, generated), rtol=1e-6
    )

    streamed.reset_state()
    with pytest.raises(ValueError, match="at least 2"):
        streamed.result()


def test_frechet_distance_near_zero_for_one_distribution_and_grows_with_shift():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(5000, 8))
    distances = []
    for shift in [0.0, 0.25, 0.5, 1.0]:
        metric = metrics.FrechetDistance()
        metric.update_state(real=real, generated=rng.normal(size=(5000, 8)) + shift)
        distances.append(metric.result())
    assert distances[0] < 0.02
    assert distances == sorted(distances)
    # For equal covariances FD is ‖μ₁ − μ₂‖² = 8 shift².
    np.testing.assert_allclose(distances[1:], [0.5, 2.0, 8.0], rtol=0.1)


def test_frechet_distance_function_and_errors():
    assert metrics.frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)) == 2.0
    # Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) = 1 + 4 − 2·2 = 1 for Σ₁ = I₁, Σ₂ = 4 I₁.
    assert metrics.frechet_distance([0.0], [[1.0]], [0.0], [[4.0]]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different feature extractors"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    metric = metrics.FrechetDistance()
    metric.update_state(real=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="earlier batches had 2"):
        metric.update_state(real=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="0 generated samples"):
        metric.result()
    with pytest.raises(ValueError, match="NaN"):
        metric.update_state(generated=np.full((2, 2), np.nan))


def test_feature_statistics_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(100, 5))
    stats = metrics.FeatureStatistics.from_features(features, "digits")
    path = str(tmp_path / "reference.npz")
    stats.save(path)
    with np.load(path) as data:
        assert set(data.files) == {"mean", "covariance", "count", "feature_extractor"}
    loaded = metrics.FeatureStatistics.load(path)
    assert loaded.count == 100 and loaded.feature_extractor_name == "digits"
    np.testing.assert_allclose(loaded.mean, stats.mean, rtol=1e-12)
    np.testing.assert_allclose(loaded.covariance, stats.covariance, rtol=1e-12)
    # Loaded statistics keep streaming.
    more = rng.normal(size=(50, 5))
    loaded.update(more)
    everything = np.concatenate([features, more])
    np.testing.assert_allclose(loaded.covariance, np.cov(everything, rowvar=False), rtol=1e-9)

    metric = metrics.FrechetDistance(reference_stats=path)
    with pytest.raises(ValueError, match="fixed `reference_stats`"):
        metric.update_state(real=features)
    with pytest.raises(ValueError, match="'digits'.*'inception_v3'"):
        metrics.FrechetDistance(
            metrics.FeatureExtractor(None, "inception_v3"), reference_stats=path
        )
    with pytest.raises(ValueError, match="at least 2"):
        _ = metrics.FeatureStatistics().covariance
    np.savez(str(tmp_path / "other.npz"), weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a statistics file"):
        metrics.FeatureStatistics.load(str(tmp_path / "other.npz"))


def test_kernel_inception_distance_same_distribution_and_shift():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(600, 16))
    metric = metrics.KernelInceptionDistance(num_subsets=50, subset_size=200)
    metric.update_state(real=real, generated=rng.normal(size=(600, 16)))
    same = metric.result()
    assert abs(same["kid"]) <= same["kid_std"]

    metric.reset_state()
    metric.update_state(real=real, generated=rng.normal(size=(600, 16)) + 0.5)
    shifted = metric.result()
    assert shifted["kid"] > 10 * shifted["kid_std"] > 0


def test_unbiased_mmd2_matches_direct_sum():
    from keras_mm.metrics.functional import polynomial_kernel, unbiased_mmd2

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    expected = (
        sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
        + sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
        - 2 * sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    )
    np.testing.assert_allclose(unbiased_mmd2(x, y), expected, rtol=1e-12)
    np.testing.assert_allclose(polynomial_kernel(x, y)[1, 2], k(x[1], y[2]), rtol=1e-12)


def test_precision_recall_identical_disjoint_and_mode_dropping():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(400, 8))
    metric = metrics.PrecisionRecall(k=3)
    metric.update_state(real=real, generated=real)
    assert metric.result() == {"precision": 1.0, "recall": 1.0}

    metric.reset_state()
    metric.update_state(real=real, generated=real + 100.0)
    assert metric.result() == {"precision": 0.0, "recall": 0.0}

    # Two modes in the data; the "generator" covers one. At this sample size the k-NN
    # balls cover ~90% of a same-distribution sample, so precision is high and recall halves.
    two_modes = np.concatenate([real[:200] - 20.0, real[200:] + 20.0])
    precision, recall = metrics.precision_recall(two_modes, rng.normal(size=(200, 8)) + 20.0)
    assert precision > 0.8
    assert 0.3 < recall < 0.55
    with pytest.raises(ValueError, match="more than 3 samples"):
        metrics.precision_recall(real[:3], real)


def test_inception_score_bounds():
    num_classes = 10
    uniform = np.zeros((100, num_classes))
    assert metrics.inception_score(uniform)[0] == pytest.approx(1.0)
    confident_and_diverse = 50.0 * np.eye(num_classes)[np.arange(100) % num_classes]
    score, score_std = metrics.inception_score(confident_and_diverse, num_splits=5)
    assert score == pytest.approx(num_classes, rel=1e-6) and score_std < 1e-6
    with pytest.raises(ValueError, match="at least 10 samples"):
        metrics.inception_score(uniform[:5])


def test_digits_features_frechet_distance_real_halves_vs_noise(digits, digits_features):
    images, labels = digits
    assert digits_features.name == "digits"
    assert digits_features.heldout_accuracy >= 0.97
    features = digits_features(images)
    assert features.shape == (len(images), 64) and features.dtype == np.float64

    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    halves = metrics.FrechetDistance(digits_features)
    halves.update_state(real=images[order[::2]], generated=images[order[1::2]])
    noise = metrics.FrechetDistance(digits_features)
    noise.update_state(real=images, generated=rng.normal(size=images.shape).astype("float32"))
    fd_halves, fd_noise = halves.result(), noise.result()
    print(
        f"\n[{keras.backend.backend()}] DigitsFeatures FD: real half vs real half = "
        f"{fd_halves:.4f}; real vs Gaussian noise = {fd_noise:.4f}"
    )
    assert fd_halves < 0.05 * fd_noise

    accuracy = metrics.ClassAccuracy(digits_features)
    accuracy.update_state(images, labels)
    assert accuracy.result() >= 0.97
    score = metrics.InceptionScore(digits_features)
    score.update_state(images)
    assert score.result()["inception_score"] > 9.0  # near the 10 classes for real digits
    with pytest.raises(ValueError, match=r"\[B, 8, 8, 1\]"):
        digits_features(np.zeros((2, 16, 16, 1), "float32"))


def test_reference_statistics_from_images_feed_frechet_distance(tmp_path, digits, digits_features):
    images, _ = digits
    stats = metrics.FeatureStatistics.from_images(images[:1000], digits_features, batch_size=300)
    stats.save(str(tmp_path / "digits.npz"))
    metric = metrics.FrechetDistance("digits", reference_stats=str(tmp_path / "digits.npz"))
    metric.update_state(generated=images[1000:1400])
    metric.update_state(generated=images[1400:])
    direct = metrics.FrechetDistance(digits_features)
    direct.update_state(real=images[:1000], generated=images[1000:])
    np.testing.assert_allclose(metric.result(), direct.result(), rtol=1e-6)


# Building Inception-v3 compiles ~90 initializer shapes on JAX (~25 s on 2 cores); ~3 s elsewhere.
slow_on_jax = pytest.mark.slow if keras.backend.backend() == "jax" else (lambda test: test)


@slow_on_jax
def test_inception_features_shapes_with_random_weights():
    start = time.time()
    extractor = metrics.InceptionFeatures(weights=None, batch_size=2)
    grayscale = np.random.default_rng(0).uniform(-1, 1, size=(2, 8, 8, 1)).astype("float32")
    features = extractor(grayscale)
    print(
        f"\n[{keras.backend.backend()}] InceptionFeatures build + forward: {time.time() - start:.1f}s"
    )
    assert extractor.name == "inception_v3"
    assert features.shape == (2, 2048) and np.all(np.isfinite(features))
    assert not extractor.has_classifier
    with pytest.raises(ValueError, match="classifier head"):
        extractor.predict_logits(grayscale)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        extractor(np.zeros((1, 8, 8, 2), "float32"))


class RealDigitsSampler:
    """Stands in for a model: `sample` returns real digits of the asked labels (a perfect
    sampler), or Gaussian noise; it records the seeds it was called with."""

    def __init__(self, images, labels, noise=False):
        self.images, self.labels, self.noise, self.seeds = images, labels, noise, []

    def sample(self, labels, num_steps, sampler, seed):
        self.seeds.append((seed, len(labels), num_steps, sampler))
        rng = np.random.default_rng(seed)
        if self.noise:
            return rng.normal(size=(len(labels), 8, 8, 1)).astype("float32")
        return np.stack([self.images[rng.choice(np.flatnonzero(self.labels == label))]
                         for label in labels])


def test_sample_and_score_perfect_sampler_and_noise(digits, digits_features):
    images, labels = digits
    wanted = np.arange(600) % 10
    perfect = RealDigitsSampler(images, labels)
    samples, scores = metrics.sample_and_score(perfect, wanted, 8, images, digits_features,
                                               sampler="ddim", seed=5, chunk_size=250)
    assert samples.shape == (600, 8, 8, 1)
    # Chunks of chunk_size, chunk i with seed + i.
    assert perfect.seeds == [(5, 250, 8, "ddim"), (6, 250, 8, "ddim"), (7, 100, 8, "ddim")]
    assert scores["accuracy"] >= 0.97  # real digits of the asked class
    assert scores["precision"] > 0.9 and scores["recall"] > 0.5
    assert scores["seconds"] >= 0
    _, noise_scores = metrics.sample_and_score(RealDigitsSampler(images, labels, noise=True),
                                               wanted, 8, images, digits_features)
    assert scores["fd"] < 0.05 * noise_scores["fd"]
    assert noise_scores["accuracy"] < 0.3 and noise_scores["precision"] < 0.1
    # The same arguments give the same samples and scores.
    again, scores_again = metrics.sample_and_score(perfect, wanted, 8, images, digits_features,
                                                   sampler="ddim", seed=5, chunk_size=250)
    np.testing.assert_array_equal(again, samples)
    assert scores_again["fd"] == scores["fd"]


def module_imports(path):
    """The keras_mm modules that the module at `path` imports at its top level."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_mm"):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name.startswith("keras_mm"))
    return imported


def test_metrics_modules_import_without_a_circle():
    package = pathlib.Path(metrics.__file__).parent
    graph = {}
    for path in package.rglob("*.py"):
        name = ".".join(("keras_mm", "metrics") + path.relative_to(package).with_suffix("").parts)
        graph[name.removesuffix(".__init__")] = module_imports(path)
    # The formulas and statistics work on arrays: they import nothing of keras_mm.
    assert graph["keras_mm.metrics.functional"] == set()
    assert graph["keras_mm.metrics.feature_statistics"] == set()
    # Extractors depend on the base class only; the registry imports no extractor module.
    assert graph["keras_mm.metrics.extractors"] == set()
    for name in ("digits_features", "color_layout_features", "inception_features",
                 "fid_inception"):
        assert graph[f"keras_mm.metrics.extractors.{name}"] == {
            "keras_mm.metrics.feature_extractor"}

    def visit(name, path):  # depth-first search for a cycle through submodules
        assert name not in path, f"import circle: {' -> '.join(path + [name])}"
        for child in graph.get(name, ()):
            if child != "keras_mm.metrics":  # the package's __init__ imports the rest
                visit(child, path + [name])

    for name in graph:
        if name != "keras_mm.metrics":
            visit(name, [])
    registry = metrics.extractors.FEATURE_EXTRACTORS
    assert sorted(registry) == ["color_layout", "digits", "fid_inception", "inception_v3"]
    assert metrics.get_feature_extractor("color_layout").name == "color_layout"
    with pytest.raises(ValueError, match="Unknown feature extractor 'nope'"):
        metrics.get_feature_extractor("nope")
