"""Export a `DiffusionModel`'s sampler as a TensorFlow SavedModel, for serving without keras_mm.

Written through `keras.export.ExportArchive`: the model's own calls are raw endpoints
(`core_sample`, `core_denoise`, `core_encode_text`; traced by TensorFlow, or converted by
jax2tf on JAX), and the public endpoints are TensorFlow functions around them that check
their inputs and draw the noise from a seed (the pattern of `add_endpoint`'s documentation).
The public endpoints follow the model's condition kind (`model.conditioning`): its signature
names their condition inputs, its checks become graph assertions. With a dynamic batch B:

- `sample(*condition, seed: int32[2])`, the condition being the kind's inputs (`labels:
  int32[B]`; `text_embeddings: float32[B, L, text_dim], text_mask: bool[B, L]`), or
  `batch_size: int32[]` when unconditional (also `serving_default`). The noise is
  `tf.random.stateless_normal([num_noise_draws, B, H, W, C], seed)` (`sampler_noise`).
- `sample_from_noise(*condition, noise: float32[num_noise_draws, B, H, W, C])`.
- `denoise(noisy: float32[B, H, W, C], logsnr: float32[B], *condition) -> x_hat`, unguided;
  the null label `num_classes` or an all-False text mask gives the unconditional x_hat.
- `metadata()`: num_steps, sampler, guidance_scale, clip, output, image_shape, num_classes,
  text_dim, sequence_length (-1 when unused) and max_batch_size.
- With a text encoder: `sample_from_tokens(token_ids: int32[B, L], padding_mask: bool[B, L],
  seed)` and `encode_text(token_ids, padding_mask) -> {"text_embeddings", "text_mask"}`; the
  SentencePiece vocabulary goes to `VOCABULARY_FILE` in the directory (read by
  `tokenize_for_sampler`): the tokenizer op would need TensorFlow Text to load.

Keras cannot write SavedModels from the torch backend (it needs torch_xla), so there the
model is saved as `.keras` and `export_from_spec` exports it in a TensorFlow/JAX subprocess.
"""

import inspect
import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_mm.checks import check_guidance_scale
from keras_mm.diffusion import samplers
from keras_mm.models.diffusion_model import DiffusionModel
from keras_mm.models.text_encoder import TokenConditioning

OUTPUTS = ("uint8", "float")
DIRECT_BACKENDS = ("jax", "tensorflow")
VOCABULARY_FILE = os.path.join("assets.extra", "t5_vocabulary.spm")
# Images per call of an exported sampler unless `max_batch_size` says otherwise: serving
# memory grows with B (about 1 GB per 100k samples of the tiny digits model), so one request
# must not be able to take the server down.
MAX_BATCH_SIZE = 1024


