"""The variance-preserving diffusion process in terms of logSNR (paper §2.1, eq. 1-2).

Every function takes logSNR values that broadcast against the data (shape [B, 1, ..., 1]
or scalars); `broadcast_to_data` makes that shape from a [B] vector.
"""

from keras import ops


def broadcast_to_data(values, data):
    """Reshape a [B] vector to [B, 1, ..., 1] so that it broadcasts against `data`."""
    values = ops.convert_to_tensor(values, "float32")
    return ops.reshape(values, (-1,) + (1,) * (len(data.shape) - 1))


def alpha_sigma(logsnr):
    """alpha_t, sigma_t with alpha^2 = sigmoid(logSNR), sigma^2 = sigmoid(-logSNR)."""
    return ops.sqrt(ops.sigmoid(logsnr)), ops.sqrt(ops.sigmoid(-logsnr))


def diffuse(x, logsnr, noise):
    """Forward diffusion z_t = alpha_t x + sigma_t eps."""
    alpha, sigma = alpha_sigma(logsnr)
    return alpha * x + sigma * noise


def posterior(z_t, x, logsnr_t, logsnr_s):
    """Mean and standard deviation of q(z_s | z_t, x) for s < t (eq. 1-2).

    Written with r = SNR_t / SNR_s = exp(logsnr_t - logsnr_s), which equals eq. 2:
    sigma_{t->s}^2 = sigma_s^2 (1 - r) and mu = r (alpha_s / alpha_t) z_t + alpha_s (1 - r) x.
    """
    alpha_t, _ = alpha_sigma(logsnr_t)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    r = ops.exp(ops.minimum(logsnr_t - logsnr_s, 0.0))
    mean = r * (alpha_s / alpha_t) * z_t + alpha_s * (1.0 - r) * x
    std = sigma_s * ops.sqrt(-ops.expm1(ops.minimum(logsnr_t - logsnr_s, 0.0)))
    return mean, std


def x_from_eps(z, eps, logsnr):
    alpha, sigma = alpha_sigma(logsnr)
    return (z - sigma * eps) / alpha


def eps_from_x(z, x, logsnr):
    alpha, sigma = alpha_sigma(logsnr)
    return (z - alpha * x) / sigma


def x_from_v(z, v, logsnr):
    """v = alpha eps - sigma x (Salimans & Ho 2022), so x = alpha z - sigma v."""
    alpha, sigma = alpha_sigma(logsnr)
    return alpha * z - sigma * v


def v_from_x(z, x, logsnr):
    alpha, sigma = alpha_sigma(logsnr)
    return (alpha * z - x) / sigma


PREDICTION_TYPES = ("x", "eps", "v")


def x_from_prediction(prediction, z, logsnr, prediction_type):
    """Convert a network output of `prediction_type` ("x", "eps" or "v") into x-hat."""
    if prediction_type == "x":
        return prediction
    if prediction_type == "eps":
        return x_from_eps(z, prediction, logsnr)
    if prediction_type == "v":
        return x_from_v(z, prediction, logsnr)
    raise ValueError(
        f"Unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}."
    )
