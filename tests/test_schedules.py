"""Scale families (VP, flow matching, EDM), their schedules, and the process and samplers
written for general (alpha, sigma)."""

import math

import numpy as np
import pytest
from keras import ops

from keras_mm import diffusion
from keras_mm.diffusion import CosineSchedule, EDMSchedule, FlowMatchingSchedule
from keras_mm.models import DiffusionModel
from tests.helpers import GaussianDenoiser, GaussianPosteriorMean
from tests.testing import run_serialization_test

SCHEDULES = {
    "vp": CosineSchedule(),
    "flow": FlowMatchingSchedule(shift=3.0),
    "ve": EDMSchedule(),
}


def np_(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def np_alpha_sigma(logsnr, family):
    if family == "vp":
        return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))
    if family == "flow":
        return 1 / (1 + np.exp(-logsnr / 2)), 1 / (1 + np.exp(logsnr / 2))
    return np.ones_like(logsnr), np.exp(-logsnr / 2)


# Today's (pre-family) variance-preserving code, copied as the reference for bit-identity.
def old_alpha_sigma(logsnr):
    return ops.sqrt(ops.sigmoid(logsnr)), ops.sqrt(ops.sigmoid(-logsnr))


def old_posterior(z_t, x, logsnr_t, logsnr_s):
    alpha_t, _ = old_alpha_sigma(logsnr_t)
    alpha_s, sigma_s = old_alpha_sigma(logsnr_s)
    r = ops.exp(ops.minimum(logsnr_t - logsnr_s, 0.0))
    mean = r * (alpha_s / alpha_t) * z_t + alpha_s * (1.0 - r) * x
    std = sigma_s * ops.sqrt(-ops.expm1(ops.minimum(logsnr_t - logsnr_s, 0.0)))
    return mean, std


def old_conversions(z, pred, logsnr):
    alpha, sigma = old_alpha_sigma(logsnr)
    return [alpha * pred + sigma * z, (z - sigma * pred) / alpha, (z - alpha * pred) / sigma,
            alpha * z - sigma * pred, (alpha * z - pred) / sigma]


def old_sample(denoise_fn, schedule, noise, num_steps, sampler):
    batch_size = noise.shape[1]

    def logsnr_at(t):
        return ops.full((batch_size,), 1.0, "float32") * schedule.logsnr(t)

    def step(i, z):
        t = 1.0 - ops.cast(i, "float32") / num_steps
        s = t - 1.0 / num_steps
        logsnr_t = logsnr_at(t)
        x_hat = denoise_fn(z, logsnr_t)
        lt = diffusion.broadcast_to_data(logsnr_t, z)
        ls = diffusion.broadcast_to_data(logsnr_at(s), z)
        if sampler == "ancestral":
            mean, std = old_posterior(z, x_hat, lt, ls)
            return mean + std * ops.take(noise, i + 1, axis=0)
        alpha_t, sigma_t = old_alpha_sigma(lt)
        alpha_s, sigma_s = old_alpha_sigma(ls)
        eps_hat = (z - alpha_t * x_hat) / sigma_t
        return alpha_s * x_hat + sigma_s * eps_hat

    z = ops.fori_loop(0, num_steps - 1, step, noise[0])
    return denoise_fn(z, logsnr_at(1.0 / num_steps))


def test_variance_preserving_is_bit_identical_to_the_pre_family_code():
    rng = np.random.default_rng(0)
    z, x, noise = ops.convert_to_tensor(rng.normal(size=(3, 6, 5)).astype("float32"))
    logsnr_t = rng.uniform(-8, 4, size=(6, 1)).astype("float32")
    logsnr_s = ops.convert_to_tensor(logsnr_t + rng.uniform(1e-3, 4, size=(6, 1)), "float32")
    logsnr_t = ops.convert_to_tensor(logsnr_t)
    new = [diffusion.diffuse(x, logsnr_t, noise), diffusion.x_from_eps(z, x, logsnr_t),
           diffusion.eps_from_x(z, x, logsnr_t), diffusion.x_from_v(z, x, logsnr_t),
           diffusion.v_from_x(z, x, logsnr_t)]
    old = old_conversions(noise, x, logsnr_t)[:1] + old_conversions(z, x, logsnr_t)[1:]
    old[0] = old_alpha_sigma(logsnr_t)[0] * x + old_alpha_sigma(logsnr_t)[1] * noise
    new += list(diffusion.posterior(z, x, logsnr_t, logsnr_s))
    old += list(old_posterior(z, x, logsnr_t, logsnr_s))
    for a, b in zip(new, old):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    network = GaussianPosteriorMean((3,), 0.5, 0.7)

    def denoise(z, logsnr):
        return network({"noisy": z, "logsnr": logsnr})

    noise = ops.convert_to_tensor(rng.normal(size=(5, 4, 3)), "float32")
    for sampler in ("ancestral", "ddim"):
        a = diffusion.sample(denoise, CosineSchedule(image_size=8), noise, 5, sampler)
        b = old_sample(denoise, CosineSchedule(image_size=8), noise, 5, sampler)
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