def export_sampler(
    model,
    path,
    num_steps,
    sampler="ancestral",
    guidance_scale=0.0,
    output="uint8",
    clip=False,
    export_backend="tensorflow",
    verbose=True,
    text_encoder=None,
    max_batch_size=MAX_BATCH_SIZE,
    decoder=None,
):
    """Write a SavedModel that samples from `model` in `num_steps` steps.

    The SavedModel needs only TensorFlow to run (`tf.saved_model.load(path)`); its endpoints
    (`sample`, `sample_from_noise`, `denoise`, `metadata`, and with `text_encoder`
    `sample_from_tokens` and `encode_text`) are listed in the `keras_mm.export` module
    docstring. Images are uint8 in [0, 255] (`round((x + 1) * 127.5)`, clipped) with
    `output="uint8"`, or the sampler's float32 x_hat with `output="float"`. The graph checks
    its inputs (label range, shapes, token ids, 1 <= B <= `max_batch_size`) and raises
    `InvalidArgumentError` naming the bad input. From the torch backend, a custom network must be defined in an
    importable module (not `__main__`): the export subprocess imports it.

    Args:
        model: a `keras_mm.DiffusionModel`: a teacher, or a distiller's `.generator`
            (a LoRA student's deltas are merged into plain weights first).
        path: directory to write the SavedModel to.
        num_steps: k, the sampler's number of steps (network evaluations, x2 with guidance).
        sampler: "ancestral" (Algorithm 1) or "ddim".
        guidance_scale: classifier-free guidance weight w, fixed at export.
        output: "uint8" or "float".
        clip: clip x_hat to [-1, 1] at every step, as in `DiffusionModel.sample`.
        export_backend: "tensorflow" or "jax": the backend of the subprocess that exports a
            model from the torch backend (unused on the other backends).
        verbose: print where the SavedModel went and its endpoints.
        text_encoder: for a text-conditional model, the `keras_mm.TextEncoder` it was
            trained with: adds the token-id endpoints and the tokenizer's vocabulary.
        max_batch_size: the most images one call may ask for (default 1024,
            `keras_mm.export.MAX_BATCH_SIZE`); a larger request is refused in the graph
            instead of exhausting the server's memory.
        decoder: for a latent model, a Keras model from latents to images in [-1, 1] (e.g.
            `keras_mm.models.sd3.SD3Decoder`), applied inside `sample` and
            `sample_from_noise`; `denoise` and `metadata`'s image_shape stay latent.

    Returns:
        `path`.

    Example:
    ```python
    keras_mm.export_sampler(teacher, "digits_sampler", num_steps=8)
    sampler = tf.saved_model.load("digits_sampler")  # anywhere with TensorFlow
    images = sampler.sample(labels=tf.constant([0, 1, 2]), seed=tf.constant([0, 0]))

    keras_mm.export_sampler(student.generator, "t2i", num_steps=8, text_encoder=encoder)
    tokens = keras_mm.export.tokenize_for_sampler("t2i", ["a red square on the left"])
    images = tf.saved_model.load("t2i").sample_from_tokens(**tokens, seed=[0, 0])
    ```

    References:
        Salimans et al. 2024, Algorithm 1 (the sampler that is exported).
    """
    options = _check_export_arguments(model, num_steps, sampler, guidance_scale, output, clip,
                                      text_encoder, max_batch_size)
    if decoder is not None and not isinstance(decoder, keras.Layer):
        raise TypeError(f"decoder must be a Keras model (latents -> images); got "
                        f"{type(decoder).__name__}.")
    from keras_mm.distillation.lora import merge_lora

    model = merge_lora(model)  # a LoRA student exports as plain weights, theta + delta
    path = _check_export_path(path)
    if keras.backend.backend() in DIRECT_BACKENDS:
        _write_saved_model(model, path, options, text_encoder, decoder)
    else:
        _export_in_subprocess(model, path, export_backend, verbose, options, text_encoder,
                              decoder)
    if text_encoder is not None:
        write_vocabulary(text_encoder, path)
    if verbose:
        names = [*MODEL_ENDPOINTS, *(TOKEN_ENDPOINTS if text_encoder is not None else ())]
        kind = model.conditioning.name
        kind = kind if kind == "unconditional" else f"{kind}-conditional"
        print(f"Saved a {num_steps}-step {sampler} sampler ({kind}, {output} images, at most "
              f"{options['max_batch_size']} per call) to '{path}'. Endpoints: "
              f"{', '.join(names)}.")
    return path


def _check_export_path(path):
    """`path` as a string, or a one-line error when a SavedModel cannot be written there."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"The export path '{path}' is a file; a SavedModel is a directory: "
                         "pass a new directory path.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    target = path if os.path.isdir(path) else parent
    if not os.path.isdir(target) or not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"Cannot write the SavedModel to '{path}': '{target}' is not a "
                         "writable directory. Pass a path in a directory you can write to.")
    return path


def _check_export_arguments(model, num_steps, sampler, guidance_scale, output, clip,
                            text_encoder, max_batch_size=MAX_BATCH_SIZE):
    """The export options as a dict, or a one-line error."""
    if not isinstance(model, DiffusionModel):
        hint = " Pass its `.generator`." if hasattr(model, "generator") else ""
        raise TypeError(
            f"export_sampler needs a keras_mm.DiffusionModel; got {type(model).__name__}.{hint}"
        )
    samplers.num_noise_draws(sampler, num_steps)  # validates both
    if output not in OUTPUTS:
        raise ValueError(f"Unknown output {output!r}; expected one of {OUTPUTS}.")
    guidance_scale = check_guidance_scale(guidance_scale)
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, (int, np.integer)) \
            or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1; got {max_batch_size!r}.")
    if guidance_scale and not model.conditioning.keys:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs a class-conditional model; this one has "
            "num_classes=None. Export with guidance_scale=0."
        )
    _check_text_encoder(model, text_encoder)
    return {"num_steps": num_steps, "sampler": sampler, "guidance_scale": guidance_scale,
            "output": output, "clip": bool(clip), "max_batch_size": int(max_batch_size)}


def _check_text_encoder(model, text_encoder):
    if text_encoder is None:
        return
    if model.text_dim is None:
        raise ValueError(
            "A text_encoder was given, but the model is not text-conditional (network "
            "text_dim=None). Drop text_encoder, or export a model built with text_dim."
        )
    from keras_mm.models.text_encoder import TextEncoder

    if not isinstance(text_encoder, TextEncoder):
        raise TypeError(
            f"text_encoder must be a keras_mm.TextEncoder; got {type(text_encoder).__name__}."
        )
    if text_encoder.hidden_dim != model.text_dim:
        raise ValueError(
            f"The text encoder's embeddings have width {text_encoder.hidden_dim}, but the "
            f"model was built with text_dim={model.text_dim}: pass the encoder the model was "
            "trained with."
        )


# ---------------------------------------------------------------------- the tokenizer
def write_vocabulary(text_encoder, path):
    """Write `text_encoder`'s vocabulary into the SavedModel directory `path` (see
    `VOCABULARY_FILE`); returns the file's path, or None for an encoder without tokenizer."""
    return text_encoder.write_vocabulary(os.path.join(os.fspath(path), VOCABULARY_FILE))


