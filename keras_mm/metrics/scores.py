"""One call that samples a class-conditional model and scores the samples."""

import time

import keras
import numpy as np

from keras_mm.metrics.class_accuracy import ClassAccuracy
from keras_mm.metrics.frechet_distance import FrechetDistance
from keras_mm.metrics.precision_recall import PrecisionRecall


def sample_and_score(model, labels, num_steps, reference, feature_extractor,
                     sampler="ancestral", seed=0, chunk_size=500):
    """Samples one image per label and scores them against `reference` images.

    The labels are sampled in chunks of about `chunk_size`, chunk i with seed `seed + i`, so
    the same arguments give the same samples.

    Args:
        model: a `DiffusionModel` (teacher or a distiller's generator) or anything with
            `sample(labels=..., num_steps=..., sampler=..., seed=...)`.
        labels: int class labels, one per sample.
        num_steps: sampling steps.
        reference: real images `[N, H, W, C]` in [-1, 1].
        feature_extractor: a `keras_mm.metrics.FeatureExtractor` with a classifier head
            (e.g. `DigitsFeatures()`).
        sampler: `"ancestral"` or `"ddim"`.
        seed: seed of the first chunk.
        chunk_size: samples per `model.sample` call (about).

    Returns:
        `(samples, results)`: the samples as a numpy array, and a dict with `fd` (Fréchet
        distance in the extractor's feature space), `accuracy` (class accuracy of the
        extractor's head), `precision`, `recall` (k = 3) and `seconds` (sampling time).

    Example:
    ```python
    samples, scores = keras_mm.metrics.sample_and_score(
        teacher, np.arange(1000) % 10, 64, images, keras_mm.metrics.DigitsFeatures())
    ```
    """
    labels = np.asarray(labels, "int32")
    start = time.time()
    chunks = np.array_split(labels, max(1, len(labels) // chunk_size))
    samples = np.concatenate([
        keras.ops.convert_to_numpy(
            model.sample(labels=chunk, num_steps=num_steps, sampler=sampler, seed=seed + i))
        for i, chunk in enumerate(chunks)
    ])
    seconds = time.time() - start
    fd = FrechetDistance(feature_extractor)
    fd.update_state(real=reference, generated=samples)
    accuracy = ClassAccuracy(feature_extractor)
    accuracy.update_state(samples, labels)
    precision_recall = PrecisionRecall(feature_extractor)
    precision_recall.update_state(real=reference, generated=samples)
    results = {"fd": float(fd.result()), "accuracy": float(accuracy.result()),
               **{key: float(value) for key, value in precision_recall.result().items()},
               "seconds": seconds}
    return samples, results
