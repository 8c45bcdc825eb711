import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm.backend import jvp, value_and_grad
from keras_mm.datasets import load_digits
from keras_mm.diffusion import alpha_sigma
from keras_mm.models.diffusion_model import per_example_mean_square
from tests.helpers import InterruptAt, TinyConvNet


def np_(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits()
    return images[:256], labels[:256]


@pytest.fixture(scope="module")
def teacher(digits):
    keras.utils.set_random_seed(0)
    model = keras_mm.DiffusionModel(TinyConvNet(), seed=0)
    model.compile()
    model.fit(*digits, batch_size=64, epochs=2, verbose=0)
    return model


def teacher_loss_gradient(distiller, x_generated, noisy_s, logsnr_s, condition):
    """grad_theta of L_theta(x~, z_s) = mean w(s) ||x~ - g_theta(z_s)||^2 / dim, independently."""

    def loss():
        x_teacher = distiller.teacher.denoise(noisy_s, logsnr_s, condition)
        weight = distiller.loss_weight(logsnr_s)
        return ops.mean(weight * per_example_mean_square(x_generated - x_teacher)), None

    _, _, grads = value_and_grad(loss, distiller.teacher.parameters)()
    return grads


def test_parameter_jvp_matches_central_differences(teacher, digits):
    distiller = keras_mm.MomentMatchingDistiller(teacher, method="instant", seed=1)
    params = distiller.teacher.parameters
    rng = np.random.default_rng(0)
    nu = [rng.normal(size=p.shape).astype("float32") for p in params]
    z = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    logsnr = np.array([-2.0, 0.0, 1.0, 3.0], "float32")
    cond = {"labels": np.array([0, 1, 2, 10], "int32")}

    def output():
        return teacher.denoise(z, logsnr, cond)

    _, tangent = jvp(output, params, nu)
    original = [np_(p) for p in params]
    h = 1e-2
    outputs = []
    for sign in (1.0, -1.0):
        for p, v, n in zip(params, original, nu):
            p.assign((v + sign * h * n).astype("float32"))
        outputs.append(np_(output()))
    for p, v in zip(params, original):
        p.assign(v.astype("float32"))
    finite = (outputs[0] - outputs[1]) / (2 * h)
    error = np.abs(np_(tangent) - finite).max() / np.abs(finite).max()
    print(f"JVP vs central differences: max relative error {error:.2e}")
    assert np.abs(finite).max() > 1e-3
    assert error < 1e-2


def test_instant_update_descends_equation_9(teacher, digits):
    images, labels = digits
    distiller = keras_mm.MomentMatchingDistiller(
        teacher, num_steps=4, method="instant", weighting="edm", seed=2)
    draws_nu = distiller.draw(ops.convert_to_tensor(images[:32]), {"labels": labels[:32]})
    draws = distiller.draw(ops.convert_to_tensor(images[32:64]), {"labels": labels[32:64]})
    nu = distiller.teacher_gradient(draws_nu)
    generator_vars = distiller.generator.network.trainable_variables
    _, _, grads = value_and_grad(lambda: (distiller.instant_loss(draws, nu), None),
                                 generator_vars)()
    grads = [np_(g) for g in grads]
    _, noisy_s = distiller.generate(draws)  # z_s held fixed from here on (sg z_s)

    def moment(eta=None):
        """<grad_theta L_theta(x~(eta), sg z_s), nu>, with the generator at eta."""
        if eta is not None:
            for var, value in zip(generator_vars, eta):
                var.assign(value.astype("float32"))
        x_generated = distiller.generator.denoise(draws["noisy_t"], draws["logsnr_t"],
                                                  draws["condition"])
        g = teacher_loss_gradient(distiller, x_generated, noisy_s, draws["logsnr_s"],
                                  draws["condition"])
        return sum(float(np.sum(np_(a) * np_(b))) for a, b in zip(g, nu))

    eta0 = [np_(v) for v in generator_vars]
    rng = np.random.default_rng(3)
    direction = [rng.normal(size=v.shape) for v in eta0]
    h = 1e-2
    plus = moment([e + h * d for e, d in zip(eta0, direction)])
    minus = moment([e - h * d for e, d in zip(eta0, direction)])
    finite = (plus - minus) / (2 * h)
    analytic = 2.0 * sum(float(np.sum(g * d)) for g, d in zip(grads, direction))
    print(f"d/d eta <grad L, nu> along a random direction: finite {finite:.6g}, "
          f"2 x instant-loss gradient {analytic:.6g}")
    assert analytic == pytest.approx(finite, rel=2e-2)
    # A small step along the negative instant gradient lowers <grad_theta L_theta, nu>.
    before = moment(eta0)
    norm = np.sqrt(sum(float(np.sum(g**2)) for g in grads))
    after = moment([e - 1e-3 * g / norm for e, g in zip(eta0, grads)])
    print(f"<grad L, nu>: {before:.6g} -> {after:.6g} after a step down the instant gradient")
    assert after < before
    moment(eta0)


def off_teacher_generator(distiller):
    """Move the generator away from the teacher, so that x~ differs from the data's."""
    rng = np.random.default_rng(1)
    for variable in distiller.generator.network.trainable_variables:
        value = np_(variable)
        variable.assign((value + 0.1 * rng.normal(size=value.shape)).astype("float32"))


def test_nu_is_the_teacher_gradient_on_samples_less_that_on_data(teacher, digits):
    """nu's gradient is grad L_theta(x~', z'_s) - grad L_theta(x', z_s ~ q(z_s | x')) (eq. 10),
    each computed here on its own; and it vanishes exactly when the samples are the data
    (with z_s ~ q(z_s | x~), the same noise draws give the same z_s)."""
    images, labels = digits
    for conditional in (True, False):
        distiller = keras_mm.MomentMatchingDistiller(
            teacher, num_steps=4, method="instant", weighting="edm", seed=6,
            conditional_sampling=conditional)
        off_teacher_generator(distiller)
        draws = distiller.draw(ops.convert_to_tensor(images[:32]), {"labels": labels[:32]})
        x_generated, noisy_s = distiller.generate(draws)
        logsnr = keras_mm.diffusion.process.broadcast_to_data(draws["logsnr_s"], images[:32])
        noisy_data = keras_mm.diffusion.process.diffuse(
            ops.convert_to_tensor(images[:32]), logsnr, draws["noise_s"], teacher.family)
        on_samples = teacher_loss_gradient(distiller, x_generated, noisy_s, draws["logsnr_s"],
                                           draws["condition"])
        on_data = teacher_loss_gradient(distiller, ops.convert_to_tensor(images[:32]),
                                        noisy_data, draws["logsnr_s"], draws["condition"])
        got = distiller.teacher_loss_gradient(draws)
        scale = max(np.abs(np_(g)).max() for g in on_data)
        error = max(np.abs(np_(a) - (np_(b) - np_(c))).max()
                    for a, b, c in zip(got, on_samples, on_data))
        print(f"conditional={conditional}: max |nu's gradient - (on samples - on data)| "
              f"{error:.2e}, data gradient up to {scale:.2e}")
        assert scale > 1e-4
        assert error < 1e-4 * scale
    # Samples equal to the data, z_s ~ q(z_s | x~): the two terms cancel.
    distiller.generate = lambda draws: (draws["images"], distiller.sample_z_s(
        draws, draws["images"]))
    residual = max(np.abs(np_(g)).max() for g in distiller.teacher_loss_gradient(draws))
    assert residual < 1e-5 * scale  # float32 rounding of the two sums
    plain = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, method="instant", seed=6,
                                             conditional_sampling=False,
                                             subtract_data_gradient=False)
    plain.generate = distiller.generate
    assert max(np.abs(np_(g)).max() for g in plain.teacher_loss_gradient(draws)) > 1e-4