def tokenize_for_sampler(path, captions, sequence_length=None):
    """Token ids of `captions` for an exported text sampler, from the vocabulary it holds.

    Args:
        path: a SavedModel directory written by `export_sampler(..., text_encoder=...)`.
        captions: a string or a list of strings.
        sequence_length: tokens per caption; by default the sampler's (its metadata).

    Returns:
        `{"token_ids": int32 [B, L], "padding_mask": bool [B, L]}` as NumPy arrays, the
        inputs of the sampler's `sample_from_tokens` and `encode_text`.
    """
    from keras_mm.models.text_encoder import tokenize_with_vocabulary

    vocabulary = os.path.join(os.fspath(path), VOCABULARY_FILE)
    if not os.path.isfile(vocabulary):
        raise ValueError(
            f"'{path}' has no tokenizer vocabulary ({VOCABULARY_FILE}): export the sampler "
            "with export_sampler(..., text_encoder=encoder), or tokenize with that encoder."
        )
    if sequence_length is None:
        import tensorflow as tf

        sequence_length = int(tf.saved_model.load(path).metadata()["sequence_length"])
    return tokenize_with_vocabulary(vocabulary, captions, sequence_length)


def sampler_noise(seed, batch_size, image_shape, num_steps, sampler="ancestral"):
    """The noise an exported sampler draws for `seed`, as a NumPy array.

    `tf.random.stateless_normal([num_noise_draws, batch_size, *image_shape], seed)`, so
    `model.sample(noise=sampler_noise(...), ...)` reproduces the SavedModel's images in
    process. `seed` is an int (used as `[seed, 0]`) or a pair of ints.
    """
    import tensorflow as tf

    shape = [samplers.num_noise_draws(sampler, num_steps), int(batch_size), *image_shape]
    return tf.random.stateless_normal(shape, seed=_seed_pair(seed)).numpy()


def _seed_pair(seed):
    seed = np.asarray(seed, "int32").reshape(-1)
    if seed.size == 1:
        seed = np.array([seed[0], 0], "int32")
    if seed.size != 2:
        raise ValueError(f"A seed is an int or a pair of ints; got {seed.tolist()}.")
    return seed


