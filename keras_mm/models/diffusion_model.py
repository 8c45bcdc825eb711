"""`DiffusionModel`: a denoiser network plus a schedule; trains as a teacher and samples."""

import keras
import numpy as np
from keras import ops

from keras_mm import checks
from keras_mm.backend import IterationTrainer, compile_with_variables, value_and_grad
from keras_mm.diffusion import process, samplers, time_sampling
from keras_mm.diffusion.schedules import CosineSchedule
from keras_mm.models.conditioning import TextEmbeddingConditioning, conditioning_for_network

CONDITION_KEYS = ("labels", "text_embeddings", "text_mask")  # of the built-in kinds


def per_example_mean_square(x):
    """Mean of squares over all axes but the batch axis: ||x||^2 / dim, per example."""
    return ops.mean(ops.square(x), axis=tuple(range(1, len(x.shape))))


def per_example_inner(a, b):
    """<a, b> / dim per example (the per-pixel mean of a * b)."""
    return ops.mean(a * b, axis=tuple(range(1, len(a.shape))))


class _FunctionCache:
    """Compiled samplers by configuration, held outside Keras/TensorFlow tracking.

    A plain dict attribute would be tracked (and TensorFlow would then try to save the
    `tf.function`s in it when the model is exported); this holder is not trackable.
    """

    __slots__ = ("functions",)

    def __init__(self):
        self.functions = {}


class _FullBatches(keras.utils.PyDataset):
    """Numpy training data as full batches only: each epoch is the next `len(self)` batches
    of an endless stream of passes over the data (a fresh permutation per pass when
    shuffling, the stored order otherwise), so every example is seen once per pass and no
    step is taken on a partial batch. `data` is `(x,)`, `(x, y)` or `(x, y, sample_weight)`.
    """

    def __init__(self, data, batch_size, shuffle, seed):
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.num_examples = len(keras.tree.flatten(data)[0])
        self.rng = np.random.default_rng(seed)
        self.pending = np.zeros(0, "int64")  # the stream's next indices
        self.epoch = None  # this epoch's indices, drawn when it begins

    def __len__(self):
        return self.num_examples // self.batch_size

    def upcoming(self):
        """The next epoch's indices (a peek: Keras reads batches before the first epoch)."""
        size = len(self) * self.batch_size
        while len(self.pending) < size:
            order = (self.rng.permutation(self.num_examples) if self.shuffle
                     else np.arange(self.num_examples))
            self.pending = np.concatenate([self.pending, order])
        return self.pending[:size]

    def on_epoch_begin(self):
        self.epoch = self.upcoming()
        self.pending = self.pending[len(self.epoch) :]

    def on_epoch_end(self):
        self.epoch = None

    def __getitem__(self, index):
        epoch = self.upcoming() if self.epoch is None else self.epoch
        batch = epoch[index * self.batch_size : (index + 1) * self.batch_size]
        return keras.tree.map_structure(lambda array: array[batch], self.data)


def unpack_batch(data, conditioning=None):
    """Split a training element into `(images, condition)`.

    Accepts `images`, `(images,)`, `(images, labels)`, `(images, labels, sample_weight)`,
    and `{"images": ..., **condition}` (alone or as the first element of a tuple), the
    condition's keys being those of `conditioning` (by default, labels and text).
    """
    keys = CONDITION_KEYS if conditioning is None else conditioning.keys
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    if isinstance(x, dict):
        if "images" not in x:
            raise ValueError(
                f"A dict batch needs an 'images' key; got keys {sorted(x)}. Use "
                "{'images': ..., 'labels': ...} or {'images': ..., 'text_embeddings': ..., "
                "'text_mask': ...}."
            )
        unknown = set(x) - {"images", *keys}
        if unknown:
            raise ValueError(
                f"Unknown keys {sorted(unknown)} in the batch; expected 'images' and any of "
                f"{tuple(keys)}."
            )
        return x["images"], {k: x[k] for k in keys if k in x}
    return x, ({} if y is None else {"labels": y})