def test_instant_objective_is_half_nu_prev_dot_the_gradient(teacher, digits):
    """The logged eq. 10 estimate of an iteration is (1/2) nu_prev^T g, with g the gradient
    of nu's loss on this iteration's first half-batch and nu_prev the bias-corrected moving
    average before it, computed here directly; nu is the updated average."""
    images, labels = digits
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, method="instant",
                                                 weighting="edm", seed=6)
    distiller.compile()
    off_teacher_generator(distiller)
    batches = [distiller.draw(ops.convert_to_tensor(images[i:i + 32]),
                              {"labels": labels[i:i + 32]}) for i in (0, 32)]
    lambdas = [np_(p) for p in distiller.preconditioner]
    gradients = [[np_(g) for g in distiller.teacher_loss_gradient(d)] for d in batches]
    _, first = distiller.nu_step(gradients[0])
    assert float(np_(first)) == 0.0  # no nu_prev yet
    distiller.optimizer.iterations.assign(1)
    nu, objective = distiller.nu_step(gradients[1])
    decay = distiller.teacher_gradient_ema
    nu_prev = [lam * g for lam, g in zip(lambdas, gradients[0])]  # (1 - d) nu / (1 - d)
    direct = 0.5 * sum(float(np.sum(a * g)) for a, g in zip(nu_prev, gradients[1]))
    print(f"eq. 10 estimate {float(np_(objective)):.6g}, 1/2 nu_prev^T g {direct:.6g}")
    assert abs(direct) > 1e-6
    assert float(np_(objective)) == pytest.approx(direct, rel=1e-4)
    average = [(decay * (1 - decay) * a + (1 - decay) * lam * g) / (1 - decay**2)
               for a, lam, g in zip(nu_prev, lambdas, gradients[1])]
    for a, b in zip(nu, average):
        np.testing.assert_allclose(np_(a), b, rtol=1e-4, atol=1e-6 * np.abs(b).max())


