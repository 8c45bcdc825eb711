"""The `keras-mm` command line.

    keras-mm train-teacher --config digits --run-dir runs/teacher
    keras-mm distill --config digits --teacher runs/teacher/teacher.keras --run-dir runs/student
    keras-mm evaluate --config digits --model runs/student/generator.keras
    keras-mm export --model runs/student/generator.keras --num-steps 8 --out runs/sampler
    keras-mm sample --model runs/sampler --labels 1,2,3 --seed 0 --out grid.png

Text to image (data.source "captions", e.g. the text2image_toy preset) runs the same chain:
the captions are encoded once by data.text_encoder (a KerasHub T5 preset or a local preset
directory) and cached in the run directory; `sample` takes `--captions` instead of
`--labels`, and `export` adds the text encoder (`sample_from_tokens`) to the SavedModel.
On a CPU with the tiny local T5 that examples/text_to_image.py writes (64-wide):

    T2I="--config text2image_toy --set data.text_encoder=runs/text_to_image/t5_tiny_preset
         --set model.uvit.text_dim=64"
    keras-mm train-teacher $T2I --run-dir runs/t2i_teacher
    keras-mm distill $T2I --teacher runs/t2i_teacher/teacher.keras --run-dir runs/t2i_student
    keras-mm evaluate --model runs/t2i_student/generator.keras
    keras-mm export --model runs/t2i_student/generator.keras --out runs/t2i_sampler
    keras-mm sample --model runs/t2i_sampler --captions "a red square on the left" --out t2i.png

`train-teacher`, `distill` and `evaluate` read a named config (`keras_mm.configs`) or a JSON
file, changed by `--set section.key=value` and explicit flags. Training runs in checkpoints
of `checkpoint_every` steps (a Keras "epoch" each): a progress bar, a CSV and TensorBoard row
and a `keras.callbacks.BackupAndRestore` checkpoint per checkpoint, so re-running an
interrupted command resumes it.

Each subcommand is a pair of functions: `add_<name>_command(subparsers)` declares its
arguments and sets `run=<function>`, which takes the parsed arguments and returns an exit
code. To add one, write the pair and list the `add_` function in `COMMANDS`. Keras is
imported inside the functions only: `--backend` must be set before Keras starts (see
`select_backend`).
"""

import argparse
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile

BACKENDS = ("jax", "tensorflow", "torch")


class CommandError(Exception):
    """A user error: printed as `keras-mm <command>: error: <message>`, exit code 2."""


def main(argv=None):
    """Entry point of `keras-mm`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    backend = requested_backend(argv)
    if backend is not None and not select_backend(backend):
        return rerun_with_backend(backend, argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except CommandError as error:
        print(f"keras-mm {args.command}: error: {error}", file=sys.stderr)
        return 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-mm",
        description="Multistep distillation of diffusion models via moment matching: train a "
        "teacher, distill a few-step student, evaluate, export and sample. `keras-mm COMMAND "
        "--help` explains each command and its config keys.",
    )
    add_backend_argument(parser, default=None)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


# ---------------------------------------------------------------------- backend
def requested_backend(argv):
    """The value of `--backend X` / `--backend=X` in `argv`, if a valid one is there."""
    for index, token in enumerate(argv):
        if token == "--backend" and index + 1 < len(argv):
            value = argv[index + 1]
        elif token.startswith("--backend="):
            value = token.partition("=")[2]
        else:
            continue
        return value if value in BACKENDS else None
    return None


def select_backend(backend):
    """Sets KERAS_BACKEND before Keras is imported; False if Keras already runs another."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
        return True
    import keras

    return keras.backend.backend() == backend


def rerun_with_backend(backend, argv):
    """Runs the command in a fresh process whose Keras starts on `backend`.

    Keras fixes its backend when first imported, and `import keras_mm` (which runs before
    this module) imports Keras, so a different backend needs a new interpreter.
    """
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.call([sys.executable, "-m", "keras_mm.cli", *argv], env=env)


def add_backend_argument(parser, default=argparse.SUPPRESS):
    parser.add_argument(
        "--backend", choices=BACKENDS, default=default,
        help="Keras backend (default: $KERAS_BACKEND, else Keras's configured one). It is "
        "set before Keras is imported; if Keras is already running another backend, the "
        "command re-runs itself in a fresh process.")


# ---------------------------------------------------------------------- configs
CONFIG_EPILOG = (
    "Configs: {presets}, or a JSON file (a full config, or {{\"base\": \"<preset>\", ...}} with "
    "the keys that change). --print-config shows the resolved one. Keys for --set KEY=VALUE "
    "(values are JSON: 8, 1e-4, null, true, [32, 32, 3], {{\"base_channels\": 64}}; anything "
    "else is a string):"
)


def add_config_arguments(parser, default="digits", model_fallback=None):
    """--config, --set, --print-config and --backend. Commands on a saved model take
    `default=None`: their config defaults to the model's run config, else `model_fallback`."""
    from keras_mm.configs import CONFIGS

    if default is not None:
        which = f"default {default}"
    else:
        which = "default: the config.json beside --model, written by train-teacher/distill"
        which += f", else {model_fallback}" if model_fallback else ", if any"
    parser.add_argument("--config", default=default, metavar="NAME_OR_FILE",
                        help=f"config preset ({', '.join(CONFIGS)}) or JSON file ({which}).")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set distill.steps=100 --set "
        "model.uvit.base_channels=64 (repeatable; applied before the explicit flags).")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit.")
    add_backend_argument(parser)


def wrap(text):
    """`text` filled to the terminal's usual width (help texts with a raw epilog)."""
    return textwrap.fill(text, width=88)


def config_epilog(sections):
    from keras_mm.configs import CONFIGS, describe_keys

    header = wrap(CONFIG_EPILOG.format(presets=", ".join(CONFIGS)))
    return f"{header}\n{describe_keys(sections)}\n"


def resolve_config(args, section=None, flags=()):
    """The config named by `--config`, with `--set` overrides, then the explicit flags
    (`flags`: pairs of argument name and key of `section`)."""
    from keras_mm import configs

    try:
        config = configs.get_config(args.config)
        config = configs.apply_overrides(config, args.overrides)
        for name, key in flags:
            value = getattr(args, name, None)
            if value is not None:
                config = configs.set_value(config, f"{section}.{key}", value)
        configs.check_config(config)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None
    return config


