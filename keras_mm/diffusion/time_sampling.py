"""Time distributions p(s) and loss weights w(s) (paper §3.3).

Time samplers map uniform draws u ~ U[0, 1] to diffusion times; weights map logSNR to a
per-example loss weight. Both are plain `keras.ops` so they run inside compiled steps.
"""

from keras import ops

from keras_mm.diffusion.schedules import edm_logsnr


class EDMTimeSampler:
    """p(s): EDM's test-time schedule in logSNR, resolution-shifted, mapped to time.

    Args:
        schedule: the schedule whose `logsnr_shift` (a resolution shift of logSNR: the cosine
            schedule's 2 log(base / d), SD3's -2 log s, none for EDM) and time axis are used.
        sigma_min, sigma_max, rho: EDM's sampler constants (0.002, 80, 7).
    """

    name = "edm"

    def __init__(self, schedule, sigma_min=0.002, sigma_max=80.0, rho=7.0):
        self.schedule = schedule
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def __call__(self, u):
        logsnr = edm_logsnr(u, self.sigma_min, self.sigma_max, self.rho,
                            self.schedule.logsnr_shift)
        return self.schedule.t_from_logsnr(logsnr)


class UniformTimeSampler:
    """p(s) = U[0, 1] in diffusion time."""

    name = "uniform"

    def __init__(self, schedule=None):
        self.schedule = schedule

    def __call__(self, u):
        return ops.convert_to_tensor(u, "float32")


TIME_SAMPLERS = {"edm": EDMTimeSampler, "uniform": UniformTimeSampler}


def get_time_sampler(time_sampler, schedule):
    """Resolve a name ("edm", "uniform") or a callable u -> t into a time sampler."""
    if isinstance(time_sampler, str):
        if time_sampler not in TIME_SAMPLERS:
            raise ValueError(
                f"Unknown time_sampler {time_sampler!r}; expected one of "
                f"{sorted(TIME_SAMPLERS)} or a callable mapping u ~ U[0,1] to t."
            )
        return TIME_SAMPLERS[time_sampler](schedule)
    if not callable(time_sampler):
        raise TypeError(f"time_sampler must be a name or a callable, got {time_sampler!r}.")
    return time_sampler


def edm_weight(logsnr, sigma_data=0.5):
    """EDM's loss weight in x-space: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
    = SNR + 1 / sigma_data^2 with sigma^2 = 1 / SNR."""
    return ops.exp(logsnr) + 1.0 / sigma_data**2


def v_weight(logsnr):
    """The x-space weight of the v-prediction loss: ||v - v_hat||^2 = (SNR + 1) ||x - x_hat||^2."""
    return ops.exp(logsnr) + 1.0


def flow_weight(logsnr):
    """The x-space weight of the rectified-flow velocity loss: with z = (1 - t) x + t eps and
    u = eps - x, x-hat = z - t u-hat, so ||u - u-hat||^2 = ||x - x-hat||^2 / t^2, and
    1 / t = 1 + sqrt(SNR) in the "flow" family."""
    return ops.square(1.0 + ops.exp(0.5 * logsnr))


def flat_weight(logsnr):
    """w(s) = 1."""
    return ops.ones_like(logsnr)


def dmd_weight(x, x_teacher):
    """DMD's adaptive weight (Yin et al. 2023, eq. 8): 1 / mean|x - x_teacher| per example,
    treated as a constant (no gradient)."""
    x = ops.stop_gradient(x)
    x_teacher = ops.stop_gradient(x_teacher)
    axes = tuple(range(1, len(x.shape)))
    return 1.0 / (ops.mean(ops.abs(x - x_teacher), axis=axes) + 1e-4)


WEIGHTINGS = {"edm": edm_weight, "flat": flat_weight, "flow": flow_weight, "v": v_weight}

__all__ = [
    "EDMTimeSampler",
    "UniformTimeSampler",
    "dmd_weight",
    "edm_logsnr",
    "edm_weight",
    "flat_weight",
    "get_time_sampler",
    "v_weight",
]