# ---------------------------------------------------------------------- the SavedModel
def _named(fn, names):
    """`fn(*args)` with the parameter names `names`, which the endpoints' callers use."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    fn.__signature__ = inspect.Signature([inspect.Parameter(name, kind) for name in names])
    return fn


class _Builder:
    """What the endpoint builders share: the archive with the model's raw endpoints, the
    condition kind, and the TensorFlow pieces (checks, noise from a seed, output format)."""

    def __init__(self, model, archive, options, text_encoder=None, decoder=None):
        import tensorflow as tf

        self.tf, self.model, self.archive, self.options = tf, model, archive, options
        self.text_encoder = text_encoder
        self.decoder = decoder
        if decoder is not None:  # tracked before the endpoints that use it (see below)
            archive.track(decoder)
        self.conditioning = model.conditioning
        self.image_shape = tuple(model.image_shape)
        self.num_draws = samplers.num_noise_draws(options["sampler"], options["num_steps"])
        self.condition_specs = self.conditioning.export_specs() if self.conditioning.keys else []
        self.seed_spec = tf.TensorSpec([2], tf.int32, name="seed")
        self.noise_spec = tf.TensorSpec([self.num_draws, None, *self.image_shape], tf.float32,
                                        name="noise")
        self.image_spec = tf.TensorSpec([None, *self.image_shape], tf.float32, name="noisy")
        self.logsnr_spec = tf.TensorSpec([None], tf.float32, name="logsnr")
        if text_encoder is not None:
            # The encoder's layers without its preprocessor, whose SentencePiece op would
            # make the SavedModel need TensorFlow Text. Tracked before any endpoint is
            # added: on JAX, an endpoint binds the variables tracked when it is added.
            self.encoder_core = keras.Model(text_encoder.input, text_encoder.output)
            archive.track(self.encoder_core)
        dims = ", ".join(str(d) for d in self.image_shape)
        shapes = self.conditioning.polymorphic_shapes() if self.conditioning.keys else []
        keys = list(self.conditioning.keys)
        self.sample_core = self.raw_endpoint(
            "core_sample", self._sample_fn, ["noise", *keys], [self.noise_spec,
            *self.condition_specs], [f"({self.num_draws}, b, {dims})", *shapes])  # fmt: skip
        self.denoise_core = self.raw_endpoint(
            "core_denoise", self._denoise_fn, ["noisy", "logsnr", *keys], [self.image_spec,
            self.logsnr_spec, *self.condition_specs], [f"(b, {dims})", "(b,)", *shapes])  # fmt: skip
        if text_encoder is not None:
            self.tokens = TokenConditioning(text_encoder.vocabulary_size)
            self.encode_core = self.raw_endpoint(
                "core_encode_text", self._encode_fn, list(self.tokens.keys),
                self.tokens.export_specs(), self.tokens.polymorphic_shapes())

    def _condition(self, tensors):
        return dict(zip(self.conditioning.keys, tensors))

    def _sample_fn(self, noise, *condition):
        o = self.options
        samples = self.model.sample_from_noise(noise, self._condition(condition), o["num_steps"],
                                               o["sampler"], o["guidance_scale"], o["clip"])
        return samples if self.decoder is None else self.decoder(samples)

    def _denoise_fn(self, noisy, logsnr, *condition):
        return self.model.denoise(noisy, logsnr, self._condition(condition))

    def _encode_fn(self, token_ids, padding_mask):
        return self.encoder_core({"token_ids": token_ids,
                                  "padding_mask": keras.ops.cast(padding_mask, "int32")})

    def raw_endpoint(self, name, fn, names, specs, polymorphic_shapes):
        """`fn`, Keras code on the tracked model, added to the archive (public API) and
        returned as a TensorFlow function. On JAX, the shared symbol `b` tells jax2tf that
        all batch dimensions are equal."""
        kwargs = {}
        if keras.backend.backend() == "jax":
            kwargs["jax2tf_kwargs"] = {"polymorphic_shapes": polymorphic_shapes}
        named = _named(lambda *args: fn(*args), names)
        return self.archive.add_endpoint(name, named, input_signature=specs, **kwargs)

    def endpoint(self, fn, names, specs):
        """A public endpoint: TensorFlow code around the raw ones, traced now."""
        function = self.tf.function(_named(fn, names), input_signature=specs, autograph=False)
        function.get_concrete_function()
        return function

    def after(self, checks, *tensors):
        """`tensors` once `checks` passed. Every input of the model goes through the checks:
        TensorFlow inlines the model's function, so an unchecked input would run early."""
        with self.tf.control_dependencies(checks):
            return [self.tf.identity(tensor) for tensor in tensors]

    def condition_checks(self, condition, batch_size, what):
        if self.conditioning.keys:
            return (self.conditioning.export_checks(self._condition(condition), batch_size, what)
                    + [self.batch_limit(batch_size)])
        return [self.tf.debugging.assert_positive(
            batch_size, message=f"{what} must hold at least one image (B >= 1)."),
            self.batch_limit(batch_size)]

    def batch_limit(self, batch_size):
        """B <= max_batch_size, asserted in the graph."""
        limit = self.options.get("max_batch_size", MAX_BATCH_SIZE)
        return self.tf.debugging.assert_less_equal(
            batch_size, self.tf.constant(limit, self.tf.int32),
            message=f"The request asks for more than max_batch_size={limit} images; split it "
            f"into calls of at most {limit} (or export with a larger max_batch_size).")

    def draw_noise(self, batch_size, seed):
        shape = [self.num_draws, batch_size, *self.image_shape]
        return self.tf.random.stateless_normal(shape, seed=seed)

    def to_output(self, x_hat):
        tf = self.tf
        if self.options["output"] == "float":
            return x_hat
        return tf.cast(tf.clip_by_value(tf.round((x_hat + 1.0) * 127.5), 0.0, 255.0), tf.uint8)


