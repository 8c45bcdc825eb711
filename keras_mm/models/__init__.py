from keras_mm.models import conditioning  # noqa: F401
from keras_mm.models.diffusion_model import DiffusionModel  # noqa: F401
from keras_mm.models.mlp_denoiser import MLPDenoiser  # noqa: F401
from keras_mm.models.text_encoder import TextEncoder  # noqa: F401
from keras_mm.models.uvit import UViT  # noqa: F401