def test_dmd_weight_applies_to_the_generator_loss_only(teacher, digits):
    """weighting="dmd": L(phi) and nu are those of w(s) = 1; the generator's losses carry
    DMD's 1 / mean|x~ - g_theta(z_s)| per example."""
    images, labels = digits
    batch = ops.convert_to_tensor(images[:32]), {"labels": labels[:32]}
    rng = np.random.default_rng(2)
    shifted = [(np_(w) + 0.05 * rng.normal(size=w.shape)).astype("float32")
               for w in teacher.network.weights]
    losses = {}
    for weighting in ("dmd", "flat"):
        alternating = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, weighting=weighting,
                                                       seed=0)
        alternating.auxiliary.network.set_weights(shifted)  # so that g_phi != g_theta
        instant = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, method="instant",
                                                   weighting=weighting, seed=0)
        draws = alternating.draw(*batch)
        nu = instant.teacher_gradient(draws)
        generator, _ = alternating.generator_loss(draws)
        losses[weighting] = {
            "auxiliary": float(np_(alternating.auxiliary_loss(draws))),
            "nu": [np_(n) for n in nu],
            "generator": float(np_(generator)),
            "instant": float(np_(instant.instant_loss(draws, nu))),
        }
        # The generator's losses written out with DMD's weight.
        x_generated, noisy_s = alternating.generate(draws)
        x_teacher = teacher.denoise(noisy_s, draws["logsnr_s"], draws["condition"])
        x_auxiliary = alternating.auxiliary.denoise(noisy_s, draws["logsnr_s"],
                                                    draws["condition"])
        def teacher_output(noisy_s=noisy_s, draws=draws):
            return teacher.denoise(noisy_s, draws["logsnr_s"], draws["condition"])

        _, jacobian_nu = jvp(teacher_output, teacher.parameters, nu)
        x_generated, x_teacher = np_(x_generated), np_(x_teacher)
        weight = (1.0 / (np.abs(x_generated - x_teacher).mean(axis=(1, 2, 3)) + 1e-4)
                  if weighting == "dmd" else np.ones(len(x_generated)))
        inner = (x_generated * (np_(x_auxiliary) - x_teacher)).mean(axis=(1, 2, 3))
        instant_inner = (x_generated * np_(jacobian_nu)).mean(axis=(1, 2, 3))
        assert losses[weighting]["generator"] == pytest.approx((weight * inner).mean(), rel=1e-4)
        assert losses[weighting]["instant"] == pytest.approx(-(weight * instant_inner).mean(),
                                                             rel=1e-4)
    dmd, flat = losses["dmd"], losses["flat"]
    assert dmd["auxiliary"] == pytest.approx(flat["auxiliary"], rel=1e-6)
    for a, b in zip(dmd["nu"], flat["nu"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)
    assert abs(dmd["generator"] - flat["generator"]) > 0.1 * abs(flat["generator"])


@pytest.mark.parametrize("conditional", [True, False])
def test_z_s_has_the_moments_of_equation_2(teacher, conditional):
    distiller = keras_mm.MomentMatchingDistiller(
        teacher, num_steps=4, conditional_sampling=conditional, seed=4)
    n = 4096
    rng = np.random.default_rng(5)
    images = np.repeat(rng.uniform(-1, 1, size=(1, 8, 8, 1)).astype("float32"), n, axis=0)
    draws = distiller.draw(ops.convert_to_tensor(images), {"labels": np.zeros(n, "int32")})
    x_generated = rng.uniform(-1, 1, size=images.shape).astype("float32")
    noisy_s = np_(distiller.sample_z_s(draws, ops.convert_to_tensor(x_generated)))
    lam_s = np_(draws["logsnr_s"])[:, None, None, None]
    lam_t = np_(draws["logsnr_t"])[:, None, None, None]
    z_t = np_(draws["noisy_t"])
    assert np.all(lam_t <= lam_s + 1e-5)  # t >= s
    # t - s <= 1/k: compare in time.
    s_time = np_(distiller.teacher.schedule.t_from_logsnr(draws["logsnr_s"]))
    t_time = np_(distiller.teacher.schedule.t_from_logsnr(draws["logsnr_t"]))
    assert np.all(t_time - s_time <= 0.25 + 1e-4) and np.all(t_time <= 1.0)
    a_s, s_s = (np_(v) for v in alpha_sigma(lam_s))
    a_t, s_t = (np_(v) for v in alpha_sigma(lam_t))
    if conditional:  # eq. 2, written out
        a_ts, s2_ts = a_t / a_s, s_t**2 - (a_t / a_s) ** 2 * s_s**2
        var = 1.0 / (1.0 / s_s**2 + a_ts**2 / s2_ts)
        mean = var * (a_ts / s2_ts * z_t + a_s / s_s**2 * x_generated)
    else:
        var, mean = s_s**2, a_s * x_generated
    keep = (var > 1e-6).squeeze()
    r = ((noisy_s - mean) / np.sqrt(var))[keep]
    print(f"standardised z_s residuals: mean {r.mean():.4f} var {r.var():.4f} ({r.size} values)")
    assert abs(r.mean()) < 0.01 and abs(r.var() - 1.0) < 0.02


@pytest.mark.parametrize("method", ["alternating", "instant"])
def test_fit_logs_metrics_and_keeps_the_teacher_frozen(teacher, digits, method):
    before = [np_(w) for w in teacher.network.weights]
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, method=method, seed=0)
    distiller.compile(warmup_steps=2)
    history = distiller.fit(*digits, batch_size=64, epochs=2, verbose=0)
    expected = ({"generator_loss", "auxiliary_loss", "moment_gap"} if method == "alternating"
                else {"instant_loss", "instant_objective"})
    assert expected <= set(history.history)
    for values in history.history.values():
        assert np.all(np.isfinite(values))
    for b, w in zip(before, teacher.network.weights):
        np.testing.assert_array_equal(b, np_(w))
    moved = [np.abs(np_(g) - b).max() for g, b in
             zip(distiller.generator.network.weights, before)]
    assert max(moved) > 0
    assert distiller.sample(labels=[1, 2], seed=0).shape == (2, 8, 8, 1)


