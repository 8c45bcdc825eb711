"""Inception-v3 pool features (and logits) from `keras.applications`, for FID, KID and IS."""

import keras

from keras_mm.metrics.feature_extractor import FeatureExtractor

INCEPTION_IMAGE_SIZE = 299


class InceptionFeatures(FeatureExtractor):
    """2048-d pool features of `keras.applications.InceptionV3`, for FID, KID and IS.

    Images in [-1, 1] are clipped, grayscale is repeated to RGB, and each batch is resized
    to 299x299 (bilinear, antialiased when shrinking) inside the network. [-1, 1] is
    already the range that `keras.applications.inception_v3.preprocess_input` produces
    from [0, 255], so no other preprocessing is applied.

    Not the published FID network: the ImageNet weights of `keras.applications` differ
    from the TF-GAN / `pt_inception-2015-12-05` Inception graph that published FIDs (and the
    paper's tables) use, and so does the resizing. FIDs computed with `InceptionFeatures`
    are comparable with each other, across keras_mm runs and backends, but not with numbers
    in papers. For those, compute features with the reference graph (e.g. `clean-fid` or
    `torch-fidelity`) and pass them to `FrechetDistance` as features.

    Args:
        weights: `"imagenet"` (downloaded by Keras on first use, about 90 MB), `None`
            (random, for tests), or a path to a weights file.
        classifier_head: also build the 1000-way ImageNet head, so that `predict_logits`
            and `classify` work (Inception Score). The features are the same either way.
        batch_size: images per forward pass.

    Example:

    ```python
    extractor = keras_mm.metrics.InceptionFeatures()   # downloads the weights once
    stats = keras_mm.metrics.FeatureStatistics.from_images(real_images, extractor)
    stats.save("reference_inception.npz")
    ```

    References:
        Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision";
        Heusel et al. 2017 (FID); Parmar et al. 2022, "On Aliased Resizing and Surprising
        Subtleties in GAN Evaluation" (why the network and resizing must match).
    """

    def __init__(self, weights="imagenet", classifier_head=False, batch_size=64):
        self.weights = weights
        self.classifier_head = classifier_head
        size = INCEPTION_IMAGE_SIZE
        inputs = keras.Input((None, None, 3), name="images")
        resized = keras.layers.Resizing(
            size, size, interpolation="bilinear", antialias=True, name="resize"
        )(inputs)
        if classifier_head:
            network = keras.applications.InceptionV3(
                include_top=True,
                weights=weights,
                input_shape=(size, size, 3),
                classifier_activation=None,
            )
            network = keras.Model(
                network.input,
                [network.get_layer("avg_pool").output, network.outputs[0]],
                name="inception_v3",
            )
        else:
            network = keras.applications.InceptionV3(
                include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg"
            )
        model = keras.Model(inputs, network(resized), name="inception_features")
        super().__init__(model, name="inception_v3", batch_size=batch_size)

    def preprocess(self, images):
        return self.rgb_in_range(images)
