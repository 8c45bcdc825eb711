"""Sample-quality metrics: Fréchet distance (FID), KID, Inception Score, precision/recall.

Metrics compare features of real and generated images, computed by a `FeatureExtractor`
(registry and built-in extractors in `keras_mm.metrics.extractors`): `FIDInceptionFeatures`
(the 2015 Inception graph that published FIDs and Inception Scores use, converted once from
pytorch-fid's weights file), `InceptionFeatures` (keras.applications Inception-v3;
comparable within keras_mm, not to published FIDs),
`DigitsFeatures` (a tiny shipped classifier of sklearn's 8x8 digits, for CPU runs) or
`ColorLayoutFeatures` (mean colours of image quadrants, for tiny colour images such as the
8x8 captioned shapes). Statistics accumulate in float64 numpy.

Layout: `functional` holds the formulas as pure functions of features (it imports no
extractor); `FrechetDistance`, `KernelInceptionDistance`, `PrecisionRecall`,
`InceptionScore` and `ClassAccuracy` stream them over batches of images; `Evaluator` samples
a model with fixed seeds and conditions and scores it (what
`keras_mm.callbacks.FIDCallback` runs during `fit`).
"""

from keras_mm.metrics.class_accuracy import ClassAccuracy  # noqa: F401
from keras_mm.metrics.evaluation import Evaluator, sample_and_score  # noqa: F401
from keras_mm.metrics.extractors import get_feature_extractor  # noqa: F401
from keras_mm.metrics.extractors.color_layout_features import ColorLayoutFeatures  # noqa: F401
from keras_mm.metrics.extractors.digits_features import DigitsFeatures  # noqa: F401
from keras_mm.metrics.extractors.fid_inception import FIDInceptionFeatures  # noqa: F401
from keras_mm.metrics.extractors.inception_features import InceptionFeatures  # noqa: F401
from keras_mm.metrics.feature_extractor import FeatureExtractor  # noqa: F401
from keras_mm.metrics.feature_statistics import FeatureStatistics  # noqa: F401

# Each function (from `functional`) is imported with its class: importing a submodule binds
# the submodule's name here, and a function of the same name must be bound after it.
from keras_mm.metrics.frechet_distance import FrechetDistance, frechet_distance  # noqa: F401
from keras_mm.metrics.inception_score import InceptionScore, inception_score  # noqa: F401
from keras_mm.metrics.kernel_inception_distance import (  # noqa: F401
    KernelInceptionDistance,
    kernel_inception_distance,
)
from keras_mm.metrics.precision_recall import PrecisionRecall, precision_recall  # noqa: F401