def run_config_of(model_path):
    """The config.json that train-teacher / distill wrote beside `model_path`, if any."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    return path if os.path.isfile(path) else None


def resolve_model_config(args, fallback, flags=(), section=None):
    """The config of a command on a saved model: --config, else the model's run config,
    else `fallback` (None: no config)."""
    if args.config is None:
        args.config = run_config_of(args.model) or fallback
        if args.config is not None and args.config != fallback:
            print(f"Using the config of the model's run, {args.config}.")
    if args.config is None:
        return None
    return resolve_config(args, section, flags)


def print_config(config):
    print(json.dumps(config, indent=2))
    return 0


def check_runnable(config, command):
    source = config["data"]["source"]
    if source == "captions":
        check_caption_config(config)
    elif source not in ("digits", "tfds"):
        raise CommandError(
            f"Unknown data.source {source!r}; expected 'digits', 'tfds' or 'captions'."
        )


# ---------------------------------------------------------------------- captions
SHAPES = "shapes"  # data.name of keras_mm.datasets.make_captioned_shapes
SHAPES_BACKGROUND_TINT = 0.4  # as examples/text_to_image.py: colour is a whole-image cue
TOKENIZER_FILE = os.path.join("assets.extra", "t5_vocabulary.spm")  # in exported SavedModels


def is_text(config):
    return config is not None and config["data"]["source"] == "captions"


def check_caption_config(config):
    """One-line errors for a captions config's data section, before anything is loaded."""
    data = config["data"]
    if data["num_classes"] is not None:
        raise CommandError("Caption data is not labelled: set data.num_classes=null.")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise CommandError(f"data.name must be {SHAPES!r} or a TFDS dataset name; got {name!r}.")
    if name != SHAPES:
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(name, data_dir=data["data_dir"])
        except Exception as error:  # noqa: BLE001 - TFDS raises several kinds
            raise CommandError(
                f"Unknown data.name {name!r} for captions: neither {SHAPES!r} (the bundled "
                f"captioned shapes) nor a TFDS dataset ({first_line(error)})."
            ) from None
        features = builder.info.features
        caption = data["caption_feature"].split("/")[0]
        for key, feature in (("image_feature", data["image_feature"]),
                             ("caption_feature", caption)):
            if feature not in features:
                raise CommandError(
                    f"TFDS dataset {name!r} has no feature {feature!r} (data.{key}); its "
                    f"features are {sorted(features.keys())}."
                )
    encoder = data["text_encoder"]
    if not isinstance(encoder, str) or not encoder:
        raise CommandError("data.text_encoder must name a KerasHub T5 preset or a local "
                           f"preset directory; got {encoder!r}.")


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_text_encoder(config):
    """The `keras_mm.TextEncoder` of data.text_encoder, or a one-line CommandError."""
    data = config["data"]
    preset = data["text_encoder"]
    looks_local = "://" not in preset and (
        os.sep in preset or "/" in preset or preset.startswith((".", "~")))
    path = os.path.expanduser(preset)
    if looks_local and not os.path.isdir(path):
        raise CommandError(f"data.text_encoder: no text encoder preset directory at "
                           f"'{preset}'.")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise CommandError(
            f"data.text_encoder: '{preset}' is not a KerasHub preset directory (no "
            "config.json); write one with T5Backbone.save_to_preset and "
            "T5Tokenizer.save_to_preset.")
    import warnings

    from keras_mm.models.text_encoder import TextEncoder

    try:
        with warnings.catch_warnings():  # KerasHub's T5 layers warn about Keras masks
            warnings.filterwarnings("ignore", message=".*does not support masking")
            encoder = TextEncoder.from_preset(path if os.path.isdir(path) else preset,
                                              sequence_length=data["sequence_length"])
    except Exception as error:  # noqa: BLE001 - KerasHub/Kaggle raise many kinds
        raise CommandError(
            f"Could not load the text encoder data.text_encoder={preset!r}: "
            f"{first_line(error)}") from None
    print(f"Text encoder {preset}: {encoder.hidden_dim}-wide embeddings, "
          f"{encoder.sequence_length} tokens per caption.")
    return encoder


def check_text_dim(model, config, encoder=None):
    """The model takes captions exactly when the config's data has them, and (given the
    encoder) at the encoder's width."""
    text_dim = getattr(model, "text_dim", None)
    if not is_text(config):
        if text_dim is not None:
            raise CommandError(
                f"The model is text-conditional (text_dim={text_dim}) but the config's "
                f"data.source is {config['data']['source']!r}: use a captions config, e.g. "
                "--config text2image_toy, or the config.json of the model's run.")
        return
    width = "the text encoder's hidden_dim" if encoder is None else encoder.hidden_dim
    if text_dim is None:
        raise CommandError(
            f"data.source is 'captions' but the network has no text_dim: set "
            f"model.uvit.text_dim to {width}.")
    if encoder is not None and text_dim != encoder.hidden_dim:
        raise CommandError(
            f"model.uvit.text_dim is {text_dim} but the text encoder "
            f"{config['data']['text_encoder']!r} gives {encoder.hidden_dim}-wide embeddings; "
            f"set --set model.uvit.text_dim={encoder.hidden_dim} (and train the teacher "
            "with it).")


class CaptionData:
    """A captions config's images, captions and cached text embeddings.

    Each distinct caption goes through the text encoder once; the embeddings are kept in
    `cache_dir`/caption_embeddings.npz (keyed by caption and encoder config) across runs.
    """

    def __init__(self, config, encoder, cache_dir=None):
        self.config = config
        self.encoder = encoder
        self.cache_path = (os.path.join(cache_dir, "caption_embeddings.npz")
                           if cache_dir else None)
        self._reference = None

    def examples(self, split, num_examples, seed=0):
        """`(images float32 [N, H, W, C] in [-1, 1], captions)` of `split`."""
        data = self.config["data"]
        height, width, channels = data["image_shape"]
        if data["name"] == SHAPES:
            if height != width or channels != 3:
                raise CommandError(f"The {SHAPES!r} data is square RGB; data.image_shape is "
                                   f"{data['image_shape']}.")
            from keras_mm.datasets import make_captioned_shapes

            try:
                return make_captioned_shapes(
                    num_examples or 8192, image_size=height,
                    background_tint=SHAPES_BACKGROUND_TINT, seed=seed)
            except ValueError as error:
                raise CommandError(f"data: {error}") from None
        return load_tfds_captions(data, split, num_examples)

    def condition(self, captions):
        """`{"text_embeddings", "text_mask"}` of `captions`, through the cache."""
        from keras_mm.datasets import encode_captions

        return encode_captions(self.encoder, captions, cache_path=self.cache_path)

    def stream(self, batch_size, seed):
        from keras_mm.datasets import captioned_dataset

        data = self.config["data"]
        images, captions = self.examples(data["split"], data["num_examples"], seed=0)
        print(f"{len(images)} captioned images, e.g. {captions[0]!r}.")
        return captioned_dataset(images, captions, self.encoder, batch_size=batch_size,
                                 seed=seed, cache_path=self.cache_path).repeat()

    def reference(self):
        """The evaluation's real images and their captions (a held-out draw of the shapes,
        or the first eval.num_reference examples of eval.reference_split)."""
        if self._reference is None:
            evaluation = self.config["eval"]
            count = max(evaluation["num_reference"] or 0, evaluation["num_samples"])
            if self.config["data"]["name"] != SHAPES and evaluation["num_reference"] is None:
                count = None
            self._reference = self.examples(evaluation["reference_split"], count, seed=1)
        return self._reference

    def eval_captions(self, num_samples):
        captions = self.reference()[1]
        return [captions[i % len(captions)] for i in range(num_samples)]

    def eval_condition(self, num_samples):
        """The condition of `num_samples` evaluation samples: the reference captions."""
        return self.condition(self.eval_captions(num_samples))


