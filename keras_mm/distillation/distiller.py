"""`MomentMatchingDistiller`: Algorithms 2 (alternating) and 3 (instant) of the paper."""

import keras
import numpy as np
from keras import ops

from keras_mm.backend import (
    IterationTrainer,
    computed_after,
    rematerialized,
    stopped,
    value_and_grad,
    variable_values,
)
from keras_mm.checks import check_guidance_scale, check_preconditioner
from keras_mm.diffusion import process, time_sampling
from keras_mm.diffusion.samplers import check_num_steps
from keras_mm.distillation.instant import InstantMethod
from keras_mm.distillation.lora import LoRANetwork
from keras_mm.distillation.optimizers import (  # noqa: F401 - their old import path
    DEFAULT_LEARNING_RATE,
    AdamWithoutMomentum,
    DecayToEndOfFit,
    WarmupLinearDecay,
    default_learning_rate,
    fit_schedules,
    paper_adam,
)
from keras_mm.distillation.preconditioner import preconditioner_from_adam
from keras_mm.models.diffusion_model import (
    DiffusionModel,
    per_example_inner,
    per_example_mean_square,
)

METHODS = ("alternating", "instant")
WEIGHTINGS = ("auto", "edm", "flat", "dmd")


def copy_of(model, name):
    """A fresh `DiffusionModel` with the same config and network weights as `model`."""
    config = model.get_config()
    config["name"] = name
    clone = DiffusionModel.from_config(config)
    clone.trainable = True  # the source may be a teacher that another distiller froze
    clone.network.set_weights(model.network.get_weights())
    return clone


def lora_copy_of(model, name, rank, targets, seed):
    """A `DiffusionModel` whose network is `model`'s plus low-rank deltas (`LoRANetwork`):
    `model`'s weights are shared, not copied."""
    network = LoRANetwork(model.network, rank, targets, seed=seed, name=f"{name}_lora")
    return model.with_network(network, name)


class GeneratorOptimizerMap(keras.optimizers.OptimizerMap):
    """The generator network's variables to `generator_optimizer`, the others to
    `auxiliary_optimizer`.

    By identity, not by `variable.path`: the generator and the auxiliary network are copies
    of the teacher with the same paths. `MultiOptimizer.optimizers` is then
    `[generator_optimizer, auxiliary_optimizer]` from the start (the map's values, then its
    default), also for the instant method, which has no auxiliary network: the state layout
    and `get_compile_config` do not depend on which variables exist.
    """

    def __init__(self, generator_optimizer, auxiliary_optimizer, generator_network):
        super().__init__(auxiliary_optimizer, {"generator": generator_optimizer})
        self.generator_ids = {id(v) for v in generator_network.trainable_variables}

    def __call__(self, variable):
        if id(variable) in self.generator_ids:
            return self["generator"]
        return self.default_optimizer


