"""Samplers: Algorithm 1 (ancestral) and DDIM, with guidance and clipping as wrappers.

A sampler takes `denoise_fn(z, logsnr) -> x_hat` (logsnr of shape [B]) and all of its noise
up front, so that results are reproducible from a seed on every backend and no random op
runs inside `ops.fori_loop` (a `SeedGenerator` inside a JAX loop fails). Both are written for
any scale family through `process.py`: they read `schedule.family`.
"""

from keras import ops

from keras_mm.diffusion.process import alpha_sigma, broadcast_to_data, posterior, prior_sample

SAMPLERS = ("ancestral", "ddim")


def num_noise_draws(sampler, num_steps):
    """How many standard-normal tensors of the data's shape `sampler` consumes."""
    check_num_steps(num_steps)
    if sampler == "ancestral":
        return num_steps  # z_1, then one draw per step except the last
    if sampler == "ddim":
        return 1
    raise ValueError(f"Unknown sampler {sampler!r}; expected one of {SAMPLERS}.")


def check_num_steps(num_steps):
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be an integer >= 1, got {num_steps!r}.")


def _logsnr_at(schedule, t, batch_size):
    return ops.full((batch_size,), 1.0, "float32") * schedule.logsnr(t)


def _family(schedule):
    # A schedule written before scale families (only `logsnr`) is variance preserving.
    return getattr(schedule, "family", "vp")


def _start(schedule, noise, batch_size):
    z_1 = noise[0]
    return prior_sample(z_1, broadcast_to_data(_logsnr_at(schedule, 1.0, batch_size), z_1),
                        _family(schedule))


def ancestral_sample(denoise_fn, schedule, noise, num_steps):
    """Algorithm 1: k steps on t = 1, (k-1)/k, ..., 1/k; returns the last x_hat.

    Args:
        denoise_fn: `(z_t, logsnr_t) -> x_hat`.
        schedule: the model's schedule (`logsnr(t)`, `family`).
        noise: standard normal of shape [num_steps, B, ...]: noise[0] gives z_1
            (`process.prior_sample`) and noise[i] is the fresh noise of step i.
        num_steps: k.

    Returns:
        x_hat of shape [B, ...].
    """
    check_num_steps(num_steps)
    batch_size = noise.shape[1] if noise.shape[1] is not None else ops.shape(noise)[1]

    def step(i, z):
        t = 1.0 - ops.cast(i, "float32") / num_steps
        s = t - 1.0 / num_steps
        logsnr_t = _logsnr_at(schedule, t, batch_size)
        x_hat = denoise_fn(z, logsnr_t)
        mean, std = posterior(
            z,
            x_hat,
            broadcast_to_data(logsnr_t, z),
            broadcast_to_data(_logsnr_at(schedule, s, batch_size), z),
            _family(schedule),
        )
        return mean + std * ops.take(noise, i + 1, axis=0)

    z = ops.fori_loop(0, num_steps - 1, step, _start(schedule, noise, batch_size))
    return denoise_fn(z, _logsnr_at(schedule, 1.0 / num_steps, batch_size))


def ddim_sample(denoise_fn, schedule, noise, num_steps):
    """DDIM (Song et al. 2021): z_s = alpha_s x_hat + sigma_s eps_hat on the same grid.

    `noise` has shape [1, B, ...] (only z_1 is random).
    """
    check_num_steps(num_steps)
    batch_size = noise.shape[1] if noise.shape[1] is not None else ops.shape(noise)[1]

    def step(i, z):
        t = 1.0 - ops.cast(i, "float32") / num_steps
        s = t - 1.0 / num_steps
        logsnr_t = _logsnr_at(schedule, t, batch_size)
        x_hat = denoise_fn(z, logsnr_t)
        logsnr_s = _logsnr_at(schedule, s, batch_size)
        alpha_t, sigma_t = alpha_sigma(broadcast_to_data(logsnr_t, z), _family(schedule))
        alpha_s, sigma_s = alpha_sigma(broadcast_to_data(logsnr_s, z), _family(schedule))
        eps_hat = (z - alpha_t * x_hat) / sigma_t
        return alpha_s * x_hat + sigma_s * eps_hat

    z = ops.fori_loop(0, num_steps - 1, step, _start(schedule, noise, batch_size))
    return denoise_fn(z, _logsnr_at(schedule, 1.0 / num_steps, batch_size))


def sample(denoise_fn, schedule, noise, num_steps, sampler="ancestral"):
    """Dispatch to `ancestral_sample` or `ddim_sample`."""
    if sampler == "ancestral":
        return ancestral_sample(denoise_fn, schedule, noise, num_steps)
    if sampler == "ddim":
        return ddim_sample(denoise_fn, schedule, noise, num_steps)
    raise ValueError(f"Unknown sampler {sampler!r}; expected one of {SAMPLERS}.")


def apply_guidance(x_cond, x_uncond, guidance_scale):
    """Classifier-free guidance: x_hat = (1 + w) x_cond - w x_uncond (Ho & Salimans 2022)."""
    return (1.0 + guidance_scale) * x_cond - guidance_scale * x_uncond


def clip_prediction(x_hat):
    """Clip x_hat to the data range [-1, 1]."""
    return ops.clip(x_hat, -1.0, 1.0)
