"""The only backend-specific code in keras_mm: gradients over variable values, and the train
step that threads Keras state through JAX's stateless trainer."""

from keras_mm.backend.autodiff import jvp, value_and_grad, variable_values  # noqa: F401
from keras_mm.backend.trainer import IterationTrainer  # noqa: F401