def check_text_shapes(text_embeddings, text_mask, text_dim, batch_size=None):
    """Raise a clear ValueError unless text_embeddings [B, L, text_dim] and text_mask [B, L]
    fit together (`None` dimensions, as in traced functions, pass)."""
    condition = {k: v for k, v in (("text_embeddings", text_embeddings),
                                   ("text_mask", text_mask)) if v is not None}
    TextEmbeddingConditioning(text_dim).validate(condition, batch_size)


def check_training_arrays(model, x, y=None):
    """Validate numpy training data for `model` (a `DiffusionModel`) before `fit` compiles:
    image shape, dtype, range and NaN/inf values, and the condition (its keys, shapes,
    integer labels in range). Datasets and generators are checked batch by batch inside the
    step."""
    images = x.get("images") if isinstance(x, dict) else x
    if not isinstance(images, np.ndarray):
        return
    model.check_images(images)
    checks.check_image_values(images, "The training images", not model.latent)
    if isinstance(x, dict):
        condition = {k: np.asarray(v) for k, v in x.items() if k != "images"}
    else:
        condition = {} if y is None else {"labels": np.asarray(y)}
    model.conditioning.validate(condition, len(images))


@keras.saving.register_keras_serializable(package="keras_mm")
class DiffusionModel(IterationTrainer, keras.Model):
    """A diffusion model: a denoiser network, a logSNR schedule and the x-prediction it implies.

    The network predicts `prediction_type` (v by default) from `{"noisy", "logsnr", ...}`;
    `denoise` turns that into x-hat = E[x | z_t]. `fit` trains it as a teacher with the
    weighted denoising loss w(t) ||x - x-hat||^2 (t ~ U[0, 1], the v-loss weight SNR + 1 by
    default), dropping the condition with probability `condition_dropout` so that
    classifier-free guidance works. `sample` runs Algorithm 1 (or DDIM) for `num_steps`.

    Args:
        network: a denoiser network (`keras_mm.UViT`, `keras_mm.MLPDenoiser`, or any
            `keras.Model` taking the dict `{"noisy", "logsnr", "labels"?, "text_embeddings"?,
            "text_mask"?}` and having `image_shape`, `num_classes` and `text_dim`).
        schedule: the noise schedule, whose scale family (`schedule.family`) the whole model
            follows: a `CosineSchedule` (variance preserving; the default, shifted for the
            image size), a `FlowMatchingSchedule` (rectified flow, z_t = (1 - t) x + t eps)
            or an `EDMSchedule` (z = x + sigma eps).
        prediction_type: what the network predicts: "v", "eps", "x" or "flow" (the
            rectified-flow velocity eps - x).
        loss_weighting: teacher-loss weight w(logSNR) on ||x - x-hat||^2: "v" (SNR + 1, the
            v-prediction loss), "flow" (the velocity loss ||u - u-hat||^2 of a
            `FlowMatchingSchedule`), "edm" or "flat".
        condition_dropout: probability of replacing a label / caption by the null
            condition during training (for classifier-free guidance).
        seed: seed of the model's random draws during training.
        conditioning: the condition kind (a `keras_mm.models.conditioning.Conditioning`);
            by default the network's: class labels with `num_classes`, a caption with
            `text_dim`, none otherwise. Pass one for a kind of your own.
        latent: True when the data are latents of an autoencoder (e.g. SD3's VAE), which
            have no fixed range: training data are then checked for NaN/inf only, not for
            the [-1, 1] range of images.

    Example:
    ```python
    network = keras_mm.UViT.from_preset("uvit_digits")
    teacher = keras_mm.DiffusionModel(network)
    teacher.compile()
    teacher.fit(*keras_mm.datasets.load_digits(), batch_size=128, epochs=10)
    images = teacher.sample(labels=[0, 1, 2], num_steps=64, seed=0)
    ```

    References:
        Salimans et al. 2024, §2.1 and Algorithm 1; Hoogeboom et al. 2023 (simple diffusion).
    """

    def __init__(
        self,
        network,
        schedule=None,
        prediction_type="v",
        loss_weighting="v",
        condition_dropout=0.1,
        seed=None,
        conditioning=None,
        latent=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, keras.Model) or not hasattr(network, "image_shape"):
            raise ValueError(
                "`network` must be a keras.Model with an `image_shape` attribute (e.g. "
                f"keras_mm.UViT or keras_mm.MLPDenoiser); got {type(network).__name__}."
            )
        if prediction_type not in process.PREDICTION_TYPES:
            raise ValueError(
                f"Unknown prediction_type {prediction_type!r}; expected one of "
                f"{process.PREDICTION_TYPES}."
            )
        if loss_weighting not in time_sampling.WEIGHTINGS:
            raise ValueError(
                f"Unknown loss_weighting {loss_weighting!r}; expected one of "
                f"{sorted(time_sampling.WEIGHTINGS)}."
            )
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"`condition_dropout` must be in [0, 1), got {condition_dropout}.")
        self.network = network
        self.image_shape = tuple(network.image_shape)
        if isinstance(conditioning, dict):
            conditioning = keras.saving.deserialize_keras_object(conditioning)
        self._conditioning_argument = conditioning
        self.conditioning = conditioning or conditioning_for_network(network)
        self.num_classes = getattr(self.conditioning, "num_classes", None)
        self.text_dim = getattr(self.conditioning, "text_dim", None)
        if schedule is None:
            image_size = self.image_shape[0] if len(self.image_shape) == 3 else None
            schedule = CosineSchedule(image_size=image_size)
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.loss_weighting = loss_weighting
        self.condition_dropout = condition_dropout
        self.latent = bool(latent)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._compiled_samplers = _FunctionCache()
        self._build_network()

    @property
    def family(self):
        """The schedule's scale family: "vp", "flow" or "ve" (`keras_mm.diffusion.schedules`)."""
        return getattr(self.schedule, "family", "vp")

    # ------------------------------------------------------------------ conditioning
    def _build_network(self):
        """Create the network's weights with one dummy call, so the model is built at once."""
        if not self.network.built or not self.network.weights:
            condition = self.null_condition(1)
            self.network(self._network_inputs(ops.zeros((1,) + self.image_shape),
                                              ops.zeros((1,)), condition))
        # theta, remembered now: freezing the model later (trainable=False, as a distiller
        # does with its teacher) clears the variables' trainable flags. A set of ids, so Keras
        # does not track it as weights.
        frozen = not self.network.trainable
        self.network.trainable = True
        self._parameter_ids = frozenset(id(v) for v in self.network.trainable_variables)
        self.network.trainable = not frozen
        self.built = True

    @property
    def parameters(self):
        """The network's parameters theta (its trainable weights, also once frozen)."""
        return [v for v in self.network.weights if id(v) in self._parameter_ids]

    def null_condition(self, batch_size):
        """The unconditional input: the network's own (`network.null_condition(batch_size)`,
        e.g. SD3's empty prompt) where it has one, else the conditioning's: the null label /
        an all-padding caption / nothing."""
        null = self.network_null_condition(batch_size)
        return self.conditioning.null(batch_size) if null is None else null

    def network_null_condition(self, batch_size):
        """`network.null_condition(batch_size)` where the network holds its own, else None."""
        own = getattr(self.network, "null_condition", None)
        return own(batch_size) if callable(own) else None

    def check_condition(self, condition, batch_size=None):
        """Raise a clear ValueError when `condition` does not fit this model; returns it as
        tensors of the model's dtypes."""
        return self.conditioning.check(condition, batch_size)

    def unpack_batch(self, data):
        """`(images, condition)` of a training element (see `unpack_batch`)."""
        return unpack_batch(data, self.conditioning)

    def check_text_shapes(self, text_embeddings, text_mask, batch_size=None):
        """Raise a clear ValueError unless the text condition fits this model."""
        if self.text_dim is None:
            raise ValueError(TextEmbeddingConditioning.misplaced)
        check_text_shapes(text_embeddings, text_mask, self.text_dim, batch_size)

    def check_training_arrays(self, x, y=None):
        """Validate NumPy training data before `fit` (see `check_training_arrays`)."""
        check_training_arrays(self, x, y)

    def check_batch(self, data):
        """Check a concrete training batch (see `IterationTrainer.check_batch`)."""
        self.checked_batch(data)

    def checked_batch(self, data):
        """`(images, condition)` of a training batch, checked: images as float32 in [-1, 1]
        (uint8 converted; NaN/inf and floats beyond about [-1, 1] refused), the condition
        as tensors (integer labels in range). Refusals are one line starting with
        `keras_mm.checks.BATCH_PREFIX`."""
        images, condition = self.unpack_batch(data)
        self.check_images(images)
        images = checks.check_batch_images(images, not self.latent)
        try:
            condition = self.check_condition(condition)
        except ValueError as error:
            raise ValueError(checks.BATCH_PREFIX + str(error)) from None
        return images, condition

    def check_images(self, images):
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"Images of shape {tuple(images.shape)} do not match the network's "
                f"image_shape {self.image_shape} (batch first, channels last). Resize the "
                "data or build the network with the matching image_shape."
            )

    def _network_inputs(self, noisy, logsnr, condition):
        return {"noisy": noisy, "logsnr": logsnr, **condition}

    # ------------------------------------------------------------------ the denoiser
    def denoise(self, noisy, logsnr, condition=None, training=False):
        """x-hat = E[x | z_t] from the network's prediction.

        Args:
            noisy: z_t, shape [B, *image_shape].
            logsnr: logSNR(t), shape [B].
            condition: dict with "labels" and/or "text_embeddings"/"text_mask", or None.
            training: enables dropout.

        Returns:
            x-hat of shape [B, *image_shape].
        """
        noisy = ops.convert_to_tensor(noisy, "float32")
        logsnr = ops.convert_to_tensor(logsnr, "float32")
        prediction = self.network(
            self._network_inputs(noisy, logsnr, condition or {}), training=training
        )
        # Under a mixed policy the network computes in bfloat16/float16; the x/eps/v
        # conversion, posterior and losses stay in float32.
        prediction = ops.cast(prediction, "float32")
        return process.x_from_prediction(
            prediction, noisy, process.broadcast_to_data(logsnr, noisy), self.prediction_type,
            self.family,
        )

    def guided_denoise(self, noisy, logsnr, condition=None, guidance_scale=0.0, clip=False):
        """`denoise` with classifier-free guidance and optional clipping of x-hat to [-1, 1]."""
        x_hat = self.denoise(noisy, logsnr, condition)
        if guidance_scale:
            if not condition:
                raise ValueError("guidance_scale != 0 needs a conditional model and condition.")
            x_null = self.denoise(noisy, logsnr, self.null_condition(ops.shape(noisy)[0]))
            x_hat = samplers.apply_guidance(x_hat, x_null, guidance_scale)
        if clip:
            x_hat = samplers.clip_prediction(x_hat)
        return x_hat

    def call(self, inputs, training=False):
        """Keras entry point: `inputs` is the network's dict; returns x-hat."""
        condition = {k: inputs[k] for k in self.conditioning.keys if k in inputs}
        return self.denoise(inputs["noisy"], inputs["logsnr"], condition, training=training)

    # ------------------------------------------------------------------ teacher training
    def loss_weight(self, logsnr):
        return time_sampling.WEIGHTINGS[self.loss_weighting](logsnr)

    def denoising_loss(self, images, logsnr, noise, condition, training=True):
        """Per-example w(logSNR) ||x - x-hat(z_t)||^2 / dim (the teacher's loss L_theta)."""
        images = ops.convert_to_tensor(images, "float32")
        noisy = process.diffuse(images, process.broadcast_to_data(logsnr, images), noise,
                                self.family)
        x_hat = self.denoise(noisy, logsnr, condition, training=training)
        return self.loss_weight(logsnr) * per_example_mean_square(images - x_hat)

    def drop_condition(self, condition, batch_size):
        """Replace each example's condition by the null one with prob. `condition_dropout`."""
        if not condition or not self.condition_dropout:
            return condition
        keep = keras.random.uniform((batch_size,), seed=self.seed_generator)
        return self.conditioning.drop(condition, keep >= self.condition_dropout,
                                      self.network_null_condition(batch_size))

    def iteration(self, data):
        images, condition = self.checked_batch(data)
        batch_size = ops.shape(images)[0]
        t = keras.random.uniform((batch_size,), seed=self.seed_generator)
        noise = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        condition = self.drop_condition(condition, batch_size)
        logsnr = self.schedule.logsnr(t)

        def loss_fn():
            loss = ops.mean(self.denoising_loss(images, logsnr, noise, condition))
            return loss, loss

        variables = self.network.trainable_variables
        _, loss, grads = value_and_grad(loss_fn, variables, self.non_trainable_variables)()
        self.optimizer.apply(grads, variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]

    def compile(self, optimizer=None, **kwargs):
        """Compile for teacher training. Default: Adam(1e-3, global_clipnorm=1)."""
        if optimizer is None:
            optimizer = keras.optimizers.Adam(learning_rate=1e-3, global_clipnorm=1.0)
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Restore the compiled optimizer (and its state) when a `.keras` file is loaded."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        # theta, also when frozen: a distiller's teacher is loaded frozen, and its Adam state
        # (the instant method's Lambda) must still find its slots.
        self.optimizer.build(self.parameters)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, **kwargs):
        """`keras.Model.fit`, with array inputs validated up front (shape, NaN, label range).

        When numpy arrays of N examples do not divide into batches of `batch_size` (B, 32 by
        default), an epoch is N // B full batches from a stream of passes over the data (a
        fresh permutation per pass when `shuffle`, else the stored order): every example is
        seen once per pass, and no step is taken on the partial batch of N mod B that Keras
        feeds at the end of every epoch. Adam normalizes the step, so that batch (5 of the
        1,797 digits at B = 128) moved the weights as far as a full one. FD at 64 steps after
        2,100 steps (torch, `uvit_digits`, seeds 0 and 1): with that batch 5.27 and 3.94 (at
        5/128 of the weight, 4.03 and 3.29); full batches from `infinite_batches` 2.11 and
        2.42, from Keras's own batching of 1,792 examples 3.76 and 2.01, and with this change
        3.26 and 2.00. The final iterate's FD varies about 2x with the data order alone (this
        change's last three epochs: 4.57, 3.19, 3.26 and 2.77, 3.61, 2.00; the stream's 2.11
        read 3.07, 3.16, 2.87 one to three epochs later), so single runs overstate the gaps
        between ways of batching, and the partial batch is only at the top of that spread.
        """
        if validation_split or validation_data is not None:
            raise ValueError(
                "DiffusionModel.fit computes no validation loss; got validation_split="
                f"{validation_split!r}, validation_data of type {type(validation_data).__name__}: "
                "drop them, and score samples with keras_mm.callbacks.FIDCallback instead."
            )
        self.check_training_arrays(x, y)
        images = x.get("images") if isinstance(x, dict) else x
        if isinstance(images, np.ndarray):
            batch_size = batch_size or 32
            data = (x, y, kwargs.get("sample_weight"))
            data = data[: max(i + 1 for i, part in enumerate(data) if part is not None)]
            if len(images) > batch_size and len(images) % batch_size:
                x = _FullBatches(data, batch_size, shuffle, seed=np.random.randint(2**31))
                y, batch_size, shuffle, kwargs["sample_weight"] = None, None, False, None
        return super().fit(x, y, batch_size, epochs, verbose, callbacks, validation_split,
                           validation_data, shuffle, **kwargs)

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        num_samples=None,
        labels=None,
        condition=None,
        num_steps=256,
        sampler="ancestral",
        guidance_scale=0.0,
        clip=False,
        seed=None,
        noise=None,
    ):
        """Draw samples with Algorithm 1 (`sampler="ancestral"`) or DDIM.

        Args:
            num_samples: batch size for unconditional models (ignored when labels or
                condition fix it).
            labels: int labels [B] for class-conditional models.
            condition: a condition dict (e.g. text embeddings and mask) instead of labels.
            num_steps: k, the number of network evaluations (x2 with guidance).
            sampler: "ancestral" (Algorithm 1) or "ddim".
            guidance_scale: classifier-free guidance weight w (0 = none).
            clip: clip x-hat to [-1, 1] at every step.
            seed: int seed of all noise; the same seed gives the same samples.
            noise: explicit standard-normal noise of shape
                [num_noise_draws(sampler, num_steps), B, *image_shape] instead of `seed`.

        Returns:
            Samples of shape [B, *image_shape], roughly in [-1, 1].
        """
        samplers.check_num_steps(num_steps)
        guidance_scale = checks.check_guidance_scale(guidance_scale)
        condition = dict(condition or {})
        if labels is not None:
            condition["labels"] = np.asarray(labels)
        batch_size = self._batch_size(num_samples, condition, noise)
        condition = self.check_condition(condition, batch_size)
        if noise is None:
            shape = (samplers.num_noise_draws(sampler, num_steps), batch_size) + self.image_shape
            noise = keras.random.normal(shape, seed=seed)
        else:
            noise = ops.convert_to_tensor(noise, "float32")
            expected = (samplers.num_noise_draws(sampler, num_steps), batch_size)
            if tuple(noise.shape[:2]) != expected or tuple(noise.shape[2:]) != self.image_shape:
                raise ValueError(
                    f"noise must have shape {expected + self.image_shape}; got {noise.shape}."
                )

        key = (num_steps, sampler, float(guidance_scale), bool(clip), tuple(sorted(condition)))
        cache = self._compiled_samplers.functions
        if key not in cache:
            cache[key] = compile_with_variables(
                lambda noise, condition: self.sample_from_noise(
                    noise, condition, num_steps, sampler, guidance_scale, clip),
                self.network.variables,
            )
        return cache[key](noise, condition)

    def sample_from_noise(self, noise, condition, num_steps, sampler="ancestral",
                          guidance_scale=0.0, clip=False):
        """The sampler on given noise, uncompiled and unchecked (for tracing, e.g. export)."""

        def denoise_fn(z, logsnr):
            return self.guided_denoise(z, logsnr, condition, guidance_scale, clip)

        return samplers.sample(denoise_fn, self.schedule, noise, num_steps, sampler)

    def _batch_size(self, num_samples, condition, noise):
        batch_size = self.conditioning.batch_size(condition)
        if batch_size == 0:
            raise ValueError(f"{' and '.join(condition)} is empty; pass at least one "
                             f"{self.conditioning.unit}.")
        if batch_size is not None:
            return batch_size
        if noise is not None:
            return int(noise.shape[1])
        if num_samples is None or int(num_samples) < 1:
            raise ValueError(f"Pass num_samples >= 1 (or labels); got {num_samples!r}.")
        return int(num_samples)

    def with_network(self, network, name=None):
        """A `DiffusionModel` with this one's settings (schedule, prediction, loss, condition
        kind, ...) around another `network`, e.g. a LoRA student on this model's weights."""
        return DiffusionModel(
            network, schedule=self.schedule, prediction_type=self.prediction_type,
            loss_weighting=self.loss_weighting, condition_dropout=self.condition_dropout,
            seed=self.seed, conditioning=self._conditioning_argument, latent=self.latent,
            name=name or self.name)

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "schedule": keras.saving.serialize_keras_object(self.schedule),
                "prediction_type": self.prediction_type,
                "loss_weighting": self.loss_weighting,
                "condition_dropout": self.condition_dropout,
                "seed": self.seed,
                "latent": self.latent,
            }
        )
        if self._conditioning_argument is not None:  # a default one follows the network
            config["conditioning"] = keras.saving.serialize_keras_object(self.conditioning)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)
