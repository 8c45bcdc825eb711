"""Feature extractors of the sample-quality metrics, and their registry by name.

Each extractor subclasses `keras_mm.metrics.FeatureExtractor` and lives in its own module;
`FEATURE_EXTRACTORS` maps the names that configs, `FIDCallback` and `Evaluator` accept to
those classes. Entries are import paths, so adding an extractor is one line here and loading
the registry builds no network.
"""

import importlib

# name -> "module:class"; the name is also the extractor's `.name` (its feature space).
FEATURE_EXTRACTORS = {
    "digits": "keras_mm.metrics.extractors.digits_features:DigitsFeatures",
    "color_layout": "keras_mm.metrics.extractors.color_layout_features:ColorLayoutFeatures",
    "inception_v3": "keras_mm.metrics.extractors.inception_features:InceptionFeatures",
    "fid_inception": "keras_mm.metrics.extractors.fid_inception:FIDInceptionFeatures",
}


def get_feature_extractor(identifier, **kwargs):
    """Returns a feature extractor from its name or an instance.

    Args:
        identifier: a `FeatureExtractor` or other callable with a `.name` (returned as
            is), or the name of a registered one (a key of `FEATURE_EXTRACTORS`, e.g.
            `"digits"`, `"inception_v3"`, `"color_layout"`, `"fid_inception"`).
        **kwargs: passed to the registered extractor's constructor.

    Returns:
        The feature extractor.

    Example:

    ```python
    extractor = keras_mm.metrics.get_feature_extractor("digits")
    extractor(images).shape  # (N, 64)
    ```
    """
    if not isinstance(identifier, str):
        return identifier
    if identifier not in FEATURE_EXTRACTORS:
        raise ValueError(
            f"Unknown feature extractor {identifier!r}; expected one of "
            f"{sorted(FEATURE_EXTRACTORS)} or a `keras_mm.metrics.FeatureExtractor` instance."
        )
    module, name = FEATURE_EXTRACTORS[identifier].split(":")
    return getattr(importlib.import_module(module), name)(**kwargs)