def test_averaged_teacher_gradient_of_the_label_embedding(teacher, digits):
    """teacher_gradient_ema averages nu across instant iterations. The label embedding's
    gradient is sparse (TensorFlow gives IndexedSlices): after one iteration on labels 0-2
    only, its average is (1 - decay) nu, nonzero in rows 0-2 and exactly zero elsewhere."""
    images, labels = digits
    keep = np.flatnonzero(labels < 3)[:64]
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, method="instant",
                                                 teacher_gradient_ema=0.9, seed=0)
    distiller.compile(warmup_steps=2)
    history = distiller.fit(images[keep], labels[keep], batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["instant_loss"][0])
    (table,) = [np_(average) for average, variable in
                zip(distiller.nu_average, teacher.parameters) if "embedding" in variable.path]
    assert table.shape == (11, 8) and np.all(np.isfinite(table))
    assert np.all(np.abs(table[:3]).sum(axis=1) > 0)
    np.testing.assert_array_equal(table[3:10], 0.0)


def test_distiller_saves_and_loads_with_both_optimizer_states(teacher, digits, tmp_path):
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, seed=0)
    distiller.compile(warmup_steps=2)
    distiller.fit(*digits, batch_size=64, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    restored = keras.saving.load_model(path)
    for a, b in zip(distiller.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(np_(a), np_(b))
    assert len(restored.optimizer.optimizers) == 2
    np.testing.assert_allclose(np_(restored.sample(labels=[3, 4], seed=1)),
                               np_(distiller.sample(labels=[3, 4], seed=1)), atol=1e-6)
    instant = keras_mm.MomentMatchingDistiller(teacher, method="instant", seed=0)
    instant.save(str(tmp_path / "instant.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "instant.keras"))
    for a, b in zip(instant.preconditioner, loaded.preconditioner):
        np.testing.assert_array_equal(np_(a), np_(b))


def test_backup_and_restore_resumes_to_the_same_weights(teacher, digits, tmp_path):
    def run(callbacks):
        distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, seed=7)
        distiller.compile(warmup_steps=2)
        distiller.fit(*digits, batch_size=64, epochs=4, verbose=0, shuffle=False,
                      callbacks=callbacks)
        return [np_(w) for w in distiller.generator.network.weights]

    reference = run([])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, InterruptAt(2)])
    resumed = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    for a, b in zip(reference, resumed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_input_errors(teacher, digits):
    images, labels = digits
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=2)
    distiller.compile()
    bad = images[:8].copy()
    bad[5, 1, 1, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        distiller.fit(bad, labels[:8], verbose=0)
    with pytest.raises(ValueError, match="image_shape"):
        distiller.fit(np.zeros((8, 4, 4, 1), "float32"), labels[:8], verbose=0)
    with pytest.raises(ValueError, match="built keras_mm.DiffusionModel"):
        keras_mm.MomentMatchingDistiller(keras.Sequential())
    with pytest.raises(ValueError, match="num_steps"):
        keras_mm.MomentMatchingDistiller(teacher, num_steps=0)
    with pytest.raises(ValueError, match="Unknown method"):
        keras_mm.MomentMatchingDistiller(teacher, method="adversarial")
    with pytest.raises(ValueError, match="Unknown weighting"):
        keras_mm.MomentMatchingDistiller(teacher, weighting="sqrt")
    untrained = keras_mm.DiffusionModel(TinyConvNet())
    with pytest.raises(ValueError, match="estimate_preconditioner"):
        keras_mm.MomentMatchingDistiller(untrained, method="instant")
    untrained.compile(optimizer=keras.optimizers.SGD())
    with pytest.raises(ValueError, match="estimate_preconditioner"):
        keras_mm.MomentMatchingDistiller(untrained, method="instant")


def test_estimated_preconditioner_matches_adam_statistics(teacher, digits):
    images, labels = digits
    batches = [(images[i:i + 64], labels[i:i + 64]) for i in range(0, 256, 64)]
    lambdas = keras_mm.estimate_preconditioner(teacher, batches, steps=4)
    params = [np_(p) for p in teacher.parameters]
    assert [lam.shape for lam in lambdas] == [p.shape for p in params]
    assert all(np.all(lam > 0) and np.all(np.isfinite(lam)) for lam in lambdas)
    with pytest.raises(ValueError, match="ran out"):
        keras_mm.estimate_preconditioner(teacher, batches, steps=10)
    distiller = keras_mm.MomentMatchingDistiller(teacher, method="instant",
                                                 preconditioner=lambdas)
    np.testing.assert_allclose(np_(distiller.preconditioner[0]), lambdas[0])


def test_learning_rate_decays_to_zero_at_the_end_of_fit(teacher, digits):
    """compile() without total_steps: the rate decays linearly to zero at the end of fit
    (Appendix B), as with total_steps given; a second fit decays again to its own end."""
    images, labels = digits[0][:200], digits[1][:200]  # 4 batches of 64 per epoch, the last 8

    def run(**compile_args):
        distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, seed=0)
        distiller.compile(warmup_steps=2, **compile_args)
        distiller.fit(images, labels, batch_size=64, epochs=3, shuffle=False, verbose=0)
        return distiller, [np_(w) for w in distiller.generator.network.weights]

    default, weights = run()
    _, explicit = run(total_steps=12)
    _, constant = run(total_steps=None)
    for a, b in zip(weights, explicit):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(weights, constant)) > 1e-6
    generator_optimizer = default.optimizer.optimizers[0]
    assert int(np_(generator_optimizer.iterations)) == 12
    assert float(np_(generator_optimizer.learning_rate)) == 0.0
    # A second fit of 4 steps: from step 12 the rate decays to zero at 16 (a compiled step
    # still holding the old end would have rate 0 and not move the weights).
    default.fit(images, labels, batch_size=64, epochs=1, shuffle=False, verbose=0)
    after = [np_(w) for w in default.generator.network.weights]
    assert max(np.abs(a - b).max() for a, b in zip(after, weights)) > 1e-6
    schedule = generator_optimizer._learning_rate
    assert schedule.end == 16 and float(np_(schedule(15))) > 0.0
    assert float(np_(generator_optimizer.learning_rate)) == 0.0