def load_tfds_captions(data, split, num_examples):
    """Images (center-cropped, resized, in [-1, 1]) and one caption each from TFDS, held in
    memory: fine for moderate datasets; at scale, encode and shard offline."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    size = data["image_shape"][0]
    try:
        dataset = tfds.load(data["name"], split=split, data_dir=data["data_dir"],
                            shuffle_files=False)
    except Exception as error:  # noqa: BLE001 - TFDS raises several kinds
        raise CommandError(f"Could not load TFDS {data['name']!r} split {split!r}: "
                           f"{first_line(error)}") from None
    if num_examples is not None:
        dataset = dataset.take(num_examples)

    def pick(example):
        image = tf.cast(example[data["image_feature"]], tf.float32)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(image, (height - side) // 2,
                                              (width - side) // 2, side, side)
        image = tf.image.resize(image, (size, size), method="area") / 127.5 - 1.0
        caption = example
        for part in data["caption_feature"].split("/"):
            caption = caption[part]
        if caption.shape.rank:  # several captions per image: the first
            caption = caption[0]
        return image, caption

    images, captions = [], []
    for image_batch, caption_batch in tfds.as_numpy(
            dataset.map(pick, num_parallel_calls=tf.data.AUTOTUNE).batch(256)):
        images.append(image_batch.astype("float32"))
        captions.extend(c.decode("utf-8") for c in caption_batch)
    if not captions:
        raise CommandError(f"TFDS {data['name']!r} split {split!r} is empty.")
    return np.concatenate(images), captions


# ---------------------------------------------------------------------- data
def training_stream(config, batch_size, seed, captions=None):
    """Endless training batches: `(images, labels)`, images for unconditional configs, or
    `{"images", "text_embeddings", "text_mask"}` for captions (`captions`: a CaptionData)."""
    from keras_mm import datasets

    data = config["data"]
    if data["source"] == "captions":
        return captions.stream(batch_size, seed)
    conditional = data["num_classes"] is not None
    if data["source"] == "digits":
        images, labels = datasets.load_digits()
        return datasets.infinite_batches(images, labels if conditional else None,
                                         batch_size=batch_size, seed=seed)
    try:
        dataset = datasets.tfds_image_dataset(
            data["name"], split=data["split"], image_size=data["image_shape"][0],
            batch_size=batch_size, random_flip=data["random_flip"], seed=seed,
            data_dir=data["data_dir"], shuffle_buffer=data["shuffle_buffer"],
        )
    except datasets.DatasetNotAvailableError as error:
        raise CommandError(f"{error} (config keys data.name, data.split, data.data_dir)") from None
    return dataset if conditional else dataset.map(lambda images, labels: images)


def reference_images(config, captions=None):
    """The real images that FID compares with: an array, or numpy batches from TFDS."""
    from keras_mm import datasets

    data, evaluation = config["data"], config["eval"]
    if data["source"] == "captions":
        return captions.reference()[0][: evaluation["num_reference"]]
    if data["source"] == "digits":
        images = datasets.load_digits(return_labels=False)
        return images[: evaluation["num_reference"]]
    import tensorflow_datasets as tfds

    try:
        return tfds.as_numpy(datasets.tfds_image_dataset(
            data["name"], split=evaluation["reference_split"],
            image_size=data["image_shape"][0], batch_size=evaluation["batch_size"],
            shuffle=False, repeat=False, num_examples=evaluation["num_reference"],
            drop_remainder=False, data_dir=data["data_dir"],
        ))
    except datasets.DatasetNotAvailableError as error:
        raise CommandError(
            f"{error} (config keys data.name, eval.reference_split, data.data_dir)") from None


def feature_extractor(config, classifier_head=False):
    from keras_mm.metrics import InceptionFeatures, get_feature_extractor

    evaluation = config["eval"]
    if evaluation["feature_extractor"] == "color_layout":
        try:
            return get_feature_extractor("color_layout",
                                         image_shape=config["data"]["image_shape"])
        except ValueError as error:
            raise CommandError(f"eval.feature_extractor: {error}") from None
    if evaluation["feature_extractor"] != "inception_v3":
        try:
            return get_feature_extractor(evaluation["feature_extractor"])
        except ValueError as error:
            raise CommandError(f"eval.feature_extractor: {error}") from None
    weights = evaluation["inception_weights"]
    try:
        return InceptionFeatures(weights=weights, classifier_head=classifier_head,
                                 batch_size=min(64, evaluation["batch_size"]))
    except Exception as error:  # noqa: BLE001 - keras.utils.get_file raises bare Exception
        raise CommandError(
            f"Could not build Inception-v3 with weights={weights!r} ({error}). Keras downloads "
            "the ImageNet weights on first use; without internet, pass a local weights file "
            "with --set eval.inception_weights='\"/path/to/weights.h5\"'."
        ) from None


# ---------------------------------------------------------------------- models
def import_custom_modules(modules):
    """Import the modules that register a `.keras` model's custom layers."""
    for module in modules or ():
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise CommandError(f"--custom-module {module}: {error}") from error


def load_keras_model(path, custom_modules=(), allow_distiller=False, compile=False):
    """Load a `.keras` DiffusionModel (or, with `allow_distiller`, a MomentMatchingDistiller),
    importing the keras_mm modules its config names."""
    import keras

    from keras_mm.distillation import MomentMatchingDistiller
    from keras_mm.export import custom_object_modules
    from keras_mm.models.diffusion_model import DiffusionModel

    if not os.path.isfile(path):
        raise CommandError(f"No .keras file at '{path}'.")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise CommandError(f"'{path}' is not a .keras file: {error}") from error
    # keras_mm's own modules are imported automatically; others only when named.
    own_modules = [m for m in custom_object_modules(config) if m.startswith("keras_mm.")]
    import_custom_modules(own_modules + list(custom_modules))
    try:
        model = keras.saving.load_model(path, compile=compile)
    except (TypeError, ValueError) as error:
        raise CommandError(
            f"Could not load '{path}': {error}\nIf the network uses custom layers, pass the "
            "module that defines them with --custom-module."
        ) from error
    allowed = (DiffusionModel, MomentMatchingDistiller) if allow_distiller else DiffusionModel
    if not isinstance(model, allowed):
        raise CommandError(
            f"'{path}' holds a {type(model).__name__}, not a keras_mm.DiffusionModel. Save "
            "the teacher or the distiller's `.generator`."
        )
    return model


def build_teacher(config):
    """A fresh `DiffusionModel` around the config's UViT."""
    from keras_mm.models.diffusion_model import DiffusionModel
    from keras_mm.models.uvit import UViT

    model = config["model"]
    try:
        if model["uvit_preset"]:
            network = UViT.from_preset(model["uvit_preset"], **model["uvit"])
        else:
            network = UViT(**model["uvit"])
    except (TypeError, ValueError) as error:
        raise CommandError(f"Could not build the UViT from model.uvit_preset/model.uvit: "
                           f"{error}") from None
    check_model_fits_data(network, config)
    return DiffusionModel(
        network,
        prediction_type=model["prediction_type"],
        loss_weighting=model["loss_weighting"],
        condition_dropout=model["condition_dropout"],
        seed=config["teacher"]["seed"],
    )


def check_model_fits_data(model, config):
    data = config["data"]
    if tuple(model.image_shape) != tuple(data["image_shape"]):
        raise CommandError(
            f"The network's image_shape {tuple(model.image_shape)} differs from "
            f"data.image_shape {tuple(data['image_shape'])}; set model.uvit.image_shape "
            "or data.image_shape so that they agree."
        )
    if model.num_classes != data["num_classes"]:
        raise CommandError(
            f"The network has num_classes={model.num_classes} but data.num_classes is "
            f"{data['num_classes']}; set model.uvit.num_classes to match."
        )
    check_text_dim(model, config)


