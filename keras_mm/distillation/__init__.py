from keras_mm.distillation.distiller import (  # noqa: F401
    MomentMatchingDistiller,
    WarmupLinearDecay,
    paper_adam,
)
from keras_mm.distillation.optimizers import AdamWithoutMomentum  # noqa: F401
from keras_mm.distillation.preconditioner import (  # noqa: F401
    estimate_preconditioner,
    preconditioner_from_adam,
)