def test_adam_without_momentum_matches_keras_adam_with_beta1_zero(tmp_path):
    """Same updates as keras Adam(beta_1=0) over several steps, on several variables at once
    (torch's fused foreach update and clipping), with the global norm clipped on some steps
    and not others, with half the slots, and a round trip through get_config."""
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (7,), (2, 3, 4)]
    starts = [rng.normal(size=shape).astype("float32") for shape in shapes]
    options = {"learning_rate": 0.01, "beta_2": 0.99, "epsilon": 1e-12, "global_clipnorm": 1.0}
    ours = keras_mm.distillation.AdamWithoutMomentum(**options)
    reference = keras.optimizers.Adam(beta_1=0.0, **options)
    mine = [keras.Variable(start) for start in starts]
    theirs = [keras.Variable(start) for start in starts]
    for step in range(6):
        # Global norms of about 0.1 on even steps (not clipped), 10-40 on odd ones (clipped).
        scale = 0.02 if step % 2 == 0 else (step + 1) * 2.0
        gradients = [rng.normal(size=shape).astype("float32") * scale for shape in shapes]
        ours.apply([ops.convert_to_tensor(g) for g in gradients], mine)
        reference.apply([ops.convert_to_tensor(g) for g in gradients], theirs)
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(np_(a), np_(b), rtol=1e-5, atol=1e-6)
    assert min(np.abs(np_(w) - start).max() for w, start in zip(mine, starts)) > 0.01
    assert len(ours.variables) == len(reference.variables) - len(shapes)  # no momentum slots
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(ours))
    assert type(restored) is type(ours) and restored.beta_2 == 0.99 and restored.beta_1 == 0.0
    with pytest.raises(ValueError, match="beta_1=0"):
        keras_mm.distillation.AdamWithoutMomentum(beta_1=0.9)


def test_edm_weight_sees_the_unshifted_logsnr(teacher):
    """weighting="edm": w(s) = exp(logSNR - shift) + 1 / sigma_data^2, the schedule's resolution
    shift taken out (the measured choice; p(s) stays shifted)."""
    shift = teacher.schedule.logsnr_shift
    assert abs(shift) > 1.0  # the 8x8 teacher's cosine schedule is shifted
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, weighting="edm", seed=0)
    logsnr = np.linspace(-6.0, 8.0, 5).astype("float32")
    np.testing.assert_allclose(np_(distiller.loss_weight(ops.convert_to_tensor(logsnr))),
                               np.exp(logsnr - shift) + 4.0, rtol=1e-5)
    flat = keras_mm.MomentMatchingDistiller(teacher, num_steps=4, weighting="flat", seed=0)
    np.testing.assert_allclose(np_(flat.loss_weight(ops.convert_to_tensor(logsnr))), 1.0)