def default_num_steps(model, config):
    """Sampling steps of `model` when none are given: k for a distiller or its generator
    (`MomentMatchingDistiller` names its generator "generator"), else the teacher's."""
    if hasattr(model, "generator"):
        return model.num_steps
    if model.name == "generator":
        return config["distill"]["num_steps"]
    return config["eval"]["teacher_num_steps"]


# ---------------------------------------------------------------------- training runs
class StepNamedPath(str):
    """A `SampleGridCallback` path whose `{step}` is filled in from the epoch number.

    The callback formats its path with `epoch=`; here an epoch is `steps_per_epoch` steps,
    and grids named by training step read better.
    """

    def __new__(cls, template, steps_per_epoch):
        path = super().__new__(cls, template)
        path.steps_per_epoch = steps_per_epoch
        return path

    def format(self, epoch):
        return str.format(self, step=epoch * self.steps_per_epoch)


def training_plan(section, name):
    """`(steps_per_epoch, epochs)`: training runs in epochs of `checkpoint_every` steps."""
    steps = section["steps"]
    if not isinstance(steps, int) or steps < 1:
        raise CommandError(f"{name}.steps must be an integer >= 1; got {steps!r}.")
    every = min(section["checkpoint_every"], steps)
    if every < 1 or steps % every:
        raise CommandError(
            f"{name}.steps ({steps}) must be a multiple of {name}.checkpoint_every "
            f"({section['checkpoint_every']}): training runs in checkpoints of that many steps."
        )
    return every, steps // every


def in_checkpoints(value, steps_per_epoch, key):
    """`value` steps as a whole number of checkpoints (None for 0: disabled)."""
    if not value:
        return None
    if value % steps_per_epoch:
        raise CommandError(
            f"{key} ({value}) must be a multiple of the checkpoint interval "
            f"({steps_per_epoch} steps), or 0 to disable it."
        )
    return value // steps_per_epoch


def prepare_run_dir(run_dir, artifacts, config, overwrite):
    """Create `run_dir`, decide between resuming and starting, write config.json.

    Returns the step to resume from (0 for a fresh start).
    """
    backup = os.path.join(run_dir, "backup")
    config_path = os.path.join(run_dir, "config.json")
    if overwrite and os.path.isdir(run_dir):
        shutil.rmtree(backup, ignore_errors=True)
        for name in artifacts:
            path = os.path.join(run_dir, name)
            if os.path.exists(path):
                os.remove(path)
    metadata_path = os.path.join(backup, "training_metadata.json")
    if os.path.exists(metadata_path):
        with open(config_path) as f:
            saved = json.load(f)
        if saved != config:
            changed = sorted(differences(saved, config))
            raise CommandError(
                f"{run_dir} holds an interrupted run with another config (changed: "
                f"{', '.join(changed)}). Resume with the same config, or pass --overwrite "
                "to start over."
            )
        with open(metadata_path) as f:
            return json.load(f)["epoch"]
    existing = [name for name in artifacts if os.path.exists(os.path.join(run_dir, name))]
    if existing:
        raise CommandError(
            f"{run_dir} already holds {', '.join(existing)} from a finished run. Pass "
            "--overwrite to replace them, or choose another --run-dir."
        )
    os.makedirs(run_dir, exist_ok=True)
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    return 0


def differences(a, b, prefix=""):
    keys = set(a) | set(b)
    for key in keys:
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            yield from differences(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            yield f"{prefix}{key}"


def run_callbacks(run_dir, name, model_callbacks, sample_every, steps_per_epoch, config,
                  resuming, num_steps=None, captions=None):
    """The run's callbacks, in order: the model's own (FID), sample grids, CSV and
    TensorBoard logs, then the checkpoint, so that it holds what they saw."""
    import keras

    from keras_mm.callbacks import SampleGridCallback

    callbacks = list(model_callbacks)
    every = in_checkpoints(sample_every, steps_per_epoch, f"{name}.sample_every")
    if every:
        image_size = config["data"]["image_shape"][0]
        path = StepNamedPath(os.path.join(run_dir, "samples", f"{name}_{{step:07d}}.png"),
                             steps_per_epoch)
        callbacks.append(SampleGridCallback(
            path, every_n_epochs=every, num_samples=config["grid"]["num_samples"],
            seed=config["eval"]["seed"], labels=config["data"]["num_classes"],
            condition=(captions.eval_condition(config["grid"]["num_samples"])
                       if captions is not None else None),
            num_steps=num_steps, num_columns=config["grid"]["num_columns"],
            scale=max(1, 64 // image_size),
        ))
    callbacks.append(keras.callbacks.CSVLogger(os.path.join(run_dir, "log.csv"),
                                               append=resuming))
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"),
                                                     write_graph=False))
    callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")))
    return callbacks


