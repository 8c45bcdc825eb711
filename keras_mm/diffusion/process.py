"""The diffusion process z_t = alpha_t x + sigma_t eps in terms of logSNR (paper §2.1, eq. 1-2).

Every function takes logSNR values that broadcast against the data (shape [B, 1, ..., 1]
or scalars); `broadcast_to_data` makes that shape from a [B] vector. `family` is the
schedule's scale family ("vp", "flow" or "ve"; `schedule.family`, see `schedules.py`); the
default, variance preserving, computes exactly what it always has.
"""

from keras import ops

from keras_mm.diffusion.schedules import alpha_sigma


def broadcast_to_data(values, data):
    """Reshape a [B] vector to [B, 1, ..., 1] so that it broadcasts against `data`."""
    values = ops.convert_to_tensor(values, "float32")
    return ops.reshape(values, (-1,) + (1,) * (len(data.shape) - 1))


def diffuse(x, logsnr, noise, family="vp"):
    """Forward diffusion z_t = alpha_t x + sigma_t eps."""
    alpha, sigma = alpha_sigma(logsnr, family)
    return alpha * x + sigma * noise


def prior_sample(noise, logsnr, family="vp"):
    """The sampler's start z_1 from standard normal `noise`: sigma_1 eps for "ve" (EDM starts at
    sigma_max eps); eps itself for "vp" and "flow", whose sigma -> 1 as logSNR -> -inf."""
    if family == "ve":
        return alpha_sigma(logsnr, family)[1] * noise
    return noise


def posterior(z_t, x, logsnr_t, logsnr_s, family="vp"):
    """Mean and standard deviation of q(z_s | z_t, x) for s < t (eq. 1-2).

    With alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2,
    the mean is (alpha_{t|s} sigma_s^2 / sigma_t^2) z_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x
    and the variance sigma_{t|s}^2 sigma_s^2 / sigma_t^2. In any family sigma_{t|s}^2 =
    sigma_t^2 (1 - r) with r = SNR_t / SNR_s = exp(logsnr_t - logsnr_s), so this is
    mu = r (alpha_s / alpha_t) z_t + alpha_s (1 - r) x and variance sigma_s^2 (1 - r),
    which keeps its precision as s -> t (expm1).
    """
    alpha_t, _ = alpha_sigma(logsnr_t, family)
    alpha_s, sigma_s = alpha_sigma(logsnr_s, family)
    r = ops.exp(ops.minimum(logsnr_t - logsnr_s, 0.0))
    mean = r * (alpha_s / alpha_t) * z_t + alpha_s * (1.0 - r) * x
    std = sigma_s * ops.sqrt(-ops.expm1(ops.minimum(logsnr_t - logsnr_s, 0.0)))
    return mean, std


def x_from_eps(z, eps, logsnr, family="vp"):
    alpha, sigma = alpha_sigma(logsnr, family)
    return (z - sigma * eps) / alpha


def eps_from_x(z, x, logsnr, family="vp"):
    alpha, sigma = alpha_sigma(logsnr, family)
    return (z - alpha * x) / sigma


def x_from_v(z, v, logsnr, family="vp"):
    """v = alpha eps - sigma x (Salimans & Ho 2022), so x = (alpha z - sigma v) / (alpha^2 +
    sigma^2): alpha z - sigma v in the variance-preserving family."""
    alpha, sigma = alpha_sigma(logsnr, family)
    if family == "vp":
        return alpha * z - sigma * v
    return (alpha * z - sigma * v) / (alpha**2 + sigma**2)


def v_from_x(z, x, logsnr, family="vp"):
    alpha, sigma = alpha_sigma(logsnr, family)
    if family == "vp":
        return (alpha * z - x) / sigma
    return (alpha * z - (alpha**2 + sigma**2) * x) / sigma


def x_from_flow(z, flow, logsnr, family="vp"):
    """The flow-matching velocity u = eps - x (SD3's prediction): z = (alpha + sigma) x +
    sigma u, so x = (z - sigma u) / (alpha + sigma) (= z - t u in the "flow" family)."""
    alpha, sigma = alpha_sigma(logsnr, family)
    return (z - sigma * flow) / (alpha + sigma)


def flow_from_x(z, x, logsnr, family="vp"):
    """The velocity u = eps - x implied by x at z."""
    alpha, sigma = alpha_sigma(logsnr, family)
    return (z - (alpha + sigma) * x) / sigma


PREDICTION_TYPES = ("x", "eps", "v", "flow")


def x_from_prediction(prediction, z, logsnr, prediction_type, family="vp"):
    """Convert a network output of `prediction_type` ("x", "eps", "v" or "flow") into x-hat."""
    if prediction_type == "x":
        return prediction
    if prediction_type == "eps":
        return x_from_eps(z, prediction, logsnr, family)
    if prediction_type == "v":
        return x_from_v(z, prediction, logsnr, family)
    if prediction_type == "flow":
        return x_from_flow(z, prediction, logsnr, family)
    raise ValueError(
        f"Unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}."
    )
