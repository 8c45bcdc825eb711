"""Class accuracy of class-conditional samples under a pretrained classifier."""

import numpy as np
from keras import ops

from keras_mm.metrics.extractors import get_feature_extractor


class ClassAccuracy:
    """Fraction of conditional samples that a pretrained classifier assigns their label.

    A check that a class-conditional generator (or a distilled one) still honours its
    labels, which FID alone does not measure.

    Args:
        classifier: a `FeatureExtractor` with a classifier head whose classes are the
            model's labels (e.g. `DigitsFeatures()` for digits), or its name. When `None`,
            `update_state` takes logits [B, K] instead of images.
        name: name of the metric.

    Example:

    ```python
    accuracy = keras_mm.metrics.ClassAccuracy(keras_mm.metrics.DigitsFeatures())
    labels = np.arange(100) % 10
    accuracy.update_state(model.sample(labels=labels, seed=0), labels)
    accuracy.result()  # e.g. 0.98
    ```
    """

    def __init__(self, classifier=None, name="class_accuracy"):
        self.classifier = None if classifier is None else get_feature_extractor(classifier)
        if self.classifier is not None and not getattr(self.classifier, "has_classifier", True):
            raise ValueError(
                f"ClassAccuracy needs a classifier head, but {self.classifier.name!r} has none."
            )
        self.name = name
        self.reset_state()

    def update_state(self, images, labels):
        """Adds generated `images` (or logits) and the labels they were conditioned on."""
        labels = np.asarray(ops.convert_to_numpy(labels)).astype("int64").reshape(-1)
        if self.classifier is None:
            predicted = np.argmax(np.asarray(ops.convert_to_numpy(images)), axis=-1)
        else:
            predicted = self.classifier.classify(images)
        if len(predicted) != len(labels):
            raise ValueError(f"Got {len(predicted)} images but {len(labels)} labels.")
        self._correct += int(np.sum(predicted == labels))
        self._count += len(labels)

    def result(self):
        """The fraction of samples classified as their label, a float in [0, 1]."""
        if self._count == 0:
            raise ValueError(f"{self.name} has no samples; call `update_state` first.")
        return self._correct / self._count

    def reset_state(self):
        self._correct = 0
        self._count = 0
