"""The only backend-specific code in keras_mm: gradients over variable values, and the train
step that threads Keras state through JAX's stateless trainer."""

from keras_mm.backend.autodiff import (  # noqa: F401
    compile_with_variables,
    jvp,
    no_grad,
    stopped,
    value_and_grad,
    variable_values,
)
from keras_mm.backend.graph import computed_after, graph_assert  # noqa: F401
from keras_mm.backend.optimizers import (  # noqa: F401
    fused_clip_by_global_norm,
    fused_velocity_update,
)
from keras_mm.backend.remat import rematerialized  # noqa: F401
from keras_mm.backend.trainer import IterationTrainer  # noqa: F401