@pytest.mark.parametrize("family", ["vp", "flow", "ve"])
def test_posterior_matches_direct_gaussian_conditioning(family):
    rng = np.random.default_rng(1)
    z_t, x = rng.normal(size=(2, 5, 3))
    logsnr_t = rng.uniform(-5, 3, size=(5, 1))
    logsnr_s = logsnr_t + rng.uniform(0.2, 4, size=(5, 1))
    mean, std = diffusion.posterior(*(a.astype("float32") for a in (z_t, x, logsnr_t, logsnr_s)),
                                    family=family)
    # Joint of (z_s, z_t) given x: z_s = alpha_s x + sigma_s e_s, z_t = alpha_{t|s} z_s + ...
    (alpha_t, sigma_t), (alpha_s, sigma_s) = (np_alpha_sigma(l, family)
                                              for l in (logsnr_t, logsnr_s))
    cov_st = (alpha_t / alpha_s) * sigma_s**2
    expected_mean = alpha_s * x + cov_st / sigma_t**2 * (z_t - alpha_t * x)
    expected_var = sigma_s**2 - cov_st**2 / sigma_t**2
    np.testing.assert_allclose(np_(mean), expected_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(std) ** 2, expected_var, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["vp", "flow", "ve"])
def test_prediction_conversions_in_every_family(family):
    rng = np.random.default_rng(2)
    x, eps = rng.normal(size=(2, 4, 6)).astype("float32")
    logsnr = rng.uniform(-4, 4, size=(4, 1)).astype("float32")
    alpha, sigma = np_alpha_sigma(logsnr.astype(float), family)
    z = diffusion.diffuse(x, logsnr, eps, family)
    np.testing.assert_allclose(np_(z), alpha * x + sigma * eps, rtol=1e-5, atol=1e-5)
    targets = {"x": x, "eps": eps, "v": alpha * eps - sigma * x, "flow": eps - x}
    for kind, prediction in targets.items():
        x_hat = diffusion.x_from_prediction(prediction.astype("float32"), z, logsnr, kind, family)
        np.testing.assert_allclose(np_(x_hat), x, atol=5e-4, err_msg=kind)
    np.testing.assert_allclose(np_(diffusion.v_from_x(z, x, logsnr, family)), targets["v"],
                               atol=5e-4)
    np.testing.assert_allclose(np_(diffusion.flow_from_x(z, x, logsnr, family)), eps - x,
                               atol=5e-4)
    with pytest.raises(ValueError, match="family"):
        diffusion.diffuse(x, logsnr, eps, "edm")


@pytest.mark.parametrize("family", ["vp", "flow", "ve"])
def test_exact_velocity_network_gives_the_posterior_mean(family):
    schedule = SCHEDULES[family]
    rng = np.random.default_rng(3)
    logsnr = np_(schedule.logsnr(rng.uniform(size=8).astype("float32"))).astype("float32")
    z = rng.normal(size=(8, 3)) * np_alpha_sigma(logsnr, family)[1][:, None]
    z = ops.convert_to_tensor(z, "float32")
    inputs = {"noisy": z, "logsnr": logsnr}
    x_hat = GaussianDenoiser((3,), 0.6, 0.5, family)(inputs)
    velocity = GaussianDenoiser((3,), 0.6, 0.5, family, prediction_type="flow")(inputs)
    converted = diffusion.x_from_prediction(velocity, z, logsnr[:, None], "flow", family)
    np.testing.assert_allclose(np_(converted), np_(x_hat), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["vp", "flow", "ve"])
