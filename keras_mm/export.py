"""Export a `DiffusionModel`'s sampler as a TensorFlow SavedModel, for serving without keras_mm.

The SavedModel is written through `keras.export.ExportArchive`. Its endpoints are TensorFlow
functions that check their inputs, draw the sampler's noise with
`tf.random.stateless_normal` from a seed and call the model's sampler, which is traced by
TensorFlow on the TensorFlow backend and converted by jax2tf on the JAX backend. Keras cannot
write SavedModels from the torch backend (it needs torch_xla), so there the model is saved as
`.keras` and exported by `keras-mm export` in a TensorFlow-backend subprocess.
"""

import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_mm.diffusion import samplers
from keras_mm.models.diffusion_model import DiffusionModel

OUTPUTS = ("uint8", "float")
DIRECT_BACKENDS = ("jax", "tensorflow")


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
):
    """Write a SavedModel that samples from `model` in `num_steps` steps.

    The SavedModel needs only TensorFlow to run (`tf.saved_model.load(path)`). Its
    endpoints, all with a dynamic batch size B:

    - class-conditional models: `sample(labels: int32[B], seed: int32[2]) -> images`;
      unconditional models: `sample(batch_size: int32[], seed: int32[2]) -> images`.
      The noise is `tf.random.stateless_normal([num_noise_draws, B, H, W, C], seed)` (see
      `sampler_noise`), so a seed gives the same images as `model.sample(noise=...)`.
    - `sample_from_noise(labels | -, noise: float32[num_noise_draws, B, H, W, C])`: the same
      sampler with explicit noise.
    - `denoise(noisy: float32[B, H, W, C], logsnr: float32[B], labels: int32[B]) -> x_hat`
      (no `labels` for unconditional models): one network evaluation, unguided, for users
      who write their own loop. The null label `num_classes` gives the unconditional x_hat.
    - `metadata() -> dict`: num_steps, sampler, guidance_scale, output, image_shape,
      num_classes (-1 when unconditional), text_dim and sequence_length (-1 when unused).

    Text-conditional models (network `text_dim` set) take a caption's T5 embeddings instead
    of labels: `sample(text_embeddings: float32[B, L, text_dim], text_mask: bool[B, L],
    seed)`, `sample_from_noise(text_embeddings, text_mask, noise)` and
    `denoise(noisy, logsnr, text_embeddings, text_mask)`; an all-False mask row is the null
    caption. With `text_encoder`, the frozen T5 encoder is exported too, so captions' token
    ids work without keras_mm or KerasHub: `sample_from_tokens(token_ids: int32[B, L],
    padding_mask: bool[B, L], seed)` and `encode_text(token_ids, padding_mask) ->
    {"text_embeddings", "text_mask"}`. The token ids are those of the T5 SentencePiece
    tokenizer (`text_encoder.tokenize(captions)`; any SentencePiece runtime with the
    preset's `vocabulary.spm`, adding the end token `</s>`); the tokenizer itself is not in
    the graph, which would need TensorFlow Text to load.

    Images are uint8 in [0, 255] (`round((x + 1) * 127.5)`, clipped) with `output="uint8"`,
    or the sampler's float32 x_hat, roughly in [-1, 1] and clipped only when `clip=True`, with
    `output="float"`. Labels must lie in [0, num_classes], num_classes being the null label
    of classifier-free guidance, token ids in the T5 vocabulary, text masks must match their
    embeddings' [B, L], and B must be >= 1: the graph checks this and raises
    `InvalidArgumentError` naming the bad input.

    On the JAX and TensorFlow backends the model is exported in this process. On the torch
    backend, which Keras cannot export to SavedModel, the model is saved to a temporary
    `.keras` file and `keras-mm export` runs in a subprocess under `export_backend`; the
    modules of the model's registered custom classes are imported there, so a custom network
    must be defined in an importable module (not `__main__`).

    Args:
        model: a `keras_mm.DiffusionModel`: a teacher, or a distiller's `.generator`.
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
            trained with, to add the token-id endpoints.

    Returns:
        `path`.

    Example:
    ```python
    keras_mm.export_sampler(teacher, "digits_sampler", num_steps=8)
    # Anywhere with TensorFlow, no keras_mm needed:
    sampler = tf.saved_model.load("digits_sampler")
    images = sampler.sample(labels=tf.constant([0, 1, 2]), seed=tf.constant([0, 0]))

    # Text to image: tokens from the T5 tokenizer, encoder and sampler in the SavedModel.
    keras_mm.export_sampler(student.generator, "t2i_sampler", num_steps=8,
                            text_encoder=encoder)
    tokens = encoder.tokenize(["a red square on the left"])
    images = tf.saved_model.load("t2i_sampler").sample_from_tokens(
        token_ids=tokens["token_ids"], padding_mask=tokens["padding_mask"], seed=[0, 0])
    ```

    References:
        Salimans et al. 2024, Algorithm 1 (the sampler that is exported).
    """
    if not isinstance(model, DiffusionModel):
        hint = " Pass its `.generator`." if hasattr(model, "generator") else ""
        raise TypeError(
            f"export_sampler needs a keras_mm.DiffusionModel; got {type(model).__name__}.{hint}"
        )
    samplers.num_noise_draws(sampler, num_steps)  # validates both
    if output not in OUTPUTS:
        raise ValueError(f"Unknown output {output!r}; expected one of {OUTPUTS}.")
    guidance_scale = float(guidance_scale)
    if guidance_scale and model.num_classes is None and model.text_dim is None:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs a class-conditional model; this one has "
            "num_classes=None. Export with guidance_scale=0."
        )
    _check_text_encoder(model, text_encoder)
    options = {
        "num_steps": num_steps,
        "sampler": sampler,
        "guidance_scale": guidance_scale,
        "output": output,
        "clip": bool(clip),
    }
    backend = keras.backend.backend()
    if backend in DIRECT_BACKENDS:
        _write_saved_model(model, os.fspath(path), text_encoder=text_encoder, **options)
    elif text_encoder is not None:
        _export_text_in_subprocess(model, text_encoder, os.fspath(path), export_backend,
                                   verbose, options)
    else:
        _export_in_subprocess(model, os.fspath(path), export_backend, verbose, **options)
    if verbose:
        kind = "unconditional" if model.num_classes is None else "class-conditional"
        endpoints = "sample, sample_from_noise, denoise, metadata"
        if model.text_dim is not None:
            kind = "text-conditional"
            if text_encoder is not None:
                endpoints += ", sample_from_tokens, encode_text"
        print(
            f"Saved a {num_steps}-step {sampler} sampler ({kind}, {output} images) to "
            f"'{os.fspath(path)}'. Endpoints: {endpoints}."
        )
    return path


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
def _write_saved_model(model, path, num_steps, sampler, guidance_scale, output, clip,
                       text_encoder=None):
    import tensorflow as tf

    image_shape = tuple(model.image_shape)
    num_classes = model.num_classes
    num_draws = samplers.num_noise_draws(sampler, num_steps)
    conditional = num_classes is not None
    text_dim = model.text_dim
    archive = keras.export.ExportArchive()
    archive.track(model)
    encoder_core = None
    if text_encoder is not None:
        # The encoder's layers without its preprocessor, whose SentencePiece op would make
        # the SavedModel need TensorFlow Text.
        encoder_core = keras.Model(text_encoder.input, text_encoder.output)
        archive.track(encoder_core)

    # Model code, traced on the current backend. The condition travels as a tuple of tensors
    # (labels; for text, later: text_embeddings and text_mask), so that a text-conditional
    # model adds its specs here and its own endpoints below.
    condition_specs = [tf.TensorSpec([None], tf.int32, name="labels")] if conditional else []
    condition_shapes = ["(b,)"] if conditional else []
    if text_dim is not None:
        text_specs = [
            tf.TensorSpec([None, None, text_dim], tf.float32, name="text_embeddings"),
            tf.TensorSpec([None, None], tf.bool, name="text_mask"),
        ]
        condition_specs = text_specs
        condition_shapes = [f"(b, l, {text_dim})", "(b, l)"]

    def to_condition(condition_tensors):
        if text_dim is not None:
            return {"text_embeddings": condition_tensors[0], "text_mask": condition_tensors[1]}
        return {"labels": condition_tensors[0]} if conditional else {}

    def sample_fn(noise, *condition_tensors):
        return model.sample_from_noise(noise, to_condition(condition_tensors), num_steps,
                                       sampler, guidance_scale, clip)

    def denoise_fn(noisy, logsnr, *condition_tensors):
        return model.denoise(noisy, logsnr, to_condition(condition_tensors))

    noise_spec = tf.TensorSpec([num_draws, None, *image_shape], tf.float32, name="noise")
    image_spec = tf.TensorSpec([None, *image_shape], tf.float32, name="noisy")
    logsnr_spec = tf.TensorSpec([None], tf.float32, name="logsnr")
    dims = ", ".join(str(d) for d in image_shape)
    sample_core = _backend_function(
        archive,
        "sample_core",
        sample_fn,
        [noise_spec, *condition_specs],
        [f"({num_draws}, b, {dims})", *condition_shapes],
    )
    denoise_core = _backend_function(
        archive,
        "denoise_core",
        denoise_fn,
        [image_spec, logsnr_spec, *condition_specs],
        [f"(b, {dims})", "(b,)", *condition_shapes],
    )

    # The TensorFlow side: input checks, noise from the seed, and the output format.
    def check_labels(labels):
        return [
            tf.debugging.assert_positive(
                tf.size(labels), message="labels must hold at least one label (B >= 1)."
            ),
            tf.debugging.assert_non_negative(
                labels,
                message=f"labels must be in [0, {num_classes}) (or {num_classes}, the null "
                "label, for unconditional samples); got a negative label.",
            ),
            tf.debugging.assert_less_equal(
                labels,
                tf.constant(num_classes, tf.int32),
                message=f"labels must be in [0, {num_classes}) (or {num_classes}, the null "
                f"label, for unconditional samples); got a label above {num_classes}.",
            ),
        ]

    def check_batch(tensor, batch_size, what):
        return tf.debugging.assert_equal(
            tf.shape(tensor)[1 if what == "noise" else 0],
            batch_size,
            message=f"{what} must have the batch size of the labels.",
        )

    def after(checks, *tensors):
        # Every input of the model goes through the checks: TensorFlow inlines the model's
        # function, so an unchecked input (the labels of an embedding) would run early.
        with tf.control_dependencies(checks):
            return [tf.identity(tensor) for tensor in tensors]

    def to_output(x_hat):
        if output == "float":
            return x_hat
        return tf.cast(tf.clip_by_value(tf.round((x_hat + 1.0) * 127.5), 0.0, 255.0), tf.uint8)

    def draw_noise(batch_size, seed):
        return tf.random.stateless_normal([num_draws, batch_size, *image_shape], seed=seed)

    seed_spec = tf.TensorSpec([2], tf.int32, name="seed")
    token_endpoints = []
    if text_dim is not None:

        def check_text(text_embeddings, text_mask, batch_size=None, what="noise"):
            shape = tf.shape(text_embeddings)
            checks = [
                tf.debugging.assert_positive(
                    shape[0], message="text_embeddings must hold at least one caption (B >= 1)."
                ),
                tf.debugging.assert_equal(
                    tf.shape(text_mask), shape[:2],
                    message="text_mask must have the shape [B, L] of text_embeddings [B, L, D].",
                ),
            ]
            if batch_size is not None:
                checks.append(tf.debugging.assert_equal(
                    batch_size, shape[0],
                    message=f"{what} must have the batch size of the text embeddings.",
                ))
            return checks

        @tf.function(input_signature=[*text_specs, seed_spec], autograph=False)
        def sample(text_embeddings, text_mask, seed):
            text_embeddings, text_mask, seed = after(
                check_text(text_embeddings, text_mask), text_embeddings, text_mask, seed)
            noise = draw_noise(tf.shape(text_embeddings)[0], seed)
            return to_output(sample_core(noise, text_embeddings, text_mask))

        @tf.function(input_signature=[*text_specs, noise_spec], autograph=False)
        def sample_from_noise(text_embeddings, text_mask, noise):
            checks = check_text(text_embeddings, text_mask, tf.shape(noise)[1])
            text_embeddings, text_mask, noise = after(checks, text_embeddings, text_mask, noise)
            return to_output(sample_core(noise, text_embeddings, text_mask))

        @tf.function(input_signature=[image_spec, logsnr_spec, *text_specs], autograph=False)
        def denoise(noisy, logsnr, text_embeddings, text_mask):
            batch_size = tf.shape(noisy)[0]
            checks = check_text(text_embeddings, text_mask, batch_size, "noisy") + [
                tf.debugging.assert_equal(tf.shape(logsnr)[0], batch_size,
                                          message="logsnr must have the batch size of noisy.")]
            return denoise_core(*after(checks, noisy, logsnr, text_embeddings, text_mask))

        if encoder_core is not None:
            vocabulary_size = text_encoder.vocabulary_size
            token_specs = [
                tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                tf.TensorSpec([None, None], tf.bool, name="padding_mask"),
            ]

            def encode_fn(token_ids, padding_mask):
                out = encoder_core(
                    {"token_ids": token_ids, "padding_mask": keras.ops.cast(padding_mask, "int32")}
                )
                return out["text_embeddings"], out["text_mask"]

            encode_core = _backend_function(
                archive, "encode_core", encode_fn, token_specs, ["(b, l)", "(b, l)"])

            def check_tokens(token_ids, padding_mask):
                return [
                    tf.debugging.assert_positive(
                        tf.shape(token_ids)[0],
                        message="token_ids must hold at least one caption (B >= 1).",
                    ),
                    tf.debugging.assert_equal(
                        tf.shape(padding_mask), tf.shape(token_ids),
                        message="padding_mask must have the shape [B, L] of token_ids.",
                    ),
                    tf.debugging.assert_non_negative(
                        token_ids, message="token_ids must be >= 0; got a negative token id."
                    ),
                    tf.debugging.assert_less(
                        token_ids, tf.constant(vocabulary_size, tf.int32),
                        message=f"token_ids must be below the T5 vocabulary size "
                        f"{vocabulary_size}; got a larger id.",
                    ),
                ]

            @tf.function(input_signature=token_specs, autograph=False)
            def encode_text(token_ids, padding_mask):
                token_ids, padding_mask = after(
                    check_tokens(token_ids, padding_mask), token_ids, padding_mask)
                text_embeddings, text_mask = encode_core(token_ids, padding_mask)
                return {"text_embeddings": text_embeddings, "text_mask": text_mask}

            @tf.function(input_signature=[*token_specs, seed_spec], autograph=False)
            def sample_from_tokens(token_ids, padding_mask, seed):
                token_ids, padding_mask, seed = after(
                    check_tokens(token_ids, padding_mask), token_ids, padding_mask, seed)
                text_embeddings, text_mask = encode_core(token_ids, padding_mask)
                noise = draw_noise(tf.shape(token_ids)[0], seed)
                return to_output(sample_core(noise, text_embeddings, text_mask))

            token_endpoints = [("sample_from_tokens", sample_from_tokens),
                               ("encode_text", encode_text)]

    elif conditional:
        labels_spec = tf.TensorSpec([None], tf.int32, name="labels")

        @tf.function(input_signature=[labels_spec, seed_spec], autograph=False)
        def sample(labels, seed):
            labels, seed = after(check_labels(labels), labels, seed)
            return to_output(sample_core(draw_noise(tf.size(labels), seed), labels))

        @tf.function(input_signature=[labels_spec, noise_spec], autograph=False)
        def sample_from_noise(labels, noise):
            checks = check_labels(labels) + [check_batch(noise, tf.size(labels), "noise")]
            labels, noise = after(checks, labels, noise)
            return to_output(sample_core(noise, labels))

        @tf.function(input_signature=[image_spec, logsnr_spec, labels_spec], autograph=False)
        def denoise(noisy, logsnr, labels):
            batch_size = tf.shape(noisy)[0]
            checks = check_labels(labels) + [
                check_batch(labels, batch_size, "labels"),
                check_batch(logsnr, batch_size, "logsnr"),
            ]
            return denoise_core(*after(checks, noisy, logsnr, labels))

    else:
        batch_spec = tf.TensorSpec([], tf.int32, name="batch_size")

        @tf.function(input_signature=[batch_spec, seed_spec], autograph=False)
        def sample(batch_size, seed):
            check = tf.debugging.assert_positive(
                batch_size, message="batch_size must be >= 1."
            )
            batch_size, seed = after([check], batch_size, seed)
            return to_output(sample_core(draw_noise(batch_size, seed)))

        @tf.function(input_signature=[noise_spec], autograph=False)
        def sample_from_noise(noise):
            check = tf.debugging.assert_positive(
                tf.shape(noise)[1], message="noise must hold at least one image (B >= 1)."
            )
            (noise,) = after([check], noise)
            return to_output(sample_core(noise))

        @tf.function(input_signature=[image_spec, logsnr_spec], autograph=False)
        def denoise(noisy, logsnr):
            batch_size = tf.shape(noisy)[0]
            checks = [
                tf.debugging.assert_positive(batch_size, message="noisy must hold B >= 1."),
                check_batch(logsnr, batch_size, "logsnr"),
            ]
            return denoise_core(*after(checks, noisy, logsnr))

    @tf.function(input_signature=[], autograph=False)
    def metadata():
        return {
            "num_steps": tf.constant(num_steps, tf.int32),
            "sampler": tf.constant(sampler),
            "guidance_scale": tf.constant(guidance_scale, tf.float32),
            "clip": tf.constant(clip),
            "output": tf.constant(output),
            "image_shape": tf.constant(image_shape, tf.int32),
            "num_classes": tf.constant(-1 if num_classes is None else num_classes, tf.int32),
            "text_dim": tf.constant(-1 if text_dim is None else text_dim, tf.int32),
            "sequence_length": tf.constant(
                (text_encoder.sequence_length or -1) if text_encoder is not None else -1,
                tf.int32,
            ),
        }

    for name, function in [
        ("sample", sample),
        ("sample_from_noise", sample_from_noise),
        ("denoise", denoise),
        ("metadata", metadata),
        *token_endpoints,
    ]:
        function.get_concrete_function()  # traced now, so ExportArchive takes it as is
        archive.add_endpoint(name, function)
    archive.write_out(path, verbose=False)


