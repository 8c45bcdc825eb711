"""A tiny classifier of scikit-learn's 8x8 digits, shipped with keras_mm, as a feature network."""

import os

import keras
import numpy as np

from keras_mm.metrics.feature_extractor import FeatureExtractor

DIGITS_WEIGHTS_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "assets",
    "digits_classifier.npz",
)
DIGITS_IMAGE_SHAPE = (8, 8, 1)
DIGITS_NUM_CLASSES = 10


def build_digits_classifier(num_features=64, dropout=0.3):
    """The digits classifier: two convolutions, a `num_features`-unit layer, 10 logits.

    Returns a `keras.Model` mapping images [B, 8, 8, 1] in [-1, 1] to logits [B, 10]; its
    layer named `"features"` is the penultimate layer that `DigitsFeatures` reads.
    `scripts/train_digits_features.py` trains it; `DigitsFeatures` rebuilds it and loads the
    shipped weights.
    """
    inputs = keras.Input(DIGITS_IMAGE_SHAPE, name="images")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_1")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv_2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(dropout, name="dropout_1")(x)
    x = keras.layers.Dense(num_features, activation="relu", name="features")(x)
    x = keras.layers.Dropout(dropout, name="dropout_2")(x)
    logits = keras.layers.Dense(DIGITS_NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name="digits_classifier")


def save_digits_classifier_weights(model, path, **metadata):
    """Saves the classifier's weights as an `.npz` of numpy arrays (`"<layer>/<index>"`).

    Plain arrays load into the rebuilt model on every backend. `metadata` (e.g. the
    held-out accuracy) is stored under `"meta/<key>"`.
    """
    arrays = {}
    for layer in model.layers:
        for index, weight in enumerate(layer.get_weights()):
            arrays[f"{layer.name}/{index}"] = weight.astype("float32")
    for key, value in metadata.items():
        arrays[f"meta/{key}"] = np.asarray(value)
    np.savez_compressed(path, **arrays)


def load_digits_classifier_weights(model, path):
    """Loads weights saved by `save_digits_classifier_weights` into `model`."""
    with np.load(path) as arrays:
        for layer in model.layers:
            if not layer.weights:
                continue
            keys = [f"{layer.name}/{index}" for index in range(len(layer.weights))]
            missing = [key for key in keys if key not in arrays]
            if missing:
                raise ValueError(
                    f"Weights file {path!r} has no arrays {missing} for layer {layer.name!r}. "
                    "Retrain with `python scripts/train_digits_features.py`."
                )
            layer.set_weights([arrays[key] for key in keys])
        return {
            key[len("meta/") :]: arrays[key].item() for key in arrays if key.startswith("meta/")
        }


class DigitsFeatures(FeatureExtractor):
    """Features of a small convnet trained on scikit-learn's 8x8 digits (shipped weights).

    The counterpart of `InceptionFeatures` for the CPU demo and benchmarks: Fréchet
    distance, KID and precision/recall in its 64-d penultimate layer, and Inception Score
    and class accuracy from its 10-way head. The weights ship with keras_mm (about 150 KB),
    trained by `scripts/train_digits_features.py` on 80% of the digits; its held-out
    accuracy is in `DigitsFeatures().heldout_accuracy` (above 97%).

    Images are digits in the keras_mm convention: `x = images / 8 - 1` for
    `sklearn.datasets.load_digits().images`, shape [B, 8, 8, 1], in [-1, 1]. Inputs are
    clipped to [-1, 1], as saving samples as images would do.

    Args:
        weights: path of the `.npz` weights; defaults to the shipped ones.
        batch_size: images per forward pass.

    Example:

    ```python
    from sklearn.datasets import load_digits

    x = load_digits().images[..., None] / 8.0 - 1.0
    extractor = keras_mm.metrics.DigitsFeatures()
    features = extractor(x)            # (1797, 64)
    labels = extractor.classify(x)     # (1797,)
    ```
    """

    def __init__(self, weights=None, batch_size=512):
        self.weights = weights
        classifier = build_digits_classifier()
        self.metadata = load_digits_classifier_weights(
            classifier, DIGITS_WEIGHTS_PATH if weights is None else weights
        )
        model = keras.Model(
            classifier.input,
            [classifier.get_layer("features").output, classifier.outputs[0]],
            name="digits_features",
        )
        super().__init__(model, name="digits", batch_size=batch_size)

    @property
    def heldout_accuracy(self):
        """Accuracy on the held-out digits, as measured by the training script."""
        return self.metadata.get("heldout_accuracy")

    def preprocess(self, images):
        if tuple(images.shape[1:]) != DIGITS_IMAGE_SHAPE:
            raise ValueError(
                f"DigitsFeatures expects images of shape [B, 8, 8, 1], got {images.shape}. "
                "Map sklearn digits with `images[..., None] / 8 - 1`."
            )
        return np.clip(images, -1.0, 1.0)
