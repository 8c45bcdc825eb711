"""Noise schedules: a map from sampler time t to logSNR (paper §2.1) plus a scale family.

A scale family gives (alpha, sigma) as functions of logSNR = log(alpha^2 / sigma^2), so that
z_t = alpha_t x + sigma_t eps:
- "vp" (variance preserving): alpha^2 = sigmoid(logSNR), sigma^2 = sigmoid(-logSNR);
- "flow" (rectified flow, SD3): alpha = sigmoid(logSNR / 2) = 1 - t,
  sigma = sigmoid(-logSNR / 2) = t;
- "ve" (variance exploding, EDM): alpha = 1, sigma = exp(-logSNR / 2).
"""

import math

import keras
from keras import ops

FAMILIES = ("vp", "flow", "ve")


def alpha_sigma(logsnr, family="vp"):
    """alpha(logSNR), sigma(logSNR) of the scale `family` ("vp", "flow" or "ve")."""
    if family == "vp":
        return ops.sqrt(ops.sigmoid(logsnr)), ops.sqrt(ops.sigmoid(-logsnr))
    if family == "flow":
        return ops.sigmoid(0.5 * logsnr), ops.sigmoid(-0.5 * logsnr)
    if family == "ve":
        sigma = ops.exp(-0.5 * logsnr)
        return ops.ones_like(sigma), sigma
    raise ValueError(
        f"Unknown scale family {family!r}; expected one of {FAMILIES} (pass `schedule.family`)."
    )


def edm_logsnr(u, sigma_min=0.002, sigma_max=80.0, rho=7.0, shift=0.0):
    """EDM's test-time noise levels as logSNR: sigma = (sigma_max^(1/rho) + u (sigma_min^(1/rho)
    - sigma_max^(1/rho)))^rho, logSNR = -2 log sigma + shift (Karras et al. 2022, eq. 5)."""
    u = ops.convert_to_tensor(u, "float32")
    inv_rho = 1.0 / rho
    sigma = (sigma_max**inv_rho + u * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return -2.0 * ops.log(sigma) + shift


class Schedule:
    """What every schedule shares: its scale family's (alpha, sigma) and config round trip.

    Subclasses set `family` and `logsnr_shift` (the constant added to logSNR by a resolution
    shift, used by `EDMTimeSampler`) and define `logsnr(t)`, `t_from_logsnr(logsnr)` and
    `get_config()`.
    """

    family = "vp"
    logsnr_shift = 0.0

    def alpha_sigma(self, logsnr):
        """alpha, sigma of this schedule's scale family at `logsnr`."""
        return alpha_sigma(logsnr, self.family)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_mm")
class CosineSchedule(Schedule):
    """The cosine schedule with simple diffusion's resolution shift.

    logSNR(t) = -2 log tan(pi t / 2) + 2 log(base_resolution / image_size), with the
    unshifted logSNR kept inside [logsnr_min, logsnr_max] by mapping t onto
    [t_min, t_max] (as in simple diffusion), so that t <-> logSNR is an exact bijection
    on [0, 1]. alpha^2 = sigmoid(logSNR) and sigma^2 = sigmoid(-logSNR) (variance
    preserving).

    Args:
        image_size: side length d of the images. The shift is 2 log(base_resolution / d);
            `None` means no shift.
        base_resolution: resolution at which the schedule is unshifted (64 in simple
            diffusion).
        logsnr_min: lower clip of the unshifted logSNR (at t = 1).
        logsnr_max: upper clip of the unshifted logSNR (at t = 0).

    Example:
    ```python
    schedule = keras_mm.CosineSchedule(image_size=8)
    schedule.logsnr(keras.ops.array([0.5]))  # 2 log(64/8) ~ 4.16
    ```

    References:
        Hoogeboom et al. 2023, "simple diffusion", §3.1 (shifted schedule).
    """

    def __init__(self, image_size=None, base_resolution=64, logsnr_min=-15.0, logsnr_max=15.0):
        if image_size is not None and image_size <= 0:
            raise ValueError(f"`image_size` must be positive, got {image_size}.")
        if not logsnr_min < logsnr_max:
            raise ValueError(
                f"Need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}."
            )
        self.image_size = image_size
        self.base_resolution = base_resolution
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)
        self.shift = (
            0.0 if image_size is None else 2.0 * math.log(base_resolution / image_size)
        )
        self.t_min = math.atan(math.exp(-0.5 * self.logsnr_max)) * 2.0 / math.pi
        self.t_max = math.atan(math.exp(-0.5 * self.logsnr_min)) * 2.0 / math.pi

    @property
    def logsnr_shift(self):
        return self.shift

    def logsnr(self, t):
        """logSNR(t) for t in [0, 1] (float tensor of any shape)."""
        t = ops.convert_to_tensor(t, "float32")
        u = self.t_min + t * (self.t_max - self.t_min)
        return -2.0 * ops.log(ops.tan(0.5 * math.pi * u)) + self.shift

    def t_from_logsnr(self, logsnr):
        """Inverse of `logsnr`; values outside the schedule's range are clipped to [0, 1]."""
        logsnr = ops.convert_to_tensor(logsnr, "float32")
        u = ops.arctan(ops.exp(-0.5 * (logsnr - self.shift))) * 2.0 / math.pi
        return ops.clip((u - self.t_min) / (self.t_max - self.t_min), 0.0, 1.0)

    def get_config(self):
        return {
            "image_size": self.image_size,
            "base_resolution": self.base_resolution,
            "logsnr_min": self.logsnr_min,
            "logsnr_max": self.logsnr_max,
        }

    def __repr__(self):
        return f"CosineSchedule(image_size={self.image_size}, shift={self.shift:.3f})"


