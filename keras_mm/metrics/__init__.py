"""Sample-quality metrics: Fréchet distance (FID), KID, Inception Score, precision/recall.

Metrics compare features of real and generated images, computed by a `FeatureExtractor`:
`InceptionFeatures` (keras.applications Inception-v3; comparable within keras_mm, not to
published FIDs) or `DigitsFeatures` (a tiny shipped classifier of sklearn's 8x8 digits, for
CPU runs) or `ColorLayoutFeatures` (mean colours of image quadrants, for tiny colour images
such as the 8x8 captioned shapes). Statistics accumulate in float64 numpy.
"""

from keras_mm.metrics.class_accuracy import ClassAccuracy  # noqa: F401
from keras_mm.metrics.color_layout_features import ColorLayoutFeatures  # noqa: F401
from keras_mm.metrics.digits_features import DigitsFeatures  # noqa: F401
from keras_mm.metrics.feature_extractor import (  # noqa: F401
    FeatureExtractor,
    get_feature_extractor,
)
from keras_mm.metrics.feature_statistics import FeatureStatistics  # noqa: F401
from keras_mm.metrics.frechet_distance import FrechetDistance, frechet_distance  # noqa: F401
from keras_mm.metrics.inception_features import InceptionFeatures  # noqa: F401
from keras_mm.metrics.inception_score import InceptionScore, inception_score  # noqa: F401
from keras_mm.metrics.kernel_inception_distance import (  # noqa: F401
    KernelInceptionDistance,
    kernel_inception_distance,
)
from keras_mm.metrics.precision_recall import PrecisionRecall, precision_recall  # noqa: F401
from keras_mm.metrics.scores import sample_and_score  # noqa: F401