@keras.saving.register_keras_serializable(package="keras_mm")
class MomentMatchingDistiller(InstantMethod, IterationTrainer, keras.Model):
    """Distill a diffusion teacher into a `num_steps`-step sampler by moment matching.

    The generator g_eta starts as a copy of the teacher g_theta and is trained so that, run
    with Algorithm 1 for `num_steps` steps, its samples match the teacher's conditional
    moments E[x | z_s] (paper eq. 3-6). The teacher stays frozen.

    `method="alternating"` (Algorithm 2) also trains an auxiliary denoiser g_phi (another
    copy of the teacher) on the generator's samples. One `fit` step is one auxiliary update
    followed by one generator update (two iterations n of Algorithm 2, alternating 1:1 as in
    the paper), both on the step's batch with independent time and noise draws.

    `method="instant"` (Algorithm 3) splits each batch into two halves: on the first,
    nu = Lambda grad_theta [w(s') ||x~' - g_theta(z'_s)||^2 - w(s') ||x' - g_theta(z''_s)||^2],
    the teacher's loss gradient on the generator's samples less that on the data x' that
    made them (eq. 10's difference; `subtract_data_gradient`); on the second, the generator
    minimises -w(s) x~^T sg{J_theta g_theta(z_s) nu}. The minus sign (dropped in the paper's
    eq. 8) makes this descend eq. 10, (1/2)||E grad L_theta(x~, sg z_s) - E grad
    L_theta(x, z_s)||^2_Lambda. One `fit` step is one iteration.

    What to watch in `History` (§5.4): the instant method logs `instant_objective`, an
    estimate of eq. 10, (1/2) nu_prev^T (grad L_theta(x~') - grad L_theta(x')) with nu_prev
    the moving average of nu before the iteration (independent of its batch): it is >= 0 in
    expectation and falls toward zero as the generator's samples reach the data's moments
    in the teacher's eyes.

    The alternating method logs `moment_gap`, the RMS of g_phi(z_s) - g_theta(z_s): how far
    the auxiliary model, fitted to the generator's samples, is from the teacher. Both are
    noisy per batch; their trend, not the value of one step, says how far training has come.
    `instant_loss` (the generator's surrogate, whose gradient is the update) and
    `generator_loss` have no such meaning: they oscillate around zero.

    Args:
        teacher: a built `keras_mm.DiffusionModel` (trained).
        num_steps: k, the number of sampling steps of the student (>= 1).
        method: "alternating" or "instant".
        time_sampler: p(s): "edm" (EDM test-time schedule in logSNR, resolution-shifted;
            the paper's choice), "uniform", or a callable u ~ U[0,1] -> s.
        weighting: w(s): "auto" (flat for the instant method, which failed with EDM's; for
            the alternating one flat for k <= 2, EDM above, as §3.3 advises), "edm",
            "flat" or "dmd" (DMD's adaptive weight 1 / mean|x~ - g_theta(z_s)|). As in DMD,
            which trains its fake model unweighted, "dmd" weights the generator's loss only:
            L(phi) and nu use w(s) = 1 (a weight that depends on x~ would pull g_phi's
            optimum toward g_theta and understate the moment gap). EDM's weight is taken at
            the logSNR before the schedule's resolution shift (`schedule.logsnr_shift`),
            while p(s) is shifted: measured on digits (benchmarks/README.md, VP teacher,
            whose shift is 2 log(64 / 8), SNR x 64), the 4-step alternating student reached
            FD 4.53 with the unshifted weight (best checkpoint the last, step 1,000)
            against 5.26 with the shifted one (best at step 250, worse after).
        conditional_sampling: sample z_s ~ q(z_s | z_t, x~) (default); False gives the
            marginal q(z_s | x~) of the §5.2 ablation.
        teacher_guidance_scale: classifier-free guidance on the teacher (§3.3, §5.3).
        clip_teacher: clip the teacher's x-hat to [-1, 1]. With guidance or clipping, the
            instant method uses the unmodified teacher's backward pass (straight-through).
        preconditioner: Lambda for the instant method: None (take it from the teacher's
            Adam state), a list of arrays aligned with `teacher.parameters`
            (e.g. from `keras_mm.estimate_preconditioner`), or "identity".
        teacher_gradient_ema: decay of an exponential moving average of nu across
            iterations (instant method; 0 disables it, as in the paper), bias-corrected as
            Adam's moments are. On the 2-D mixture of tests/test_distiller_quality.py (torch,
            300 steps, 2-step students, MMD relative to the teacher's 2-step sampler, eq. 9's
            nu), 0.99 gave 0.50x and 0.67x in two data orders, 0 gave 0.53x, 0.9 gave 0.63x.
        subtract_data_gradient: instant method: subtract the teacher's loss gradient on the
            data from nu (eq. 10) rather than assume it is zero (eq. 9, Algorithm 3 as
            written). It is not zero for a teacher trained with another weighting or p(s)
            than nu's, or short of convergence: measured on the digits teacher of
            benchmarks/quality.py, (1/2)||E grad L_theta(x)||^2_Lambda = 7.5 against 8.5 for
            the first generator's samples, so eq. 9 pulls the generator toward samples
            where the teacher's gradient vanishes, not toward the data. Digits, 4-step
            students, 1,000 steps (JAX, FD): 3.64 with it against 5.45 without (learning
            rate 1e-4), 4.68 against 8.95 at 1e-3. It costs the teacher's forward and
            backward pass on the data half too (one call on both). The data term pulls the
            samples toward the data: with `teacher_guidance_scale`, whose target is the
            guided teacher's distribution, keep it only when the data are samples of that
            (the guided teacher samples of the CLI's data-free SD3 runs); with real images
            and guidance, pass False.
        seed: seed of the distiller's random draws.
        lora_rank: None (the generator and auxiliary are full copies of the teacher), or
            the rank r of low-rank deltas: then they are the teacher's own weights plus
            trainable deltas (`keras_mm.distillation.LoRANetwork`), evaluated on the one
            copy of theta; only the deltas and their Adam state are added. Save the student
            alone with `keras_mm.distillation.merge_lora(distiller.generator)`.
        lora_targets: with `lora_rank`, the kernels that get deltas: None (every Dense,
            EinsumDense and Conv kernel), substrings of variable paths, or a callable
            `variable -> bool` (see `LoRANetwork`). Precision: the teacher's weights theta
            keep the teacher's dtype, which may be bfloat16
            (`keras_mm.distillation.lora.in_dtype(teacher, "bfloat16")`: half the memory);
            the deltas, their optimizer slots (`AdamWithoutMomentum`'s v), Lambda, the
            moving average of nu, the losses and the sampler's arithmetic are float32. A
            layer computes in the teacher's dtype with theta + delta rounded to it, as
            mixed-precision training rounds float32 master weights, so a delta below
            bfloat16's resolution of theta (about 2^-8 relative) only shows once it has
            accumulated.
        remat: recompute activations in the backward passes instead of keeping them: each
            direct sublayer of the networks (`network.layers`: a UViT's blocks, convolutions
            and norms) keeps only its inputs (`keras.remat`; `keras_mm.backend.rematerialized`).
            Same gradients, one more forward pass of the differentiated network (the
            generator, the auxiliary, or the teacher for nu) in time. Measured at
            `uvit_digits` (benchmarks/README.md): it halves a LoRA alternating step's
            peak on torch and its compiled temporaries on JAX (XLA:CPU).

    Example:
    ```python
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=8)
    distiller.compile()
    distiller.fit(dataset, epochs=10)
    images = distiller.sample(labels=[0, 1, 2], seed=0)  # 8 network calls
    ```

    References:
        Salimans, Mensink, Heek, Hoogeboom 2024, "Multistep Distillation of Diffusion
        Models via Moment Matching", §3, Algorithms 2 and 3, Appendix B.
    """

    def __init__(
        self,
        teacher,
        num_steps=8,
        method="alternating",
        time_sampler="edm",
        weighting="auto",
        conditional_sampling=True,
        teacher_guidance_scale=0.0,
        clip_teacher=False,
        preconditioner=None,
        teacher_gradient_ema=0.99,
        subtract_data_gradient=True,
        seed=None,
        lora_rank=None,
        lora_targets=None,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(teacher, DiffusionModel) or not teacher.built:
            raise ValueError(
                "`teacher` must be a built keras_mm.DiffusionModel (e.g. one you trained with "
                f"fit, or loaded with keras.saving.load_model); got {type(teacher).__name__}."
            )
        check_num_steps(num_steps)
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"Unknown weighting {weighting!r}; expected one of {WEIGHTINGS}.")
        if not 0.0 <= teacher_gradient_ema < 1.0:
            raise ValueError(f"teacher_gradient_ema must be in [0, 1), got {teacher_gradient_ema}.")
        self.num_steps = num_steps
        self.method = method
        self.time_sampler_name = time_sampler if isinstance(time_sampler, str) else None
        self.time_sampler = time_sampling.get_time_sampler(time_sampler, teacher.schedule)
        self.weighting = weighting
        self.conditional_sampling = bool(conditional_sampling)
        self.teacher_guidance_scale = check_guidance_scale(teacher_guidance_scale,
                                                           "teacher_guidance_scale")
        self.clip_teacher = bool(clip_teacher)
        self.teacher_gradient_ema = float(teacher_gradient_ema)
        self.subtract_data_gradient = bool(subtract_data_gradient)
        self.seed = seed
        self.remat = bool(remat)

        self.lora_rank, self.lora_targets = lora_rank, lora_targets
        if lora_rank is None:
            self.generator = copy_of(teacher, "generator")
            self.auxiliary = copy_of(teacher, "auxiliary") if method == "alternating" else None
        else:
            if lora_targets is not None and not isinstance(lora_targets, (list, tuple)):
                # A callable works in-process but cannot be saved; paths can.
                self._lora_targets_unsaveable = True
            # Seeded by the distiller's seed, so that a run is reproducible.
            seeds = (None, None) if seed is None else (2 * seed, 2 * seed + 1)
            self.generator = lora_copy_of(teacher, "generator", lora_rank, lora_targets,
                                          seeds[0])
            self.auxiliary = (lora_copy_of(teacher, "auxiliary", lora_rank, lora_targets,
                                           seeds[1])
                              if method == "alternating" else None)
        self.preconditioner = None
        self.nu_average = None
        if method == "instant":
            self.preconditioner = self._make_preconditioner(teacher, preconditioner)
            self.nu_average = [  # with teacher_gradient_ema=0: the last iteration's nu
                self.add_weight(shape=v.shape, initializer="zeros", trainable=False,
                                name="nu_average")
                for v in teacher.parameters
            ]
        teacher.trainable = False
        self.teacher = teacher
        self.seed_generator = keras.random.SeedGenerator(seed)

        self.generator_loss_tracker = keras.metrics.Mean(name="generator_loss")
        self.auxiliary_loss_tracker = keras.metrics.Mean(name="auxiliary_loss")
        self.moment_gap_tracker = keras.metrics.Mean(name="moment_gap")
        self.instant_loss_tracker = keras.metrics.Mean(name="instant_loss")
        self.instant_objective_tracker = keras.metrics.Mean(name="instant_objective")
        self.built = True

    def _make_preconditioner(self, teacher, preconditioner):
        teacher_variables = teacher.parameters
        if isinstance(preconditioner, str) and preconditioner in ("identity", "saved"):
            values = [np.ones(v.shape, "float32") for v in teacher_variables]
        elif preconditioner is None:
            try:
                values = preconditioner_from_adam(teacher)
            except ValueError as error:
                raise ValueError(
                    "method='instant' needs the preconditioner Lambda, and the teacher has "
                    f"no usable Adam state ({error}) Pass preconditioner="
                    "keras_mm.estimate_preconditioner(teacher, dataset, steps=...) or "
                    "preconditioner='identity'."
                ) from None
        else:
            values = [np.asarray(ops.convert_to_numpy(p), "float32") for p in preconditioner]
            shapes = [tuple(v.shape) for v in teacher_variables]
            if [tuple(p.shape) for p in values] != shapes:
                raise ValueError(
                    "The preconditioner must hold one array per teacher trainable variable "
                    f"with the same shapes ({len(shapes)} arrays); got "
                    f"{len(values)} arrays."
                )
        check_preconditioner(values)
        weights = []
        for value in values:
            weight = self.add_weight(shape=value.shape, initializer="zeros", trainable=False,
                                     name="preconditioner")
            weight.assign(value)
            weights.append(weight)
        return weights

    # ------------------------------------------------------------------ the paper's pieces
    def loss_weight(self, logsnr_s):
        """w(s) per example, of L(phi) and nu (also of the generator, but with "dmd")."""
        weighting = self.weighting
        if weighting == "auto":
            flat = self.method == "instant" or self.num_steps <= 2
            weighting = "flat" if flat else "edm"
        if weighting == "dmd":  # DMD weights only the generator's loss
            weighting = "flat"
        if weighting == "edm":  # at the logSNR before the schedule's resolution shift
            logsnr_s = logsnr_s - self.teacher.schedule.logsnr_shift
        return time_sampling.WEIGHTINGS[weighting](logsnr_s)

    def generator_weight(self, logsnr_s, x_generated, x_teacher):
        """w(s) per example in the generator's loss: DMD's adaptive weight with "dmd"."""
        if self.weighting == "dmd":
            return time_sampling.dmd_weight(x_generated, x_teacher)
        return self.loss_weight(logsnr_s)

    def teacher_prediction(self, noisy, logsnr, condition):
        """g_theta(z_s), with guidance/clipping applied in the forward pass and the plain
        teacher's gradient in the backward pass (straight-through, §3.3)."""
        plain = self.teacher.denoise(noisy, logsnr, condition)
        if not self.teacher_guidance_scale and not self.clip_teacher:
            return plain
        modified = self.teacher.guided_denoise(
            noisy, logsnr, condition, self.teacher_guidance_scale, self.clip_teacher
        )
        return plain + ops.stop_gradient(modified - plain)

    def draw_times(self, batch_size):
        """s ~ p(s), delta_t ~ U[0, 1/k], t = min(s + delta_t, 1); returns logSNR(s), logSNR(t)."""
        s = self.time_sampler(keras.random.uniform((batch_size,), seed=self.seed_generator))
        delta_t = keras.random.uniform((batch_size,), seed=self.seed_generator) / self.num_steps
        t = ops.minimum(s + delta_t, 1.0)
        return self.teacher.schedule.logsnr(s), self.teacher.schedule.logsnr(t)

    def draw(self, images, condition):
        """Everything random of one iteration: times, z_t and the noise for z_s."""
        batch_size = ops.shape(images)[0]
        logsnr_s, logsnr_t = self.draw_times(batch_size)
        noise_t = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        noise_s = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        noisy_t = process.diffuse(images, process.broadcast_to_data(logsnr_t, images), noise_t,
                                  self.teacher.family)
        return {"logsnr_s": logsnr_s, "logsnr_t": logsnr_t, "noisy_t": noisy_t,
                "noise_s": noise_s, "condition": condition, "images": images}

    def sample_z_s(self, draws, x_generated):
        """z_s ~ q(z_s | z_t, x~) (eq. 1-2), or q(z_s | x~) without conditional sampling."""
        logsnr_s = process.broadcast_to_data(draws["logsnr_s"], x_generated)
        if self.conditional_sampling:
            logsnr_t = process.broadcast_to_data(draws["logsnr_t"], x_generated)
            mean, std = process.posterior(draws["noisy_t"], x_generated, logsnr_t, logsnr_s,
                                          self.teacher.family)
            return mean + std * draws["noise_s"]
        return process.diffuse(x_generated, logsnr_s, draws["noise_s"], self.teacher.family)

    def generate(self, draws):
        """x~ = g_eta(z_t) (differentiable in eta) and z_s (a constant, sg in the paper)."""
        x_generated = self.generator.denoise(draws["noisy_t"], draws["logsnr_t"],
                                             draws["condition"])
        noisy_s = ops.stop_gradient(self.sample_z_s(draws, ops.stop_gradient(x_generated)))
        return x_generated, noisy_s

    # ------------------------------------------------------------------ Algorithm 2
    def auxiliary_loss(self, draws):
        """L(phi) = w(s){||x~ - g_phi(z_s)||^2 + ||g_theta(z_s) - g_phi(z_s)||^2}, x~ fixed."""
        x_generated, noisy_s = stopped(self.generate, draws)
        x_teacher = stopped(self.teacher_prediction, noisy_s, draws["logsnr_s"],
                            draws["condition"])
        x_auxiliary = self.auxiliary.denoise(noisy_s, draws["logsnr_s"], draws["condition"])
        weight = self.loss_weight(draws["logsnr_s"])
        loss = weight * (per_example_mean_square(x_generated - x_auxiliary)
                         + per_example_mean_square(x_teacher - x_auxiliary))
        return ops.mean(loss)

    def generator_loss(self, draws):
        """L(eta) = w(s) x~^T sg[g_phi(z_s) - g_theta(z_s)], per pixel; returns (loss, gap)."""
        x_generated, noisy_s = self.generate(draws)
        x_teacher = stopped(self.teacher_prediction, noisy_s, draws["logsnr_s"],
                            draws["condition"])
        x_auxiliary = stopped(self.auxiliary.denoise, noisy_s, draws["logsnr_s"],
                              draws["condition"])
        difference = x_auxiliary - x_teacher
        weight = self.generator_weight(draws["logsnr_s"], x_generated, x_teacher)
        loss = ops.mean(weight * per_example_inner(x_generated, difference))
        gap = ops.sqrt(ops.mean(per_example_mean_square(difference)))
        return loss, gap

    # ------------------------------------------------------------------ the train step
    def check_batch(self, data):
        self.teacher.check_batch(data)

    def iteration(self, data):
        images, condition = self.teacher.checked_batch(data)
        with rematerialized(self.remat_layers()):
            if self.method == "alternating":
                self.auxiliary_update(images, condition)
                # Only after the auxiliary's update: else a compiled step may hold both
                # updates' activations at once (XLA did: 1.85x a teacher step's memory).
                images = computed_after(images, variable_values(
                    self.auxiliary.network.trainable_variables))
                self.generator_update(images, condition)
            else:
                self.instant_update(images, condition)
        self.optimizer.iterations.assign_add(1)
        return {m.name: m.result() for m in self.metrics}

    def remat_layers(self):
        """The layers whose activations are recomputed with `remat=True` (else none): the
        direct sublayers of the teacher's network and of full-copy students (a LoRA
        student runs the teacher's own layers)."""
        if not self.remat:
            return []
        networks = [model.network for model in (self.teacher, self.generator, self.auxiliary)
                    if model is not None and not isinstance(model.network, LoRANetwork)]
        return [layer for network in networks for layer in network.layers]

    def auxiliary_update(self, images, condition):
        """One even iteration of Algorithm 2: a step on L(phi)."""
        variables = self.auxiliary.network.trainable_variables
        draws = self.draw(images, condition)
        loss, _, grads = value_and_grad(
            lambda: (self.auxiliary_loss(draws), None), variables, self.non_trainable_variables
        )()
        self.optimizer.optimizers[1].apply(grads, variables)
        self.auxiliary_loss_tracker.update_state(loss)

    def generator_update(self, images, condition):
        """One odd iteration of Algorithm 2: a step on L(eta)."""
        variables = self.generator.network.trainable_variables
        draws = self.draw(images, condition)
        loss, gap, grads = value_and_grad(
            lambda: self.generator_loss(draws), variables, self.non_trainable_variables
        )()
        self.optimizer.optimizers[0].apply(grads, variables)
        self.generator_loss_tracker.update_state(loss)
        self.moment_gap_tracker.update_state(gap)

    @property
    def metrics(self):
        if self.method == "alternating":
            return [self.generator_loss_tracker, self.auxiliary_loss_tracker,
                    self.moment_gap_tracker]
        return [self.instant_loss_tracker, self.instant_objective_tracker]

    # ------------------------------------------------------------------ compile
    def compile(
        self,
        generator_optimizer=None,
        auxiliary_optimizer=None,
        learning_rate=None,
        warmup_steps=1000,
        total_steps="fit",
        **kwargs,
    ):
        """Compile with the paper's optimizer for each network unless given (Appendix B).

        Args:
            generator_optimizer: optimizer of g_eta; default `paper_adam(learning_rate, ...)`.
            auxiliary_optimizer: optimizer of g_phi (alternating); same default.
            learning_rate: peak learning rate of the defaults: 1e-4 for both methods, 3e-4
                for low-rank students (`lora_rank`); see
                `keras_mm.distillation.optimizers.default_learning_rate`.
            warmup_steps: linear warmup of the defaults (1000 in the paper).
            total_steps: the defaults' linear decay reaches zero at this step. "fit" (the
                default): at the end of each `fit` call, from its epochs x steps per epoch
                (Appendix B decays to zero at the end of training); None keeps the peak
                rate after the warmup.
        """
        if learning_rate is None:
            learning_rate = default_learning_rate(self.lora_rank)
        self._compile_args = {"learning_rate": learning_rate, "warmup_steps": warmup_steps,
                              "total_steps": total_steps}
        generator_optimizer = generator_optimizer or paper_adam(
            learning_rate, warmup_steps, total_steps)
        auxiliary_optimizer = auxiliary_optimizer or paper_adam(
            learning_rate, warmup_steps, total_steps)
        optimizer = keras.optimizers.MultiOptimizer(GeneratorOptimizerMap(
            generator_optimizer, auxiliary_optimizer, self.generator.network))
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.trainable_variables)

    def get_compile_config(self):
        if not self.compiled:
            return None
        optimizers = self.optimizer.optimizers
        return {
            "generator_optimizer": keras.saving.serialize_keras_object(optimizers[0]),
            "auxiliary_optimizer": keras.saving.serialize_keras_object(optimizers[1]),
        }

    def compile_from_config(self, config):
        self.compile(
            generator_optimizer=keras.saving.deserialize_keras_object(config["generator_optimizer"]),
            auxiliary_optimizer=keras.saving.deserialize_keras_object(config["auxiliary_optimizer"]),
        )

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, with array inputs validated up front (shape, NaN, label range);
        a learning rate compiled with total_steps="fit" decays to zero at its end."""
        self.teacher.check_training_arrays(x, y)
        schedules = fit_schedules(self.optimizer.optimizers) if self.compiled else []
        if schedules:
            callbacks = kwargs.get("callbacks")
            kwargs["callbacks"] = [*(callbacks or []), DecayToEndOfFit(schedules)]
        return super().fit(x, y, *args, **kwargs)

    # ------------------------------------------------------------------ sampling
    def sample(self, num_samples=None, labels=None, num_steps=None, **kwargs):
        """Sample from the distilled generator (Algorithm 1 with `num_steps` = k by default).

        Takes the same arguments as `DiffusionModel.sample`.
        """
        num_steps = self.num_steps if num_steps is None else num_steps
        return self.generator.sample(num_samples=num_samples, labels=labels,
                                     num_steps=num_steps, **kwargs)

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        config = super().get_config()
        if self.time_sampler_name is None:
            raise ValueError("A distiller with a custom time_sampler callable cannot be saved.")
        config.update(
            {
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "num_steps": self.num_steps,
                "method": self.method,
                "time_sampler": self.time_sampler_name,
                "weighting": self.weighting,
                "conditional_sampling": self.conditional_sampling,
                "teacher_guidance_scale": self.teacher_guidance_scale,
                "clip_teacher": self.clip_teacher,
                "preconditioner": "saved" if self.method == "instant" else None,
                "teacher_gradient_ema": self.teacher_gradient_ema,
                "subtract_data_gradient": self.subtract_data_gradient,
                "seed": self.seed,
                "remat": self.remat,
            }
        )
        if self.lora_rank is not None:
            if getattr(self, "_lora_targets_unsaveable", False):
                raise ValueError("A distiller with callable lora_targets cannot be saved; "
                                 "pass substrings of variable paths instead.")
            config.update(lora_rank=self.lora_rank,
                          lora_targets=None if self.lora_targets is None
                          else list(self.lora_targets))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