def _backend_function(archive, name, fn, input_signature, polymorphic_shapes):
    """`fn` (Keras code using the tracked model) as a TensorFlow function.

    On the TensorFlow backend that is a `tf.function`. On JAX it is the jax2tf conversion
    that `ExportArchive.add_endpoint` makes, with the model's variables bound as TensorFlow
    variables, but without registering an endpoint: the public endpoints wrap it in
    TensorFlow code that JAX cannot trace (input assertions, `stateless_normal`). The shared
    symbol `b` tells jax2tf that all batch dimensions are equal.
    """
    import tensorflow as tf

    if keras.backend.backend() == "jax":
        return archive._backend_add_endpoint(
            name, fn, input_signature, jax2tf_kwargs={"polymorphic_shapes": polymorphic_shapes}
        )
    return tf.function(fn, input_signature=input_signature, autograph=False)


# ---------------------------------------------------------------------- the torch route
def _export_in_subprocess(model, path, export_backend, verbose, **options):
    if export_backend not in DIRECT_BACKENDS:
        raise ValueError(
            f"export_backend must be one of {DIRECT_BACKENDS}; got {export_backend!r}."
        )
    modules = custom_object_modules(keras.saving.serialize_keras_object(model))
    if "__main__" in modules:
        raise ValueError(
            "The model uses custom classes defined in __main__, which the export subprocess "
            "cannot import. Move them to a module (e.g. my_layers.py) and import them from "
            "there, or export from the JAX or TensorFlow backend."
        )
    if verbose:
        print(
            f"Keras cannot write a SavedModel from the {keras.backend.backend()} backend (it "
            f"needs torch_xla): saving the model as .keras and exporting it with the "
            f"{export_backend} backend in a subprocess."
        )
    with tempfile.TemporaryDirectory() as tmp:
        keras_path = os.path.join(tmp, "model.keras")
        model.save(keras_path)
        command = [
            sys.executable, "-m", "keras_mm.cli", "export",
            "--model", keras_path,
            "--out", os.path.abspath(path),
            "--num-steps", str(options["num_steps"]),
            "--sampler", options["sampler"],
            "--guidance-scale", repr(options["guidance_scale"]),
            "--output", options["output"],
            "--quiet",
        ]  # fmt: skip
        if options["clip"]:
            command.append("--clip")
        for module in modules:
            command += ["--custom-module", module]
        env = dict(os.environ, KERAS_BACKEND=export_backend)
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p or ".") for p in sys.path)
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        needs = "tensorflow is" if export_backend == "tensorflow" else "jax and tensorflow are"
        raise RuntimeError(
            f"Exporting under the {export_backend} backend failed (exit code "
            f"{result.returncode}). Check that {needs} installed. The subprocess said:\n"
            + result.stderr[-3000:]
        )