@keras.saving.register_keras_serializable(package="keras_mm")
class FlowMatchingSchedule(Schedule):
    """Rectified flow (SD3): z_t = (1 - t) x + t eps, with SD3's timestep shift.

    Unshifted, logSNR(t) = 2 log((1 - t) / t). The shift s moves the sampler's grid to
    t' = s t / (1 + (s - 1) t), which is logSNR'(t) = logSNR(t) - 2 log s; the network is not
    told t but logSNR', from which an adapter recovers the noise level it was trained on
    (SD3: timestep = 1000 sigmoid(-logSNR' / 2)). As in `CosineSchedule`, the unshifted
    logSNR is kept inside [logsnr_min, logsnr_max] by mapping t onto [t_min, t_max], so that
    t <-> logSNR is an exact bijection on [0, 1] and alpha_1 > 0. Scale family "flow":
    alpha = sigmoid(logSNR / 2) = 1 - t', sigma = sigmoid(-logSNR / 2) = t'.

    Args:
        shift: SD3's shift s > 0 (1: none; Stable Diffusion 3 uses 3.0).
        logsnr_min: lower clip of the unshifted logSNR (at t = 1).
        logsnr_max: upper clip of the unshifted logSNR (at t = 0).

    Example:
    ```python
    schedule = keras_mm.FlowMatchingSchedule(shift=3.0)
    schedule.logsnr(keras.ops.array([0.5]))  # -2 log 3 ~ -2.20
    ```

    References:
        Esser et al. 2024, "Scaling Rectified Flow Transformers", §3.1 and §5.3.2 (shift).
    """

    family = "flow"

    def __init__(self, shift=1.0, logsnr_min=-15.0, logsnr_max=15.0):
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or shift <= 0:
            raise ValueError(f"`shift` must be a number > 0 (SD3 uses 3.0), got {shift!r}.")
        if not logsnr_min < logsnr_max:
            raise ValueError(
                f"Need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}."
            )
        self.shift = float(shift)
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)
        self.logsnr_shift = -2.0 * math.log(self.shift)
        self.t_min = 1.0 / (1.0 + math.exp(0.5 * self.logsnr_max))  # sigmoid(-max / 2)
        self.t_max = 1.0 / (1.0 + math.exp(0.5 * self.logsnr_min))

    def logsnr(self, t):
        """logSNR'(t) = 2 log((1 - u) / u) - 2 log(shift), u = t mapped onto [t_min, t_max]."""
        t = ops.convert_to_tensor(t, "float32")
        u = self.t_min + t * (self.t_max - self.t_min)
        return 2.0 * (ops.log1p(-u) - ops.log(u)) + self.logsnr_shift

    def t_from_logsnr(self, logsnr):
        """Inverse of `logsnr`; values outside the schedule's range are clipped to [0, 1]."""
        logsnr = ops.convert_to_tensor(logsnr, "float32")
        u = ops.sigmoid(-0.5 * (logsnr - self.logsnr_shift))
        return ops.clip((u - self.t_min) / (self.t_max - self.t_min), 0.0, 1.0)

    def get_config(self):
        return {"shift": self.shift, "logsnr_min": self.logsnr_min, "logsnr_max": self.logsnr_max}

    def __repr__(self):
        return f"FlowMatchingSchedule(shift={self.shift})"


@keras.saving.register_keras_serializable(package="keras_mm")
class EDMSchedule(Schedule):
    """EDM's variance-exploding process z_t = x + sigma_t eps on EDM's sampling grid.

    sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, so t = 1 is
    sigma_max and t = 0 is sigma_min (Karras et al. 2022, eq. 5, with t = 1 - i / (N - 1)),
    and logSNR(t) = -2 log sigma(t). Scale family "ve": alpha = 1, sigma = exp(-logSNR / 2);
    samplers start from z_1 = sigma_max eps.

    Args:
        sigma_min: the smallest noise level (at t = 0).
        sigma_max: the largest noise level (at t = 1).
        rho: the grid's curvature (7 in EDM).

    Example:
    ```python
    schedule = keras_mm.EDMSchedule(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    schedule.logsnr(keras.ops.array([1.0]))  # -2 log 80 ~ -8.76
    ```

    References:
        Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
        Models", eq. 5 and Table 1.
    """

    family = "ve"

    def __init__(self, sigma_min=0.002, sigma_max=80.0, rho=7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"Need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                f"sigma_max={sigma_max} (EDM uses 0.002 and 80)."
            )
        if not rho > 0:
            raise ValueError(f"`rho` must be > 0 (EDM uses 7), got {rho}.")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)

    def logsnr(self, t):
        """logSNR(t) = -2 log sigma(t) for t in [0, 1] (float tensor of any shape)."""
        t = ops.convert_to_tensor(t, "float32")
        return edm_logsnr(1.0 - t, self.sigma_min, self.sigma_max, self.rho)

    def t_from_logsnr(self, logsnr):
        """Inverse of `logsnr`; values outside [sigma_min, sigma_max] are clipped to [0, 1]."""
        logsnr = ops.convert_to_tensor(logsnr, "float32")
        inv_rho = 1.0 / self.rho
        low, high = self.sigma_min**inv_rho, self.sigma_max**inv_rho
        root = ops.exp(-0.5 * inv_rho * logsnr)  # sigma^(1/rho)
        return ops.clip((root - low) / (high - low), 0.0, 1.0)

    def get_config(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho}

    def __repr__(self):
        return (
            f"EDMSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, "
            f"rho={self.rho})"
        )
