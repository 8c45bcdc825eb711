"""keras_mm: multistep distillation of diffusion models via moment matching, for Keras 3."""

from keras_mm import (  # noqa: F401
    callbacks,
    configs,
    datasets,
    diffusion,
    distribution,
    images,
    metrics,
    training,
)
from keras_mm.callbacks import FIDCallback, SampleGridCallback  # noqa: F401
from keras_mm.diffusion import CosineSchedule, EDMSchedule, FlowMatchingSchedule  # noqa: F401
from keras_mm.distillation import (  # noqa: F401
    MomentMatchingDistiller,
    estimate_preconditioner,
    preconditioner_from_adam,
)
from keras_mm.export import export_sampler  # noqa: F401
from keras_mm.models import DiffusionModel, MLPDenoiser, TextEncoder, UViT  # noqa: F401
from keras_mm.models.sd3 import (  # noqa: F401
    SD3Conditioning,
    SD3Decoder,
    SD3Denoiser,
    sd3_teacher,
)

__version__ = "0.1.0"
