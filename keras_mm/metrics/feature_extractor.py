"""Base class of the feature networks that sample-quality metrics run images through.

The built-in extractors and their registry by name live in `keras_mm.metrics.extractors`.
"""

import numpy as np
from keras import ops


class FeatureExtractor:
    """Runs a Keras network over images in [-1, 1] and returns numpy features.

    The metrics of `keras_mm.metrics` work on features, not pixels: Fréchet distance and
    KID compare feature distributions, precision/recall compare feature manifolds, and
    Inception Score and class accuracy read a classifier head. A `FeatureExtractor` hides
    the network behind one contract:

    - `extractor(images) -> np.ndarray [B, F]`, float64, for images in [-1, 1] (NHWC);
    - `extractor.name`, stored with reference statistics so that statistics computed by
      different networks are never compared;
    - for networks with a classifier head, `predict_logits(images) -> [B, num_classes]`
      and `classify(images) -> int [B]`.

    Subclass it (see `DigitsFeatures`, `InceptionFeatures`) or wrap your own network.

    Args:
        model: a `keras.Model` taking a batch of preprocessed images and returning the
            features `[B, F]`, or a list `[features, logits]` when it has a classifier head.
        name: the feature space's name, e.g. `"inception_v3"`. Two extractors with the
            same name must produce the same features.
        batch_size: images per forward pass.

    Example:

    ```python
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Dense(16)(keras.layers.Flatten()(inputs))
    extractor = keras_mm.metrics.FeatureExtractor(
        keras.Model(inputs, features), name="my_features"
    )
    features = extractor(np.zeros((4, 8, 8, 1), "float32"))  # shape (4, 16)
    ```
    """

    def __init__(self, model, name, batch_size=256):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        self.model = model
        self.name = name
        self.batch_size = batch_size

    @property
    def has_classifier(self):
        """Whether the network has a classifier head (needed by IS and class accuracy)."""
        return isinstance(self.model.outputs, (list, tuple)) and len(self.model.outputs) == 2

    @property
    def num_features(self):
        return int(self.model.outputs[0].shape[-1])

    @property
    def num_classes(self):
        if not self.has_classifier:
            return None
        return int(self.model.outputs[1].shape[-1])

    def preprocess(self, images):
        """Maps a numpy batch in [-1, 1] to the network's input. Override in subclasses."""
        return images

    def rgb_in_range(self, images):
        """Grayscale repeated to RGB and values clipped to [-1, 1], for RGB networks."""
        channels = images.shape[-1]
        if channels == 1:
            images = np.repeat(images, 3, axis=-1)
        elif channels != 3:
            raise ValueError(
                f"{type(self).__name__} expects 1 or 3 channels (NHWC), got images of shape "
                f"{images.shape}."
            )
        return np.clip(images, -1.0, 1.0)

    def __call__(self, images):
        """Features of `images` ([B, H, W, C] in [-1, 1]) as a float64 array [B, F]."""
        return self.features_and_logits(images)[0]

    def predict_logits(self, images):
        """Classifier logits of `images` as a float64 array [B, num_classes]."""
        self._require_classifier("predict_logits")
        return self.features_and_logits(images)[1]

    def classify(self, images):
        """Predicted class of each image as an int64 array [B]."""
        return np.argmax(self.predict_logits(images), axis=-1)

    def features_and_logits(self, images):
        """One pass over `images`: `(features [B, F], logits [B, K] or None)`."""
        images = self._check_images(images)
        features, logits = [], []
        for start in range(0, len(images), self.batch_size):
            batch = self.preprocess(images[start : start + self.batch_size])
            outputs = self.model.predict_on_batch(batch)
            if self.has_classifier:
                features.append(ops.convert_to_numpy(outputs[0]))
                logits.append(ops.convert_to_numpy(outputs[1]))
            else:
                if isinstance(outputs, (list, tuple)):
                    outputs = outputs[0]
                features.append(ops.convert_to_numpy(outputs))
        features = np.concatenate(features).astype("float64")
        logits = np.concatenate(logits).astype("float64") if logits else None
        return features, logits

    def _check_images(self, images):
        images = np.asarray(ops.convert_to_numpy(images))
        if images.dtype == np.uint8:  # [0, 255], as reference data often comes
            images = images.astype("float32") / 127.5 - 1.0
        images = images.astype("float32")
        if images.ndim != 4:
            raise ValueError(
                f"{type(self).__name__} expects images of shape [B, H, W, C] (NHWC), got "
                f"shape {images.shape}."
            )
        if len(images) == 0:
            raise ValueError(f"{type(self).__name__} got an empty batch of images.")
        return images

    def _require_classifier(self, what):
        if not self.has_classifier:
            raise ValueError(
                f"`{what}` needs a classifier head, but feature extractor {self.name!r} has "
                "none. Use an extractor with a head, e.g. `DigitsFeatures()`, "
                "`FIDInceptionFeatures()` or `InceptionFeatures(classifier_head=True)`."
            )