# Run under `export_backend` by `_export_text_in_subprocess` (the CLI takes no text encoder).
_EXPORT_TEXT_SCRIPT = """
import importlib, json, sys
spec = json.load(open(sys.argv[1]))
for module in spec["modules"]:
    importlib.import_module(module)
import keras
from keras_mm.export import export_sampler
model = keras.saving.load_model(spec["model"])
encoder = keras.saving.load_model(spec["text_encoder"])
export_sampler(model, spec["out"], text_encoder=encoder, verbose=False, **spec["options"])
"""


def _export_text_in_subprocess(model, text_encoder, path, export_backend, verbose, options):
    """The torch route of `_export_in_subprocess` for a model and its text encoder."""
    import json

    if export_backend not in DIRECT_BACKENDS:
        raise ValueError(
            f"export_backend must be one of {DIRECT_BACKENDS}; got {export_backend!r}."
        )
    modules = custom_object_modules(
        [keras.saving.serialize_keras_object(model),
         keras.saving.serialize_keras_object(text_encoder)]
    )
    if "__main__" in modules:
        raise ValueError(
            "The model uses custom classes defined in __main__, which the export subprocess "
            "cannot import. Move them to a module and import them from there."
        )
    if verbose:
        print(
            f"Keras cannot write a SavedModel from the {keras.backend.backend()} backend (it "
            f"needs torch_xla): saving the model and text encoder as .keras and exporting "
            f"them with the {export_backend} backend in a subprocess."
        )
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "model": os.path.join(tmp, "model.keras"),
            "text_encoder": os.path.join(tmp, "text_encoder.keras"),
            "out": os.path.abspath(path),
            "options": options,
            "modules": modules,
        }
        model.save(spec["model"])
        text_encoder.save(spec["text_encoder"])
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as file:
            json.dump(spec, file)
        env = dict(os.environ, KERAS_BACKEND=export_backend)
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p or ".") for p in sys.path)
        result = subprocess.run([sys.executable, "-c", _EXPORT_TEXT_SCRIPT, spec_path],
                                env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"Exporting under the {export_backend} backend failed (exit code "
            f"{result.returncode}). The subprocess said:\n" + result.stderr[-3000:]
        )


def custom_object_modules(config):
    """Modules defining the registered custom classes named in a serialized Keras config.

    A fresh process imports them before loading a `.keras` file (keras_mm's own included:
    `import keras_mm` does not import every model file). `config` is what
    `keras.saving.serialize_keras_object(model)` returns, or a `.keras` file's config.json.
    """
    modules = set()

    def collect(item):
        if isinstance(item, dict):
            if item.get("registered_name") and item.get("module"):
                modules.add(item["module"])
            for value in item.values():
                collect(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                collect(value)

    collect(config)
    return sorted(m for m in modules if not m.startswith("keras."))
