"""Datasets: the bundled digits, the user's own images, TFDS image datasets, captions.

Images come out as float32 in [-1, 1], channels last.
"""

from keras_mm.datasets.captions import (  # noqa: F401
    CAPTION_TEMPLATES,
    SHAPE_COLORS,
    SHAPE_POSITIONS,
    SHAPES,
    captioned_dataset,
    encode_captions,
    make_captioned_shapes,
)
from keras_mm.datasets.digits import infinite_batches, load_digits  # noqa: F401
from keras_mm.datasets.image_files import (  # noqa: F401
    load_captioned_folder,
    load_image_folder,
    load_npz,
)
from keras_mm.datasets.tfds_images import (  # noqa: F401
    DatasetNotAvailableError,
    tfds_image_dataset,
)