def _sample_endpoint(b):
    tf, keys = b.tf, list(b.conditioning.keys)
    if not keys:  # nothing gives the batch size: ask for it

        def sample(batch_size, seed):
            check = tf.debugging.assert_positive(batch_size, message="batch_size must be >= 1.")
            batch_size, seed = b.after([check, b.batch_limit(batch_size)], batch_size, seed)
            return b.to_output(b.sample_core(b.draw_noise(batch_size, seed)))

        return b.endpoint(sample, ["batch_size", "seed"],
                          [tf.TensorSpec([], tf.int32, name="batch_size"), b.seed_spec])

    def sample(*args):
        checks = b.conditioning.export_checks(b._condition(args))
        checks.append(b.batch_limit(tf.shape(args[0])[0]))
        *condition, seed = b.after(checks, *args)
        noise = b.draw_noise(tf.shape(condition[0])[0], seed)
        return b.to_output(b.sample_core(noise, *condition))

    return b.endpoint(sample, [*keys, "seed"], [*b.condition_specs, b.seed_spec])


def _sample_from_noise_endpoint(b):
    def sample_from_noise(*args):
        *condition, noise = args
        checks = b.condition_checks(condition, b.tf.shape(noise)[1], "noise")
        *condition, noise = b.after(checks, *condition, noise)
        return b.to_output(b.sample_core(noise, *condition))

    return b.endpoint(sample_from_noise, [*b.conditioning.keys, "noise"],
                      [*b.condition_specs, b.noise_spec])


def _denoise_endpoint(b):
    tf = b.tf

    def denoise(noisy, logsnr, *condition):
        batch_size = tf.shape(noisy)[0]
        checks = b.condition_checks(condition, batch_size, "noisy") + [tf.debugging.assert_equal(
            tf.shape(logsnr)[0], batch_size, message="logsnr must have the batch size of noisy.")]
        return b.denoise_core(*b.after(checks, noisy, logsnr, *condition))

    return b.endpoint(denoise, ["noisy", "logsnr", *b.conditioning.keys],
                      [b.image_spec, b.logsnr_spec, *b.condition_specs])


def _metadata_endpoint(b):
    tf, o, model = b.tf, b.options, b.model
    sequence_length = (b.text_encoder.sequence_length or -1) if b.text_encoder else -1

    def metadata():
        return {
            "num_steps": tf.constant(o["num_steps"], tf.int32),
            "sampler": tf.constant(o["sampler"]),
            "guidance_scale": tf.constant(o["guidance_scale"], tf.float32),
            "clip": tf.constant(o["clip"]),
            "output": tf.constant(o["output"]),
            "image_shape": tf.constant(b.image_shape, tf.int32),
            "num_classes": tf.constant(-1 if model.num_classes is None else model.num_classes,
                                       tf.int32),
            "text_dim": tf.constant(-1 if model.text_dim is None else model.text_dim, tf.int32),
            "sequence_length": tf.constant(sequence_length, tf.int32),
            "max_batch_size": tf.constant(o.get("max_batch_size", MAX_BATCH_SIZE), tf.int32),
        }

    return b.endpoint(metadata, [], [])


def _encode_text_endpoint(b):
    def encode_text(token_ids, padding_mask):
        checks = b.tokens.export_checks({"token_ids": token_ids, "padding_mask": padding_mask})
        return b.encode_core(*b.after(checks, token_ids, padding_mask))

    return b.endpoint(encode_text, list(b.tokens.keys), b.tokens.export_specs())


def _sample_from_tokens_endpoint(b):
    def sample_from_tokens(token_ids, padding_mask, seed):
        checks = b.tokens.export_checks({"token_ids": token_ids, "padding_mask": padding_mask})
        checks.append(b.batch_limit(b.tf.shape(token_ids)[0]))
        token_ids, padding_mask, seed = b.after(checks, token_ids, padding_mask, seed)
        condition = b.encode_core(token_ids, padding_mask)
        noise = b.draw_noise(b.tf.shape(token_ids)[0], seed)
        return b.to_output(b.sample_core(noise, *[condition[k] for k in b.conditioning.keys]))

    return b.endpoint(sample_from_tokens, [*b.tokens.keys, "seed"],
                      [*b.tokens.export_specs(), b.seed_spec])


