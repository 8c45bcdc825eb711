"""`keras_mm.metrics.Evaluator`: fixed seeds and conditions, scores of a perfect sampler vs
noise, and the model's own condition checks."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

import keras_mm
from keras_mm import metrics
from keras_mm.metrics.evaluation import sample_batches
from tests.helpers import TinyConvNet

ALL_METRICS = ("kid", "precision_recall", "inception_score", "class_accuracy")


class DigitsSampler:
    """Stands in for a model: `sample` returns real digits of the asked labels (a perfect
    sampler), or Gaussian noise; it records each call's seed and keyword arguments."""

    def __init__(self, images, labels, noise=False):
        self.images, self.labels, self.noise, self.calls = images, labels, noise, []

    def sample(self, labels, seed, **kwargs):
        self.calls.append((seed, len(labels), kwargs))
        rng = np.random.default_rng(seed)
        if self.noise:
            return rng.normal(size=(len(labels), 8, 8, 1)).astype("float32")
        return np.stack([self.images[rng.choice(np.flatnonzero(self.labels == label))]
                         for label in labels])


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.images[..., None] / 8.0 - 1.0).astype("float32"), data.target


@pytest.fixture(scope="module")
def evaluator(digits):
    return metrics.Evaluator(
        reference_data=digits[0], feature_extractor=metrics.DigitsFeatures(), num_samples=300,
        labels=10, num_steps=4, seed=3, batch_size=128, extra_metrics=ALL_METRICS,
    )  # fmt: skip


def test_evaluator_scores_a_perfect_sampler_far_above_noise(digits, evaluator):
    perfect = DigitsSampler(*digits)
    results = evaluator.evaluate(perfect)
    assert list(results) == list(evaluator.metric_names) == [
        "fid", "kid", "kid_std", "precision", "recall", "inception_score",
        "inception_score_std", "class_accuracy"]  # fmt: skip
    # Batches of batch_size, batch i with seed + i; num_steps passed, unset sampler left out.
    assert perfect.calls == [(3, 128, {"num_steps": 4}), (4, 128, {"num_steps": 4}),
                                    (5, 44, {"num_steps": 4})]
    noise = evaluator.evaluate(DigitsSampler(*digits, noise=True))
    assert results["fid"] < 0.05 * noise["fid"]
    assert abs(results["kid"]) < 3 * results["kid_std"] + 1e-3 < noise["kid"]
    assert results["precision"] > 0.9 and noise["precision"] < 0.1
    assert results["class_accuracy"] >= 0.97 and noise["class_accuracy"] < 0.3
    # Real digits, balanced and confidently classified: close to the 10 classes.
    assert results["inception_score"] > 8 > noise["inception_score"]
    # Fixed seeds and labels: the same model gives the same numbers.
    assert evaluator.evaluate(perfect) == results
    samples = evaluator.evaluate(perfect, return_samples=True)[1]
    assert samples.shape == (300, 8, 8, 1) and evaluator.sampling_seconds >= 0


def test_evaluator_non_finite_samples_give_nan_scores(digits, evaluator):
    class NaNSampler:
        def sample(self, labels, seed, **kwargs):
            return np.full((len(labels), 8, 8, 1), np.nan, "float32")

    with pytest.warns(UserWarning, match="NaN"):
        results = evaluator.evaluate(NaNSampler())
    assert list(results) == list(evaluator.metric_names)
    assert all(np.isnan(value) for value in results.values())


def test_sample_batches_slices_the_condition_per_batch():
    class Recorder:
        def __init__(self):
            self.calls = []

        def sample(self, **kwargs):
            self.calls.append(kwargs)
            size = kwargs.get("num_samples") or len(kwargs["labels"])
            return np.zeros((size, 2, 2, 1))

    condition = {"labels": np.arange(5), "text_embeddings": np.arange(5.0)[:, None]}
    recorder = Recorder()
    batches = list(sample_batches(recorder, 5, 7, 2, condition, num_steps=3,
                                  guidance_scale=None))
    assert [len(images) for images, _ in batches] == [2, 2, 1]
    calls = recorder.calls
    assert [call["seed"] for call in calls] == [7, 8, 9]
    assert [call["labels"].tolist() for call in calls] == [[0, 1], [2, 3], [4]]
    assert calls[2]["condition"]["text_embeddings"].tolist() == [[4.0]]
    assert all("guidance_scale" not in call and call["num_steps"] == 3 for call in calls)
    recorder = Recorder()
    list(sample_batches(recorder, 3, 0, 2))  # unconditional: num_samples per batch
    assert [call["num_samples"] for call in recorder.calls] == [2, 1]


def test_evaluator_uses_the_models_condition_checks(digits):
    teacher = keras_mm.DiffusionModel(TinyConvNet(), seed=0)
    images = digits[0]

    def evaluator(**kwargs):
        return metrics.Evaluator(reference_data=images, feature_extractor="digits",
                                 num_samples=20, num_steps=2, batch_size=10, **kwargs)

    with pytest.raises(ValueError, match="class-conditional"):
        evaluator().evaluate(teacher)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        evaluator(labels=np.full(20, 11)).check_model(teacher)
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=2)
    with pytest.raises(ValueError, match="class-conditional"):
        evaluator().check_model(distiller)  # a distiller is checked by its generator
    results, samples = evaluator(labels=10).evaluate(teacher, return_samples=True)
    assert samples.shape == (20, 8, 8, 1) and np.isfinite(results["fid"])


def test_evaluator_argument_errors(digits):
    images = digits[0]
    stats = metrics.FeatureStatistics.from_images(images, metrics.DigitsFeatures())
    with pytest.raises(ValueError, match="exactly one"):
        metrics.Evaluator()
    with pytest.raises(ValueError, match="reference_data"):
        metrics.Evaluator(reference_stats=stats, extra_metrics=["kid"])
    with pytest.raises(ValueError, match="Unknown `extra_metrics`"):
        metrics.Evaluator(reference_stats=stats, extra_metrics=["fvd"])
    with pytest.raises(ValueError, match="needs `labels`"):
        metrics.Evaluator(reference_stats=stats, extra_metrics=["class_accuracy"])
    with pytest.raises(ValueError, match="one integer label per sample"):
        metrics.Evaluator(reference_stats=stats, num_samples=10, labels=[0, 1])
    with pytest.raises(ValueError, match="rows; it needs one per sample"):
        metrics.Evaluator(reference_stats=stats, num_samples=10,
                          condition={"text_embeddings": np.zeros((4, 2, 3))})
    with pytest.raises(ValueError, match="'digits'"):  # stats of another feature space
        metrics.Evaluator(reference_stats=stats, feature_extractor="color_layout")
