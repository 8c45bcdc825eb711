import math

import numpy as np
import pytest
from keras import ops

from keras_mm import diffusion
from keras_mm.backend import compile_with_variables
from keras_mm.diffusion import CosineSchedule
from keras_mm.models import DiffusionModel
from tests.helpers import GaussianPosteriorMean
from tests.testing import run_serialization_test


def np_(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def test_cosine_schedule_values_and_round_trip():
    schedule = CosineSchedule()
    t = np.linspace(0.0, 1.0, 101).astype("float32")
    logsnr = np_(schedule.logsnr(t))
    assert logsnr[0] == pytest.approx(15.0, abs=1e-3)
    assert logsnr[-1] == pytest.approx(-15.0, abs=1e-3)
    assert logsnr[50] == pytest.approx(0.0, abs=1e-4)  # tan(pi/4) = 1
    assert np.all(np.diff(logsnr) < 0)
    np.testing.assert_allclose(np_(schedule.t_from_logsnr(logsnr)), t, atol=2e-5)
    # Away from the clip, the closed form -2 log tan(pi t / 2).
    u = schedule.t_min + 0.3 * (schedule.t_max - schedule.t_min)
    assert logsnr[30] == pytest.approx(-2 * math.log(math.tan(math.pi * u / 2)), abs=1e-4)


def test_resolution_shift():
    base, shifted = CosineSchedule(), CosineSchedule(image_size=8)
    t = np.array([0.1, 0.5, 0.9], "float32")
    np.testing.assert_allclose(
        np_(shifted.logsnr(t)) - np_(base.logsnr(t)), 2 * math.log(64 / 8), atol=1e-4
    )
    assert CosineSchedule(image_size=128).shift == pytest.approx(2 * math.log(0.5))
    np.testing.assert_allclose(np_(shifted.t_from_logsnr(shifted.logsnr(t))), t, atol=1e-5)
    with pytest.raises(ValueError, match="image_size"):
        CosineSchedule(image_size=0)


def test_schedule_serialization_and_compiled_calls_keep_the_values():
    schedule = CosineSchedule(image_size=8, base_resolution=32, logsnr_min=-10.0, logsnr_max=12.0)
    t = np.array([0.0, 0.3, 1.0], "float32")
    logsnr = np_(schedule.logsnr(t))
    np.testing.assert_allclose(logsnr[[0, -1]], [12.0 + schedule.shift, -10.0 + schedule.shift],
                               atol=1e-4)
    for revived in run_serialization_test(schedule):
        assert revived.shift == pytest.approx(2 * math.log(32 / 8))
        np.testing.assert_allclose(np_(revived.logsnr(t)), logsnr, atol=1e-6)
    compiled = compile_with_variables(
        lambda t: (schedule.logsnr(t), schedule.t_from_logsnr(schedule.logsnr(t))), []
    )
    compiled_logsnr, round_trip = compiled(ops.convert_to_tensor(t))
    np.testing.assert_allclose(np_(compiled_logsnr), logsnr, atol=1e-5)
    np.testing.assert_allclose(np_(round_trip), t, atol=1e-5)


def test_posterior_matches_equation_2():
    rng = np.random.default_rng(0)
    z_t, x = rng.normal(size=(2, 5, 3)).astype("float32")
    logsnr_t = rng.uniform(-6, 2, size=(5, 1)).astype("float32")
    logsnr_s = logsnr_t + rng.uniform(0.1, 4, size=(5, 1)).astype("float32")
    mean, std = diffusion.posterior(z_t, x, logsnr_t, logsnr_s)

    def a_s(l):
        return np.sqrt(1 / (1 + np.exp(-l))), np.sqrt(1 / (1 + np.exp(l)))

    (alpha_t, sigma_t), (alpha_s, sigma_s) = a_s(logsnr_t.astype(float)), a_s(logsnr_s.astype(float))
    alpha_ts = alpha_t / alpha_s
    sigma2_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    var = 1.0 / (1.0 / sigma_s**2 + alpha_ts**2 / sigma2_ts)  # eq. 2
    mu = var * (alpha_ts / sigma2_ts * z_t + alpha_s / sigma_s**2 * x)
    np.testing.assert_allclose(np_(mean), mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np_(std) ** 2 * np.ones_like(mu), var * np.ones_like(mu), rtol=1e-4)


def test_prediction_conversions_invert_each_other():
    rng = np.random.default_rng(1)
    x, eps = rng.normal(size=(2, 4, 6)).astype("float32")
    logsnr = rng.uniform(-5, 5, size=(4, 1)).astype("float32")
    z = diffusion.diffuse(x, logsnr, eps)
    v = diffusion.v_from_x(z, x, logsnr)
    alpha, sigma = (np_(a) for a in diffusion.alpha_sigma(logsnr))
    np.testing.assert_allclose(np_(v), alpha * eps - sigma * x, atol=1e-4)
    for kind, pred in (("x", x), ("eps", eps), ("v", v)):
        np.testing.assert_allclose(np_(diffusion.x_from_prediction(pred, z, logsnr, kind)), x,
                                   atol=2e-4)
    np.testing.assert_allclose(np_(diffusion.eps_from_x(z, x, logsnr)), eps, atol=2e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion.x_from_prediction(x, z, logsnr, "score")


def test_edm_time_distribution_and_weights():
    schedule = CosineSchedule(image_size=8)
    sampler = diffusion.EDMTimeSampler(schedule)
    u = np.array([0.0, 1.0], "float32")
    logsnr = np_(schedule.logsnr(sampler(u)))
    shift = 2 * math.log(8)
    np.testing.assert_allclose(logsnr, [-2 * math.log(80) + shift, -2 * math.log(0.002) + shift],
                               atol=2e-3)
    # The median of p(s) is EDM's sigma at u = 1/2.
    sigma_half = (80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert np_(diffusion.edm_logsnr(0.5)) == pytest.approx(-2 * math.log(sigma_half), rel=1e-5)
    lam = np.array([-3.0, 0.0, 4.0], "float32")
    np.testing.assert_allclose(np_(diffusion.edm_weight(lam)), np.exp(lam) + 4.0, rtol=1e-6)
    np.testing.assert_allclose(np_(diffusion.flat_weight(lam)), 1.0)
    np.testing.assert_allclose(np_(diffusion.v_weight(lam)), np.exp(lam) + 1.0, rtol=1e-6)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_samplers_reproduce_a_gaussian_with_the_exact_denoiser(sampler):
    mean, std = 0.7, 0.4
    model = DiffusionModel(GaussianPosteriorMean((4,), mean, std), prediction_type="x")
    samples = np_(model.sample(num_samples=1000, num_steps=256, sampler=sampler, seed=1))
    # 4000 draws: standard error of the mean 0.006, of the variance ~0.0004.
    assert samples.mean() == pytest.approx(mean, abs=0.03)
    assert samples.var() == pytest.approx(std**2, rel=0.1)


def test_ancestral_with_one_step_returns_the_posterior_mean_of_noise():
    model = DiffusionModel(GaussianPosteriorMean((3,), 0.5, 1.0), prediction_type="x")
    noise = np.random.default_rng(0).normal(size=(1, 2, 3)).astype("float32")
    out = np_(model.sample(noise=noise, num_steps=1))
    logsnr = np_(model.schedule.logsnr(1.0))
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))
    expected = 0.5 + alpha / (alpha**2 + sigma**2) * (noise[0] - alpha * 0.5)
    np.testing.assert_allclose(out, expected, rtol=1e-4)


def test_sampling_is_reproducible_from_a_seed():
    model = DiffusionModel(GaussianPosteriorMean((3,), 0.0, 1.0), prediction_type="x")
    a, b = (np_(model.sample(num_samples=4, num_steps=4, seed=3)) for _ in range(2))
    c = np_(model.sample(num_samples=4, num_steps=4, seed=4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_guidance_formula_and_clipping():
    x_c, x_u = np.array([1.0, -2.0], "float32"), np.array([0.5, 1.0], "float32")
    np.testing.assert_allclose(np_(diffusion.apply_guidance(x_c, x_u, 0.0)), x_c)
    np.testing.assert_allclose(np_(diffusion.apply_guidance(x_c, x_u, 2.0)), 3 * x_c - 2 * x_u)
    np.testing.assert_allclose(np_(diffusion.clip_prediction(np.array([-3.0, 0.2, 4.0]))),
                               [-1.0, 0.2, 1.0])


def test_num_steps_validation():
    model = DiffusionModel(GaussianPosteriorMean((3,), 0.0, 1.0), prediction_type="x")
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            model.sample(num_samples=2, num_steps=bad)
    with pytest.raises(ValueError, match="sampler"):
        model.sample(num_samples=2, num_steps=2, sampler="euler")
