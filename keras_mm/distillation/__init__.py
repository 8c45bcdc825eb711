from keras_mm.distillation.distiller import MomentMatchingDistiller  # noqa: F401
from keras_mm.distillation.lora import LoRANetwork, merge_lora  # noqa: F401
from keras_mm.distillation.optimizers import (  # noqa: F401
    AdamWithoutMomentum,
    DecayToEndOfFit,
    WarmupLinearDecay,
    paper_adam,
)
from keras_mm.distillation.preconditioner import (  # noqa: F401
    estimate_preconditioner,
    preconditioner_from_adam,
)
