from keras_mm.models.diffusion_model import DiffusionModel  # noqa: F401