# The endpoints of every condition kind (built from its signature), and those that a text
# encoder adds (on the token form of captions): name -> builder.
MODEL_ENDPOINTS = {"sample": _sample_endpoint, "sample_from_noise": _sample_from_noise_endpoint,
                   "denoise": _denoise_endpoint, "metadata": _metadata_endpoint}
TOKEN_ENDPOINTS = {"sample_from_tokens": _sample_from_tokens_endpoint,
                   "encode_text": _encode_text_endpoint}


def _write_saved_model(model, path, options, text_encoder=None, decoder=None):
    archive = keras.export.ExportArchive()
    archive.track(model)
    builder = _Builder(model, archive, options, text_encoder, decoder)
    tables = [MODEL_ENDPOINTS] + ([TOKEN_ENDPOINTS] if text_encoder is not None else [])
    for table in tables:
        for name, build in table.items():
            function = build(builder)
            archive.add_endpoint(name, function)
            if name == "sample":  # TF-Serving's default, else the first raw endpoint
                archive.add_endpoint("serving_default", function)
    archive.write_out(path, verbose=False)


# ---------------------------------------------------------------------- the torch route
def _export_in_subprocess(model, path, export_backend, verbose, options, text_encoder=None,
                          decoder=None):
    """Save `model` (and `text_encoder`, `decoder`) as `.keras` and run `export_from_spec` on them in a
    Python subprocess under `export_backend`."""
    if export_backend not in DIRECT_BACKENDS:
        raise ValueError(
            f"export_backend must be one of {DIRECT_BACKENDS}; got {export_backend!r}."
        )
    objects = {"model": model, "text_encoder": text_encoder, "decoder": decoder}
    objects = {name: item for name, item in objects.items() if item is not None}
    modules = custom_object_modules([keras.saving.serialize_keras_object(item)
                                     for item in objects.values()])
    if "__main__" in modules:
        raise ValueError(
            "The model uses custom classes defined in __main__, which the export subprocess "
            "cannot import. Move them to a module (e.g. my_layers.py) and import them from "
            "there, or export from the JAX or TensorFlow backend."
        )
    if verbose:
        print(f"Keras cannot write a SavedModel from the {keras.backend.backend()} backend (it "
              f"needs torch_xla): saving the model as .keras and exporting it with the "
              f"{export_backend} backend in a subprocess.")
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"out": os.path.abspath(path), "options": options, "modules": modules}
        for name, item in objects.items():
            spec[name] = os.path.join(tmp, f"{name}.keras")
            item.save(spec[name])
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as file:
            json.dump(spec, file)
        env = dict(os.environ, KERAS_BACKEND=export_backend)
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p or ".") for p in sys.path)
        script = "import sys, keras_mm.export as e; e.export_from_spec(sys.argv[1])"
        result = subprocess.run([sys.executable, "-c", script, spec_path], env=env,
                                capture_output=True, text=True, check=False)
    if result.returncode != 0:
        needs = "tensorflow is" if export_backend == "tensorflow" else "jax and tensorflow are"
        raise RuntimeError(f"Exporting under the {export_backend} backend failed (exit code "
                           f"{result.returncode}). Check that {needs} installed. The "
                           f"subprocess said:\n{result.stderr[-3000:]}")


def export_from_spec(spec_path):
    """The export subprocess of the torch route: load the `.keras` files that a JSON spec
    names (`model`, optional `text_encoder` and `decoder`, `modules` to import first) and
    write the SavedModel `out` with `options`."""
    import importlib

    with open(spec_path) as file:
        spec = json.load(file)
    for module in spec["modules"]:
        importlib.import_module(module)
    model = keras.saving.load_model(spec["model"])
    encoder = keras.saving.load_model(spec["text_encoder"]) if "text_encoder" in spec else None
    decoder = keras.saving.load_model(spec["decoder"]) if "decoder" in spec else None
    _write_saved_model(model, spec["out"], spec["options"], encoder, decoder)


def custom_object_modules(config):
    """Modules defining the registered custom classes named in a serialized Keras config.

    A fresh process imports them before loading a `.keras` file (keras_mm's own included:
    `import keras_mm` does not import every model file). `config` is what
    `keras.saving.serialize_keras_object(model)` returns, or a `.keras` file's config.json.
    """
    modules, stack = set(), [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("registered_name") and item.get("module"):
                modules.add(item["module"])
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sorted(m for m in modules if not m.startswith("keras."))