def tensorboard_available():
    """Keras's TensorBoard callback writes through tf.summary, which needs both packages."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("tensorflow", "tensorboard"))


def fit_in_checkpoints(model, data, epochs, steps_per_epoch, callbacks, verbose,
                       resumed_epoch):
    if resumed_epoch:
        print(f"Resuming from the checkpoint at step {resumed_epoch * steps_per_epoch}.")
    try:
        # The stream is shuffled already (and endless), so Keras has nothing to shuffle.
        return model.fit(data, epochs=epochs, steps_per_epoch=steps_per_epoch,
                         callbacks=callbacks, verbose=verbose, shuffle=False)
    except ValueError as error:
        raise CommandError(str(error)) from None


TRAINING_FLAGS = (("steps", "steps"), ("batch_size", "batch_size"),
                  ("learning_rate", "learning_rate"), ("checkpoint_every", "checkpoint_every"),
                  ("seed", "seed"))


def add_run_arguments(parser, section):
    parser.add_argument("--run-dir", metavar="DIR",
                        help="run directory: artifacts, config.json, log.csv, tensorboard/, "
                        "samples/ and the backup/ checkpoint (required).")
    parser.add_argument("--steps", type=int, help=f"training steps ({section}.steps).")
    parser.add_argument("--batch-size", type=int, help=f"batch size ({section}.batch_size).")
    parser.add_argument("--learning-rate", type=float,
                        help=f"peak learning rate ({section}.learning_rate).")
    parser.add_argument("--checkpoint-every", type=int, metavar="N",
                        help=f"steps between checkpoints and log rows "
                        f"({section}.checkpoint_every).")
    parser.add_argument("--seed", type=int, help=f"seed ({section}.seed).")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Keras fit verbosity: 1 progress bars (default), 2 one line per "
                        "checkpoint, 0 silent.")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a run directory that holds a finished or "
                        "interrupted run (its artifacts and checkpoint are deleted).")


def require(value, flag):
    if not value:
        raise CommandError(f"{flag} is required.")


def caption_data(config, model, cache_dir, encoder=None):
    """A CaptionData for a captions config (its encoder checked against `model`), else
    None."""
    if not is_text(config):
        return None
    encoder = encoder or load_text_encoder(config)
    check_text_dim(model, config, encoder)
    return CaptionData(config, encoder, cache_dir)


# ---------------------------------------------------------------------- train-teacher
def add_train_teacher_command(subparsers):
    parser = subparsers.add_parser(
        "train-teacher",
        help="Train a diffusion teacher (writes RUN_DIR/teacher.keras).",
        description=wrap("Train a class-conditional (or, with data.source \"captions\", "
        "text-conditional) UViT diffusion model on the config's data and save it, with its "
        "Adam state (the instant method's preconditioner), as "
        "RUN_DIR/teacher.keras. Training runs in checkpoints of teacher.checkpoint_every "
        "steps; re-running an interrupted command resumes from the last one "
        "(keras.callbacks.BackupAndRestore in RUN_DIR/backup). Logs go to RUN_DIR/log.csv "
        "and RUN_DIR/tensorboard, sample grids to RUN_DIR/samples."),
        epilog=config_epilog(("description", "data", "model", "teacher", "eval", "grid")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    add_run_arguments(parser, "teacher")
    parser.set_defaults(run=run_train_teacher)


def run_train_teacher(args):
    config = resolve_config(args, "teacher", TRAINING_FLAGS)
    if args.print_config:
        return print_config(config)
    require(args.run_dir, "--run-dir")
    check_runnable(config, "train-teacher")
    import keras

    from keras_mm.distillation.distiller import WarmupLinearDecay

    training = config["teacher"]
    steps_per_epoch, epochs = training_plan(training, "teacher")
    resumed_epoch = prepare_run_dir(args.run_dir, ["teacher.keras"], config, args.overwrite)
    # The text encoder first: a missing one is reported before a large UViT is built.
    encoder = load_text_encoder(config) if is_text(config) else None
    keras.utils.set_random_seed(training["seed"])
    teacher = build_teacher(config)
    captions = caption_data(config, teacher, args.run_dir, encoder)
    try:
        schedule = WarmupLinearDecay(training["learning_rate"], training["warmup_steps"])
    except ValueError as error:
        raise CommandError(f"teacher: {error}") from None
    teacher.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule, global_clipnorm=1.0))
    print(f"Teacher: {teacher.network.count_params():,} parameters, backend "
          f"{keras.backend.backend()}, {training['steps']} steps at batch "
          f"{training['batch_size']}.")
    callbacks = run_callbacks(
        args.run_dir, "teacher", [], training["sample_every"], steps_per_epoch, config,
        resuming=bool(resumed_epoch), num_steps=config["eval"]["teacher_num_steps"],
        captions=captions,
    )
    data = training_stream(config, training["batch_size"], training["seed"], captions)
    fit_in_checkpoints(teacher, data, epochs, steps_per_epoch, callbacks, args.verbose,
                       resumed_epoch)
    path = os.path.join(args.run_dir, "teacher.keras")
    teacher.save(path)
    print(f"Wrote {path}")
    return 0


# ---------------------------------------------------------------------- distill
DISTILL_FLAGS = TRAINING_FLAGS + (("num_steps", "num_steps"), ("method", "method"))


def add_distill_command(subparsers):
    parser = subparsers.add_parser(
        "distill",
        help="Distill a teacher into a few-step generator by moment matching.",
        description=wrap("Distill TEACHER (a .keras DiffusionModel, e.g. from train-teacher) into "
        "a distill.num_steps-step generator with MomentMatchingDistiller (Algorithm 2 or 3) "
        "and the paper's Adam (Appendix B). Every distill.fid_every steps the FID of the "
        "generator's samples is computed with fixed seeds and labels, and the best "
        "weights are kept in RUN_DIR/best_fid.weights.h5 (RUN_DIR/best_fid.json says when). "
        "Writes RUN_DIR/distiller.keras (the final state: teacher, generator, auxiliary, "
        "optimizers) and RUN_DIR/generator.keras (the generator DiffusionModel at the best "
        "FID, or the final one without FID). Checkpoints, resume, logs and grids as for "
        "train-teacher."),
        epilog=config_epilog(("distill", "eval", "grid")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--teacher", metavar="PATH",
                        help="the teacher's .keras file (required).")
    add_run_arguments(parser, "distill")
    parser.add_argument("--num-steps", type=int,
                        help="k, the student's sampling steps (distill.num_steps).")
    parser.add_argument("--method", choices=("alternating", "instant"),
                        help="Algorithm 2 or 3 (distill.method).")
    parser.set_defaults(run=run_distill)


DISTILL_ARTIFACTS = ["distiller.keras", "generator.keras", "best_fid.weights.h5",
                     "best_fid.json"]


def run_distill(args):
    config = resolve_config(args, "distill", DISTILL_FLAGS)
    if args.print_config:
        return print_config(config)
    require(args.teacher, "--teacher")
    require(args.run_dir, "--run-dir")
    check_runnable(config, "distill")
    import keras

    from keras_mm.distillation import (
        AdamWithoutMomentum,
        MomentMatchingDistiller,
        WarmupLinearDecay,
        estimate_preconditioner,
    )

    distill = config["distill"]
    steps_per_epoch, epochs = training_plan(distill, "distill")
    fid_every = in_checkpoints(distill["fid_every"], steps_per_epoch, "distill.fid_every")
    # The instant method reads its preconditioner from the teacher's saved Adam state.
    needs_adam = distill["method"] == "instant" and not distill["preconditioner_steps"]
    encoder = load_text_encoder(config) if is_text(config) else None
    teacher = load_keras_model(args.teacher, compile=needs_adam)
    check_model_fits_data(teacher, config)
    captions = caption_data(config, teacher, args.run_dir, encoder)
    resumed_epoch = prepare_run_dir(args.run_dir, DISTILL_ARTIFACTS, config, args.overwrite)
    keras.utils.set_random_seed(distill["seed"])
    data = training_stream(config, distill["batch_size"], distill["seed"], captions)

    preconditioner = None
    if distill["method"] == "instant" and distill["preconditioner_steps"]:
        print(f"Estimating the preconditioner from {distill['preconditioner_steps']} batches.")
        preconditioner = estimate_preconditioner(
            teacher, training_stream(config, distill["batch_size"], distill["seed"], captions),
            steps=distill["preconditioner_steps"])
    try:
        distiller = MomentMatchingDistiller(
            teacher,
            num_steps=distill["num_steps"],
            method=distill["method"],
            time_sampler=distill["time_sampler"],
            weighting=distill["weighting"],
            conditional_sampling=distill["conditional_sampling"],
            teacher_guidance_scale=distill["teacher_guidance_scale"],
            clip_teacher=distill["clip_teacher"],
            preconditioner=preconditioner,
            teacher_gradient_ema=distill["teacher_gradient_ema"],
            seed=distill["seed"],
        )
        learning_rate = distill["learning_rate"]
        if learning_rate is None:  # MomentMatchingDistiller.compile's defaults
            learning_rate = 1e-4 if distill["method"] == "alternating" else 1e-3
        total_steps = distill["steps"] if distill["decay_to_zero"] else None
        # beta_1 = 0 (the paper's): Adam without its unused first-moment slot.
        adam = (AdamWithoutMomentum if distill["adam"].get("beta_1", 0.9) == 0.0
                else keras.optimizers.Adam)
        optimizers = [
            adam(
                learning_rate=WarmupLinearDecay(learning_rate, distill["warmup_steps"],
                                                total_steps),
                **distill["adam"],
            )
            for _ in range(2)
        ]
    except (TypeError, ValueError) as error:
        raise CommandError(f"distill: {error}") from None
    distiller.compile(generator_optimizer=optimizers[0], auxiliary_optimizer=optimizers[1])
    print(f"Distilling a {distill['num_steps']}-step generator ({distill['method']}), backend "
          f"{keras.backend.backend()}, {distill['steps']} steps at batch "
          f"{distill['batch_size']}, peak learning rate {learning_rate:g}.")

    fid_callbacks = []
    best_path = os.path.join(args.run_dir, "best_fid.weights.h5")
    if fid_every:
        fid_callbacks = fid_tracking_callbacks(config, args.run_dir, best_path, fid_every,
                                               steps_per_epoch, bool(resumed_epoch),
                                               args.verbose, captions)
    callbacks = run_callbacks(args.run_dir, "distill", fid_callbacks, distill["sample_every"],
                              steps_per_epoch, config, resuming=bool(resumed_epoch),
                              captions=captions)
    fit_in_checkpoints(distiller, data, epochs, steps_per_epoch, callbacks, args.verbose,
                       resumed_epoch)

    path = os.path.join(args.run_dir, "distiller.keras")
    distiller.save(path)
    print(f"Wrote {path}")
    which = "final"
    if os.path.exists(best_path):
        distiller.load_weights(best_path)
        with open(os.path.join(args.run_dir, "best_fid.json")) as f:
            best = json.load(f)
        which = f"best FID {best['fid']:.4f}, step {best['step']}"
    path = os.path.join(args.run_dir, "generator.keras")
    distiller.generator.save(path)
    print(f"Wrote {path} ({which})")
    return 0


def fid_tracking_callbacks(config, run_dir, best_path, every_n_epochs, steps_per_epoch,
                           resuming, verbose, captions=None):
    """FIDCallback, then a callback that records its best value in best_fid.json (read back
    on resume, so that a resumed run only replaces the best weights with better ones)."""
    import keras

    from keras_mm.callbacks import FIDCallback
    from keras_mm.metrics import FeatureStatistics

    evaluation = config["eval"]
    extractor = feature_extractor(config)
    # The reference statistics are computed once per run directory (50k Inception passes).
    stats_path = os.path.join(run_dir, f"reference_{extractor.name}.npz")
    if not os.path.exists(stats_path):
        print(f"Computing the FID reference statistics ({extractor.name}).")
        FeatureStatistics.from_images(reference_images(config, captions),
                                      extractor).save(stats_path)
    fid = FIDCallback(
        reference_stats=stats_path,
        num_samples=evaluation["num_samples"],
        every_n_epochs=every_n_epochs,
        seed=evaluation["seed"],
        labels=config["data"]["num_classes"],
        condition=(captions.eval_condition(evaluation["num_samples"])
                   if captions is not None else None),
        feature_extractor=extractor,
        save_best_to=best_path,
        batch_size=evaluation["batch_size"],
        guidance_scale=evaluation["guidance_scale"],
        verbose=int(verbose > 0),
    )
    record_path = os.path.join(run_dir, "best_fid.json")
    if resuming and os.path.exists(record_path):
        with open(record_path) as f:
            fid.best_fid = json.load(f)["fid"]

    def record(epoch, logs):
        if fid.best_epoch == epoch + 1:
            with open(record_path, "w") as f:
                json.dump({"fid": fid.best_fid, "step": fid.best_epoch * steps_per_epoch,
                           "feature_extractor": extractor.name,
                           "num_samples": evaluation["num_samples"]}, f, indent=2)
        # CSVLogger fixes its columns at the first row: give `fid` one before the first FID.
        if logs is not None:
            logs.setdefault("fid", math.nan)

    return [fid, keras.callbacks.LambdaCallback(on_epoch_end=record)]


# ---------------------------------------------------------------------- evaluate
def add_evaluate_command(subparsers):
    parser = subparsers.add_parser(
        "evaluate",
        help="FD/FID, precision, recall and class accuracy of a model's samples.",
        description=wrap("Sample eval.num_samples images from MODEL (a teacher, a generator or a "
        "distiller .keras file) with fixed seeds and balanced labels (captions configs: the "
        "captions of the evaluation's reference images), and compare them with "
        "eval.num_reference real images in the feature space of eval.feature_extractor: "
        "Fréchet distance (FID with Inception-v3), improved precision and recall, and class "
        "accuracy. Prints a markdown table, one row per --num-steps, and writes it as "
        "JSON."),
        epilog=config_epilog(("data", "eval")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, default=None, model_fallback="digits")
    parser.add_argument("--model", required=True, help=".keras file to evaluate.")
    parser.add_argument("--num-steps", type=parse_int_list,
                        help="comma-separated sampling steps, one table row each, e.g. "
                        "8,64,256 (default: k for a distiller or generator, "
                        "eval.teacher_num_steps for a teacher).")
    parser.add_argument("--num-samples", type=int,
                        help="samples per row (eval.num_samples).")
    parser.add_argument("--out", help="JSON file to write (default: MODEL with "
                        "_evaluation.json in place of .keras).")
    parser.add_argument("--custom-module", action="append", default=[],
                        help="module defining the network's custom layers (repeatable).")
    parser.set_defaults(run=run_evaluate)


def parse_int_list(text):
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 1 like 8,64; got {text!r}.")
    return values


def run_evaluate(args):
    config = resolve_model_config(args, "digits", (("num_samples", "num_samples"),), "eval")
    if args.print_config:
        return print_config(config)
    check_runnable(config, "evaluate")
    import keras

    from keras_mm.callbacks import FIDCallback

    model = load_keras_model(args.model, args.custom_module, allow_distiller=True)
    check_model_fits_data(getattr(model, "generator", model), config)
    # Caption embeddings are cached beside the model (its run directory).
    captions = caption_data(config, getattr(model, "generator", model),
                            os.path.dirname(os.path.abspath(args.model)))
    evaluation = config["eval"]
    num_steps = args.num_steps or [default_num_steps(model, config)]
    conditional = config["data"]["num_classes"] is not None
    extras = ["precision_recall"] if evaluation["precision_recall"] else []
    wants_accuracy = evaluation["class_accuracy"] and conditional
    extractor = feature_extractor(config, classifier_head=wants_accuracy)
    if wants_accuracy and extractor.has_classifier:
        extras.append("class_accuracy")
    try:
        fid = FIDCallback(
            reference_data=reference_images(config, captions),
            num_samples=evaluation["num_samples"],
            seed=evaluation["seed"],
            labels=config["data"]["num_classes"],
            condition=(captions.eval_condition(evaluation["num_samples"])
                       if captions is not None else None),
            feature_extractor=extractor,
            batch_size=evaluation["batch_size"],
            guidance_scale=evaluation["guidance_scale"],
            extra_metrics=extras,
            verbose=0,
        )
    except ValueError as error:
        raise CommandError(str(error)) from None
    rows = []
    for steps in num_steps:
        fid.num_steps = steps
        start = time.time()
        results = fid.evaluate(model)
        rows.append({"num_steps": steps, **results, "seconds": time.time() - start})
    report = {
        "model": args.model,
        "backend": keras.backend.backend(),
        "feature_extractor": extractor.name,
        "num_samples": evaluation["num_samples"],
        "guidance_scale": evaluation["guidance_scale"],
        "rows": rows,
    }
    print(evaluation_table(report))
    out = args.out or re.sub(r"\.keras$", "", args.model) + "_evaluation.json"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"Wrote {out}")
    return 0


def evaluation_table(report):
    distance = "FID" if report["feature_extractor"] == "inception_v3" else "FD"
    columns = [("fid", f"{distance} ({report['feature_extractor']})"),
               ("precision", "precision"), ("recall", "recall"),
               ("class_accuracy", "class accuracy")]
    columns = [(key, title) for key, title in columns if key in report["rows"][0]]
    lines = [
        f"{report['model']}: {report['num_samples']} samples, backend {report['backend']}",
        "",
        "| steps | " + " | ".join(title for _, title in columns) + " | seconds |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for row in report["rows"]:
        values = " | ".join(f"{row[key]:.4f}" for key, _ in columns)
        lines.append(f"| {row['num_steps']} | {values} | {row['seconds']:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- sample
def add_sample_command(subparsers):
    parser = subparsers.add_parser(
        "sample",
        help="Sample images from a SavedModel or a .keras model into a PNG grid.",
        description="Sample from an exported SavedModel (see `keras-mm export`) or a .keras "
        "DiffusionModel (or distiller) and write the images as a PNG grid. The same seed "
        "and steps give the same images from both. Text-to-image models take --captions "
        "(or --captions-file): a SavedModel exported by `keras-mm export` tokenizes them "
        "with the vocabulary stored beside it and needs no config; a .keras model encodes "
        "them with the config's data.text_encoder (the run's config.json by default).",
    )
    parser.add_argument("--model", required=True,
                        help="SavedModel directory or .keras file.")
    parser.add_argument("--labels", type=parse_labels,
                        help="comma-separated class labels, e.g. 1,2,3 (class-conditional).")
    parser.add_argument("--num-samples", type=int,
                        help="number of images (unconditional models).")
    parser.add_argument("--captions", nargs="+", metavar="CAPTION",
                        help='captions, one image each (text-to-image models), e.g. '
                        '--captions "a red square on the left" "a blue circle, right".')
    parser.add_argument("--captions-file", metavar="FILE",
                        help="text file of captions, one per line (added after --captions).")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0).")
    parser.add_argument("--out", required=True, help="PNG file to write.")
    parser.add_argument("--num-steps", type=int,
                        help="sampling steps for a .keras model (a SavedModel has its own); "
                        "default with --config: k for a generator or distiller, "
                        "eval.teacher_num_steps for a teacher.")
    parser.add_argument("--sampler", default="ancestral", choices=("ancestral", "ddim"),
                        help=".keras models: the sampler (default ancestral).")
    parser.add_argument("--guidance-scale", type=float, default=0.0,
                        help=".keras models: classifier-free guidance weight (default 0).")
    parser.add_argument("--clip", action="store_true",
                        help=".keras models: clip x-hat to [-1, 1] at every step.")
    parser.add_argument("--ncols", type=int, help="images per grid row.")
    parser.add_argument("--scale", type=int,
                        help="pixel upscaling of the grid (default: tiles of >= 64 pixels).")
    parser.add_argument("--custom-module", action="append", default=[],
                        help=".keras models: module defining custom layers (repeatable).")
    add_config_arguments(parser, default=None)
    parser.set_defaults(run=run_sample)


def parse_labels(text):
    try:
        return [int(label) for label in text.split(",") if label.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"labels must be comma-separated integers like 1,2,3; got {text!r}."
        ) from None


def run_sample(args):
    config = resolve_model_config(args, fallback=None)
    if args.print_config:
        return print_config(config)
    from keras_mm.images import save_image_grid

    args.captions = read_captions(args)
    given = [flag for flag, value in (("--labels", args.labels),
                                      ("--num-samples", args.num_samples),
                                      ("--captions", args.captions)) if value is not None]
    if len(given) > 1:
        raise CommandError(f"Pass one of --labels, --num-samples and --captions; got "
                           f"{' and '.join(given)}.")
    if os.path.isdir(args.model):
        images = sample_saved_model(args, config)
    elif args.model.endswith(".keras"):
        images = sample_keras_model(args, config)
    else:
        raise CommandError(
            f"--model must be a SavedModel directory or a .keras file; got '{args.model}'."
        )
    scale = args.scale or max(1, 64 // images.shape[1])
    save_image_grid(images, args.out, ncols=args.ncols, scale=scale)
    print(f"Wrote {len(images)} images to {args.out}")
    return 0


def read_captions(args):
    """--captions and the lines of --captions-file, or None."""
    captions = list(args.captions or [])
    if args.captions_file:
        try:
            with open(args.captions_file, encoding="utf-8") as f:
                captions += [line.strip() for line in f if line.strip()]
        except OSError as error:
            raise CommandError(f"--captions-file: {error}") from None
        if not captions:
            raise CommandError(f"--captions-file {args.captions_file} holds no captions.")
    return captions or None


def saved_model_tokens(args, sequence_length, config):
    """Token ids and padding masks of --captions for an exported text sampler."""
    import numpy as np

    vocabulary = os.path.join(args.model, TOKENIZER_FILE)
    if os.path.isfile(vocabulary):
        import keras_hub

        tokenizer = keras_hub.models.T5Tokenizer(proto=vocabulary)
        preprocessor = keras_hub.models.T5Preprocessor(tokenizer,
                                                       sequence_length=sequence_length)
        packed = preprocessor(args.captions)
        return {"token_ids": np.asarray(packed["token_ids"]).astype("int32"),
                "padding_mask": np.asarray(packed["padding_mask"]).astype(bool)}
    if config is None:
        raise CommandError(
            f"'{args.model}' has no tokenizer vocabulary ({TOKENIZER_FILE}; `keras-mm export` "
            "writes it): pass --config with the data.text_encoder the model was trained with.")
    return load_text_encoder(config).tokenize(args.captions)


def sample_saved_model(args, config=None):
    import numpy as np
    import tensorflow as tf

    try:
        sampler = tf.saved_model.load(args.model)
    except (OSError, ValueError) as error:
        raise CommandError(f"Could not load the SavedModel '{args.model}': {error}") from error
    if not hasattr(sampler, "sample") or not hasattr(sampler, "metadata"):
        raise CommandError(
            f"'{args.model}' is not a keras_mm sampler (no sample/metadata endpoints); write "
            "one with keras_mm.export_sampler or `keras-mm export`."
        )
    metadata = {key: value.numpy() for key, value in sampler.metadata().items()}
    if args.num_steps is not None and args.num_steps != int(metadata["num_steps"]):
        raise CommandError(
            f"This SavedModel samples in {int(metadata['num_steps'])} steps; got "
            f"--num-steps {args.num_steps}. Re-export it with the steps you want, or drop "
            "--num-steps."
        )
    seed = tf.constant([args.seed, 0], tf.int32)
    text = int(metadata.get("text_dim", -1)) >= 0
    if text and args.captions is None:
        raise CommandError("This model is text-to-image: pass --captions (or "
                           "--captions-file).")
    if not text and args.captions is not None:
        raise CommandError("This model does not take captions: pass --labels or "
                           "--num-samples.")
    try:
        if text and hasattr(sampler, "sample_from_tokens"):
            tokens = saved_model_tokens(args, int(metadata["sequence_length"]), config)
            images = sampler.sample_from_tokens(
                token_ids=tf.constant(tokens["token_ids"]),
                padding_mask=tf.constant(tokens["padding_mask"]), seed=seed)
        elif text:
            if config is None:
                raise CommandError(
                    "This SavedModel was exported without its text encoder: pass --config "
                    "with the data.text_encoder the model was trained with.")
            condition = load_text_encoder(config).encode(args.captions)
            images = sampler.sample(text_embeddings=tf.constant(condition["text_embeddings"]),
                                    text_mask=tf.constant(condition["text_mask"]), seed=seed)
        elif metadata["num_classes"] >= 0:
            if args.labels is None:
                raise CommandError(
                    f"This model is class-conditional ({metadata['num_classes']} classes): "
                    "pass --labels, e.g. --labels 0,1,2."
                )
            images = sampler.sample(labels=tf.constant(args.labels, tf.int32), seed=seed)
        else:
            if args.labels is not None:
                raise CommandError("This model is unconditional: pass --num-samples, not "
                                   "--labels.")
            if args.num_samples is None:
                raise CommandError("This model is unconditional: pass --num-samples N.")
            images = sampler.sample(batch_size=tf.constant(args.num_samples, tf.int32),
                                    seed=seed)
    except tf.errors.InvalidArgumentError as error:
        # The graph's own input checks: show their message, not the graph trace.
        found = re.search(r"assertion failed: \[([^\]]*)\]", error.message)
        raise CommandError(found.group(1) if found else error.message) from None
    return np.asarray(images)


def keras_model_and_steps(args, config):
    """The DiffusionModel to sample or export (a distiller's generator) and its steps."""
    if args.num_steps is None and config is None:
        raise CommandError(
            "A .keras model needs --num-steps: k for a distilled generator (e.g. 8), 64 to "
            "256 for a teacher (or pass --config to take it from a config)."
        )
    model = load_keras_model(args.model, args.custom_module, allow_distiller=True)
    num_steps = args.num_steps
    if num_steps is None:
        num_steps = default_num_steps(model, config)
    return getattr(model, "generator", model), num_steps


def sample_keras_model(args, config):
    import keras
    import numpy as np

    from keras_mm import export

    model, num_steps = keras_model_and_steps(args, config)
    condition = None
    if model.text_dim is not None:
        if args.captions is None:
            raise CommandError("This model is text-to-image: pass --captions (or "
                               "--captions-file).")
        if not is_text(config):
            raise CommandError(
                "A text-to-image .keras model needs the config of its text encoder: pass "
                "--config (a captions config, e.g. the run's config.json).")
        encoder = load_text_encoder(config)
        check_text_dim(model, config, encoder)
        condition = encoder.encode(args.captions)
    elif args.captions is not None:
        raise CommandError("This model does not take captions: pass --labels or "
                           "--num-samples.")
    if args.captions is not None:
        batch_size = len(args.captions)
    elif args.labels is not None:
        batch_size = len(args.labels)
    else:
        batch_size = args.num_samples
    if batch_size is None or batch_size < 1:
        raise CommandError("Pass --labels (class-conditional) or --num-samples N >= 1.")
    try:
        # The SavedModel's noise, so that both kinds of model give the same images.
        noise = export.sampler_noise(
            args.seed, batch_size, model.image_shape, num_steps, args.sampler
        )
        seed = None
    except ImportError:
        noise, seed = None, args.seed
    try:
        images = model.sample(
            num_samples=batch_size,
            labels=args.labels,
            condition=condition,
            num_steps=num_steps,
            sampler=args.sampler,
            guidance_scale=args.guidance_scale,
            clip=args.clip,
            seed=seed,
            noise=noise,
        )
    except ValueError as error:
        raise CommandError(str(error)) from None
    return np.asarray(keras.ops.convert_to_numpy(images))


# ---------------------------------------------------------------------- export
def add_export_command(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="Export a .keras DiffusionModel's sampler as a TensorFlow SavedModel.",
        description="Export a .keras DiffusionModel (a teacher or a distilled generator, or "
        "a distiller's generator) as a TensorFlow SavedModel with sample, sample_from_noise, "
        "denoise and metadata endpoints (see keras_mm.export_sampler). Runs on the JAX or "
        "TensorFlow backend; from torch it re-runs itself under TensorFlow. A text-to-image "
        "model is exported with its frozen T5 encoder (data.text_encoder of the config: "
        "sample_from_tokens and encode_text endpoints) and the tokenizer's SentencePiece "
        f"vocabulary in OUT/{TOKENIZER_FILE}, so that `keras-mm sample --captions` works "
        "on it without a config.",
    )
    parser.add_argument("--model", required=True, help=".keras file.")
    parser.add_argument("--out", required=True, help="SavedModel directory to write.")
    parser.add_argument("--num-steps", type=int,
                        help="sampling steps k (required without --config; with it, k for a "
                        "generator or distiller, eval.teacher_num_steps for a teacher).")
    parser.add_argument("--sampler", default="ancestral", choices=("ancestral", "ddim"),
                        help="the sampler (default ancestral, Algorithm 1).")
    parser.add_argument("--guidance-scale", type=float, default=0.0,
                        help="classifier-free guidance weight (default 0).")
    parser.add_argument("--output", default="uint8", choices=("uint8", "float"),
                        help="uint8 images in [0, 255] or float x-hat in [-1, 1].")
    parser.add_argument("--clip", action="store_true", help="clip x-hat at every step.")
    parser.add_argument("--custom-module", action="append", default=[],
                        help="module defining the network's custom layers (repeatable).")
    parser.add_argument("--quiet", action="store_true", help="print nothing.")
    add_config_arguments(parser, default=None)
    parser.set_defaults(run=run_export)


def run_export(args):
    config = resolve_model_config(args, fallback=None)
    if args.print_config:
        return print_config(config)
    from keras_mm.export import export_sampler

    model, num_steps = keras_model_and_steps(args, config)
    encoder = None
    if model.text_dim is not None:
        if not is_text(config):
            raise CommandError(
                "A text-to-image model is exported with its text encoder: pass --config (a "
                "captions config naming data.text_encoder, e.g. the run's config.json).")
        encoder = load_text_encoder(config)
        check_text_dim(model, config, encoder)
    try:
        export_sampler(
            model,
            args.out,
            num_steps=num_steps,
            sampler=args.sampler,
            guidance_scale=args.guidance_scale,
            output=args.output,
            clip=args.clip,
            verbose=not args.quiet,
            text_encoder=encoder,
        )
    except (ValueError, NotImplementedError) as error:
        raise CommandError(str(error)) from None
    if encoder is not None:
        vocabulary = os.path.join(args.out, TOKENIZER_FILE)
        os.makedirs(os.path.dirname(vocabulary), exist_ok=True)
        proto = encoder.preprocessor.tokenizer.proto
        if isinstance(proto, str):  # a path to the preset's vocabulary.spm
            with open(proto, "rb") as f:
                proto = f.read()
        with open(vocabulary, "wb") as f:
            f.write(proto)
    return 0


COMMANDS = [add_train_teacher_command, add_distill_command, add_evaluate_command,
            add_sample_command, add_export_command]

if __name__ == "__main__":
    sys.exit(main())
