"""Teachers of other scale families through `DiffusionModel` and the distiller: rectified flow
(`FlowMatchingSchedule`, velocity prediction) and EDM (`EDMSchedule`).

The family is the schedule's (`schedule.family`); the model's denoiser, teacher loss and
sampling, and the distiller's z_t and z_s all follow it.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm.diffusion import EDMSchedule, FlowMatchingSchedule
from keras_mm.models.mlp_denoiser import MLPDenoiser
from tests.helpers import GaussianDenoiser
from tests.test_distiller_quality import distance, mixture

SCHEDULES = {"flow": FlowMatchingSchedule(shift=3.0), "ve": EDMSchedule()}


def np_(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("family", ["flow", "ve"])
@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_exact_velocity_teacher_samples_the_data_distribution(family, sampler):
    """The network is the exact velocity E[eps - x | z_t] of Gaussian data; the model turns it
    into x-hat through its family, so 256 steps reproduce the data's mean and variance."""
    mean, std = -0.3, 0.5
    model = keras_mm.DiffusionModel(
        GaussianDenoiser((4,), mean, std, family, prediction_type="flow"),
        schedule=SCHEDULES[family], prediction_type="flow")
    samples = np_(model.sample(num_samples=1000, num_steps=256, sampler=sampler, seed=2))
    # 4000 draws: standard error of the mean 0.008, of the variance ~0.006.
    assert samples.mean() == pytest.approx(mean, abs=0.03)
    assert samples.var() == pytest.approx(std**2, rel=0.1)


@pytest.mark.parametrize("family", ["flow", "ve"])
def test_one_step_velocity_sample_is_the_posterior_mean(family):
    """One step from z_1 gives E[x | z_1] of the data (here x ~ N(0.4, 0.8^2))."""
    mean, std = 0.4, 0.8
    schedule = SCHEDULES[family]
    model = keras_mm.DiffusionModel(
        GaussianDenoiser((3,), mean, std, family, prediction_type="flow"),
        schedule=schedule, prediction_type="flow")
    noise = np.random.default_rng(3).normal(size=(1, 2, 3)).astype("float32")
    out = np_(model.sample(noise=noise, num_steps=1))
    alpha, sigma = (np_(v) for v in schedule.alpha_sigma(schedule.logsnr(1.0)))
    z_1 = sigma * noise[0] if family == "ve" else noise[0]  # EDM starts at sigma_max eps
    var = std**2
    expected = mean + alpha * var / (alpha**2 * var + sigma**2) * (z_1 - alpha * mean)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_flow_teacher_loss_is_the_velocity_loss():
    """loss_weighting="flow": w(logSNR) ||x - x-hat||^2 equals ||(eps - x) - u-hat||^2 with
    z_t = (1 - t) x + t eps, computed here directly from the network's output."""
    schedule = FlowMatchingSchedule()
    network = MLPDenoiser(3, hidden_dim=16, num_layers=1)
    model = keras_mm.DiffusionModel(network, schedule=schedule, prediction_type="flow",
                                    loss_weighting="flow")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype("float32")
    eps = rng.normal(size=(6, 3)).astype("float32")
    t = np.linspace(0.1, 0.9, 6).astype("float32")
    logsnr = schedule.logsnr(t)
    loss = np_(model.denoising_loss(x, logsnr, eps, {}, training=False))
    # sigma = t up to the logSNR clip at +-15 (t in [t_min, t_max]).
    sigma = np_(schedule.alpha_sigma(logsnr)[1])[:, None]
    np.testing.assert_allclose(sigma[:, 0], t, atol=1e-3)
    z = (1 - sigma) * x + sigma * eps
    u_hat = np_(network({"noisy": z, "logsnr": logsnr}))
    expected = ((eps - x - u_hat) ** 2).mean(axis=1)
    np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-6)


def test_distiller_draws_z_t_and_z_s_in_the_teachers_family():
    """z_t = (1 - t) x + t eps, and z_s from the flow family's posterior q(z_s | z_t, x~)."""
    schedule = FlowMatchingSchedule()
    teacher = keras_mm.DiffusionModel(MLPDenoiser(2, hidden_dim=16, num_layers=1),
                                      schedule=schedule, prediction_type="flow", seed=0)
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=2, seed=0)
    x = np.full((4000, 2), 0.5, "float32")
    draws = distiller.draw(ops.convert_to_tensor(x), {})
    t = np_(schedule.t_from_logsnr(draws["logsnr_t"]))[:, None]
    z_t = np_(draws["noisy_t"])
    eps = (z_t - (1 - t) * x) / np.maximum(t, 1e-6)
    assert eps.mean() == pytest.approx(0.0, abs=0.05)
    assert eps.std() == pytest.approx(1.0, abs=0.05)
    # z_s from x~ = x: mean and variance of the Gaussian q(z_s | z_t, x) per example.
    z_s = np_(distiller.sample_z_s(draws, ops.convert_to_tensor(x)))
    alpha_t, sigma_t = (np_(v)[:, None] for v in schedule.alpha_sigma(draws["logsnr_t"]))
    alpha_s, sigma_s = (np_(v)[:, None] for v in schedule.alpha_sigma(draws["logsnr_s"]))
    alpha_ts = alpha_t / alpha_s
    var_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    mean = alpha_s * x + alpha_ts * sigma_s**2 / sigma_t**2 * (z_t - alpha_t * x)
    std = np.sqrt(var_ts * sigma_s**2 / sigma_t**2)
    standardized = (z_s - mean) / np.maximum(std, 1e-6)
    keep = std[:, 0] > 1e-3
    assert standardized[keep].mean() == pytest.approx(0.0, abs=0.05)
    assert standardized[keep].std() == pytest.approx(1.0, abs=0.05)


def test_flow_matching_student_beats_its_teachers_two_step_sampler():
    """A rectified-flow teacher trained here on the 8-Gaussian mixture, distilled with the
    alternating method: the 2-step student is closer to the data (MMD) than the teacher's
    own 2-step sampler."""
    data, reference = mixture(20000, 0), mixture(2000, 1)
    keras.utils.set_random_seed(0)
    teacher = keras_mm.DiffusionModel(
        MLPDenoiser(2, hidden_dim=128, num_layers=3), schedule=FlowMatchingSchedule(),
        prediction_type="flow", loss_weighting="flow", seed=0)
    teacher.compile(optimizer=keras.optimizers.Adam(3e-3, global_clipnorm=1.0))
    teacher.fit(data, batch_size=256, epochs=8, verbose=0)
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=2, weighting="flat", seed=0)
    distiller.compile(learning_rate=1e-3, warmup_steps=50)
    distiller.fit(data[: 256 * 30], batch_size=256, epochs=10, verbose=0)
    student, baseline = distance(distiller, 2, reference), distance(teacher, 2, reference)
    print(f"flow k=2: student MMD {student:.4f}, teacher's 2-step sampler {baseline:.4f}, "
          f"teacher 64 steps {distance(teacher, 64, reference):.4f}")
    assert student < 0.7 * baseline