@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_samplers_reproduce_a_gaussian_in_every_family(family, sampler):
    mean, std = 0.7, 0.4
    model = DiffusionModel(GaussianDenoiser((4,), mean, std, family), schedule=SCHEDULES[family],
                           prediction_type="x")
    samples = np_(model.sample(num_samples=1000, num_steps=256, sampler=sampler, seed=1))
    # 4000 draws: standard error of the mean 0.006, of the variance ~0.004.
    assert samples.mean() == pytest.approx(mean, abs=0.03)
    assert samples.var() == pytest.approx(std**2, rel=0.1)


@pytest.mark.parametrize("family", ["vp", "flow", "ve"])
def test_one_step_sample_is_the_posterior_mean_of_the_prior(family):
    schedule = SCHEDULES[family]
    model = DiffusionModel(GaussianDenoiser((3,), 0.5, 1.0, family), schedule=schedule,
                           prediction_type="x")
    noise = np.random.default_rng(4).normal(size=(1, 2, 3)).astype("float32")
    out = np_(model.sample(noise=noise, num_steps=1))
    logsnr = np_(schedule.logsnr(1.0))
    alpha, sigma = np_alpha_sigma(logsnr, family)
    z_1 = sigma * noise[0] if family == "ve" else noise[0]  # EDM starts at sigma_max eps
    expected = 0.5 + alpha / (alpha**2 + sigma**2) * (z_1 - alpha * 0.5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


def test_flow_matching_schedule_shift_and_round_trip():
    base, shifted = FlowMatchingSchedule(), FlowMatchingSchedule(shift=3.0)
    t = np.linspace(0.0, 1.0, 101).astype("float32")
    logsnr, logsnr_shifted = np_(base.logsnr(t)), np_(shifted.logsnr(t))
    np.testing.assert_allclose(logsnr_shifted - logsnr, -2 * math.log(3.0), atol=1e-4)
    assert logsnr[[0, -1]] == pytest.approx([15.0, -15.0], abs=1e-3)
    # Away from the clip, sigma = t, and SD3's shifted sigma 3t / (1 + 2t) (KerasHub's
    # FlowMatchEulerDiscreteScheduler).
    u = base.t_min + t[10:91] * (base.t_max - base.t_min)
    np.testing.assert_allclose(np_(base.alpha_sigma(logsnr[10:91])[1]), u, atol=1e-5)
    np.testing.assert_allclose(np_(shifted.alpha_sigma(logsnr_shifted[10:91])[1]),
                               3 * u / (1 + 2 * u), atol=1e-5)
    for schedule, values in ((base, logsnr), (shifted, logsnr_shifted)):
        np.testing.assert_allclose(np_(schedule.t_from_logsnr(values)), t, atol=2e-5)
    for revived in run_serialization_test(shifted):
        np.testing.assert_allclose(np_(revived.logsnr(t)), logsnr_shifted, atol=1e-6)
    with pytest.raises(ValueError, match="shift"):
        FlowMatchingSchedule(shift=0.0)
    # EDM's p(s) shifts with the schedule's logSNR shift.
    sampler_logsnr = np_(shifted.logsnr(diffusion.EDMTimeSampler(shifted)(np.array([0.0]))))
    assert sampler_logsnr[0] == pytest.approx(-2 * math.log(80) - 2 * math.log(3), abs=1e-3)


def test_edm_schedule_is_edms_grid():
    schedule = EDMSchedule(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    t = np.linspace(0.0, 1.0, 11).astype("float32")
    logsnr = np_(schedule.logsnr(t))
    sigma = (0.002 ** (1 / 7) + t.astype(float) * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    np.testing.assert_allclose(logsnr, -2 * np.log(sigma), atol=1e-4)
    np.testing.assert_allclose(np_(schedule.alpha_sigma(logsnr)[1]), sigma, rtol=1e-4)
    np.testing.assert_allclose(np_(schedule.t_from_logsnr(logsnr)), t, atol=2e-5)
    for revived in run_serialization_test(schedule):
        np.testing.assert_allclose(np_(revived.logsnr(t)), logsnr, atol=1e-6)
    with pytest.raises(ValueError, match="sigma_min"):
        EDMSchedule(sigma_min=1.0, sigma_max=0.5)
