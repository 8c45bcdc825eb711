"""Algorithm 3 of the paper, the instant method: nu, the generator's surrogate loss, and the
training signal of §5.4 (eq. 10).

`InstantMethod` is a mixin of `MomentMatchingDistiller`; it uses the distiller's teacher,
generator, preconditioner (Lambda), moving average of nu, random draws and optimizer.
"""

from keras import ops

from keras_mm.backend import computed_after, jvp, stopped, value_and_grad
from keras_mm.diffusion import process
from keras_mm.models.diffusion_model import per_example_inner, per_example_mean_square


def concatenate_conditions(first, second):
    return {key: ops.concatenate([first[key], second[key]], axis=0) for key in first}


class InstantMethod:
    """The instant method's pieces (Algorithm 3, eq. 8-10)."""

    def teacher_loss_gradient(self, draws):
        """grad_theta of mean w(s') ||x~' - g_theta(z'_s)||^2 (x~', z'_s fixed), less, with
        `subtract_data_gradient`, the same loss on the data x' of the draws, with
        z_s ~ q(z_s | x') at the same s' and noise: the difference of eq. 10,
        grad L_theta(x~) - grad L_theta(x), which is zero in expectation once the generator's
        samples have the data's distribution. (Without the subtraction it is eq. 9's, which
        assumes E_x grad L_theta(x) = 0: true for a teacher at the optimum of this loss, far
        from true for one trained with another weighting or p(s), or not to convergence.)"""
        x_generated, noisy_s = stopped(self.generate, draws)
        logsnr_s, condition = draws["logsnr_s"], draws["condition"]
        targets, weight = x_generated, self.loss_weight(logsnr_s)
        if self.subtract_data_gradient:  # one teacher call on both halves
            images = draws["images"]
            noisy_data = process.diffuse(images, process.broadcast_to_data(logsnr_s, images),
                                         draws["noise_s"], self.teacher.family)
            noisy_s = ops.concatenate([noisy_s, noisy_data], axis=0)
            logsnr_s = ops.concatenate([logsnr_s, logsnr_s], axis=0)
            condition = concatenate_conditions(condition, condition)
            targets = ops.concatenate([x_generated, images], axis=0)
            weight = ops.concatenate([weight, -weight], axis=0)

        # Each half's loss is a mean over its examples, as eq. 10 writes the two terms.
        scale = 2.0 if self.subtract_data_gradient else 1.0

        def teacher_loss():
            x_teacher = self.teacher_prediction(noisy_s, logsnr_s, condition)
            return scale * ops.mean(weight * per_example_mean_square(targets - x_teacher)), None

        return value_and_grad(teacher_loss, self.teacher.parameters)()[2]

    def teacher_gradient(self, draws):
        """nu = Lambda (the gradient of `teacher_loss_gradient`)."""
        return [lam * g for lam, g in zip(self.preconditioner, self.teacher_loss_gradient(draws))]

    def instant_loss(self, draws, nu):
        """L_instant(eta) = -w(s) x~^T sg{J_theta g_theta(z_s) nu}, per pixel (eq. 8, with
        the sign that makes it descend eq. 9/10)."""
        x_generated, noisy_s = self.generate(draws)

        def teacher_output():
            return self.teacher.denoise(noisy_s, draws["logsnr_s"], draws["condition"])

        # Nothing is differentiated through the teacher's side (x-hat and J nu are sg{}).
        x_teacher, jacobian_nu = stopped(jvp, teacher_output, self.teacher.parameters, nu)
        if self.teacher_guidance_scale or self.clip_teacher:  # nu's loss used this x-hat
            x_teacher = stopped(self.teacher_prediction, noisy_s, draws["logsnr_s"],
                                draws["condition"])
        weight = self.generator_weight(draws["logsnr_s"], x_generated, x_teacher)
        return -ops.mean(weight * per_example_inner(x_generated, jacobian_nu))

    def nu_step(self, gradient):
        """Update the moving average of nu with Lambda `gradient`; returns `(nu, objective)`:
        the bias-corrected average (as Adam's moments: divided by 1 - decay^n), and
        (1/2) nu_prev^T `gradient`, with nu_prev the average before this iteration (last
        iteration's nu without averaging): independent of this batch, so an unbiased
        estimate of (1/2) ||E gradient||^2_Lambda, the objective (eq. 10, or eq. 9 without
        `subtract_data_gradient`), up to the drift of the generator over the average's
        horizon. Zero on the first iteration, which has no nu_prev."""
        decay = self.teacher_gradient_ema
        gradient = [ops.cast(g, "float32") for g in gradient]  # of a bfloat16 teacher too
        done = ops.cast(self.optimizer.iterations, "float32")
        previous = 1.0 - ops.power(decay, done)  # 0 before the first iteration
        inner = sum(ops.sum(a.value * g) for a, g in zip(self.nu_average, gradient))
        objective = 0.5 * inner / ops.maximum(previous, 1e-30)  # the average is 0 at first
        for average, lam, g in zip(self.nu_average, self.preconditioner, gradient):
            average.assign(decay * average + (1.0 - decay) * lam * g)
        correction = 1.0 - ops.power(decay, done + 1.0)
        return [ops.convert_to_tensor(a.value) / correction for a in self.nu_average], objective

    def instant_update(self, images, condition):
        """One iteration of Algorithm 3: nu from the first half-batch, a step on the second."""
        half = ops.shape(images)[0] // 2
        first = {k: v[:half] for k, v in condition.items()}
        second = {k: v[half:] for k, v in condition.items()}
        nu, objective = self.nu_step(self.teacher_loss_gradient(self.draw(images[:half], first)))
        variables = self.generator.network.trainable_variables
        # After nu: else XLA may hold the teacher's and the generator's activations at once
        # (measured 1.38x a teacher step's compiled memory at LoRA r=16; 0.97x after, with
        # eq. 10's nu on both the samples and the data).
        draws = self.draw(computed_after(images[half:], nu), second)
        loss, _, grads = value_and_grad(
            lambda: (self.instant_loss(draws, nu), None), variables,
            self.non_trainable_variables
        )()
        self.optimizer.optimizers[0].apply(grads, variables)
        self.instant_loss_tracker.update_state(loss)
        self.instant_objective_tracker.update_state(objective)
