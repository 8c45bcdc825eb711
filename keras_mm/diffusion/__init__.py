from keras_mm.diffusion.process import (  # noqa: F401
    alpha_sigma,
    broadcast_to_data,
    diffuse,
    eps_from_x,
    posterior,
    v_from_x,
    x_from_eps,
    x_from_prediction,
    x_from_v,
)
from keras_mm.diffusion.samplers import (  # noqa: F401
    ancestral_sample,
    apply_guidance,
    clip_prediction,
    ddim_sample,
    num_noise_draws,
    sample,
)
from keras_mm.diffusion.schedules import CosineSchedule  # noqa: F401
from keras_mm.diffusion.time_sampling import (  # noqa: F401
    EDMTimeSampler,
    UniformTimeSampler,
    dmd_weight,
    edm_logsnr,
    edm_weight,
    flat_weight,
    get_time_sampler,
    v_weight,
)
