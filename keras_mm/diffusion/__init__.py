from keras_mm.diffusion.process import (  # noqa: F401
    alpha_sigma,
    broadcast_to_data,
    diffuse,
    eps_from_x,
    flow_from_x,
    posterior,
    prior_sample,
    v_from_x,
    x_from_eps,
    x_from_flow,
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
from keras_mm.diffusion.schedules import (  # noqa: F401
    FAMILIES,
    CosineSchedule,
    EDMSchedule,
    FlowMatchingSchedule,
)
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
