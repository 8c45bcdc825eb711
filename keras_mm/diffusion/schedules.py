"""Noise schedules, defined by logSNR(t) (paper §2.1)."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_mm")
class CosineSchedule:
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

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"CosineSchedule(image_size={self.image_size}, shift={self.shift:.3f})"
