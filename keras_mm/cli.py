"""The `keras-mm` command line.

Each subcommand is a pair of functions: `add_<name>_command(subparsers)` declares its
arguments and sets `run=<function>`, which takes the parsed arguments and returns an exit
code. To add one, write the pair and list the `add_` function in `COMMANDS`.

    keras-mm sample --model sampler/ --labels 1,2,3 --seed 0 --out grid.png
    keras-mm sample --model teacher.keras --labels 1,2,3 --num-steps 64 --out grid.png
    keras-mm export --model generator.keras --num-steps 8 --out sampler/
"""

import argparse
import importlib
import json
import os
import re
import sys
import zipfile


class CommandError(Exception):
    """A user error: printed as `keras-mm <command>: error: <message>`, exit code 2."""


def main(argv=None):
    """Entry point of `keras-mm`; returns the exit code."""
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
        description="Multistep distillation of diffusion models via moment matching.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def import_custom_modules(modules):
    """Import the modules that register a `.keras` model's custom layers."""
    for module in modules or ():
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise CommandError(f"--custom-module {module}: {error}") from error


def load_keras_model(path, custom_modules=()):
    """Load a `.keras` DiffusionModel, importing the keras_mm modules its config names."""
    import keras

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
        model = keras.saving.load_model(path, compile=False)
    except (TypeError, ValueError) as error:
        raise CommandError(
            f"Could not load '{path}': {error}\nIf the network uses custom layers, pass the "
            "module that defines them with --custom-module."
        ) from error
    if not isinstance(model, DiffusionModel):
        raise CommandError(
            f"'{path}' holds a {type(model).__name__}, not a keras_mm.DiffusionModel. Save "
            "the teacher or the distiller's `.generator`."
        )
    return model


# ---------------------------------------------------------------------- sample
def add_sample_command(subparsers):
    parser = subparsers.add_parser(
        "sample",
        help="Sample images from a SavedModel or a .keras model into a PNG grid.",
        description="Sample from an exported SavedModel (see `keras-mm export`) or a .keras "
        "DiffusionModel and write the images as a PNG grid. The same seed and steps give "
        "the same images from both.",
    )
    parser.add_argument("--model", required=True,
                        help="SavedModel directory or .keras file.")
    parser.add_argument("--labels", type=parse_labels,
                        help="comma-separated class labels, e.g. 1,2,3 (class-conditional).")
    parser.add_argument("--num-samples", type=int,
                        help="number of images (unconditional models).")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0).")
    parser.add_argument("--out", required=True, help="PNG file to write.")
    parser.add_argument("--num-steps", type=int,
                        help="sampling steps for a .keras model (a SavedModel has its own).")
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
    parser.set_defaults(run=run_sample)


def parse_labels(text):
    try:
        return [int(label) for label in text.split(",") if label.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"labels must be comma-separated integers like 1,2,3; got {text!r}."
        ) from None


def run_sample(args):
    from keras_mm.images import save_image_grid

    if args.labels is not None and args.num_samples is not None:
        raise CommandError("Pass either --labels or --num-samples, not both.")
    if os.path.isdir(args.model):
        images = sample_saved_model(args)
    elif args.model.endswith(".keras"):
        images = sample_keras_model(args)
    else:
        raise CommandError(
            f"--model must be a SavedModel directory or a .keras file; got '{args.model}'."
        )
    scale = args.scale or max(1, 64 // images.shape[1])
    save_image_grid(images, args.out, ncols=args.ncols, scale=scale)
    print(f"Wrote {len(images)} images to {args.out}")
    return 0


def sample_saved_model(args):
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
    try:
        if metadata["num_classes"] >= 0:
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


def sample_keras_model(args):
    import keras
    import numpy as np

    from keras_mm import export

    if args.num_steps is None:
        raise CommandError(
            "A .keras model needs --num-steps: k for a distilled generator (e.g. 8), 64 to "
            "256 for a teacher."
        )
    model = load_keras_model(args.model, args.custom_module)
    batch_size = len(args.labels) if args.labels is not None else args.num_samples
    if batch_size is None or batch_size < 1:
        raise CommandError("Pass --labels (class-conditional) or --num-samples N >= 1.")
    try:
        # The SavedModel's noise, so that both kinds of model give the same images.
        noise = export.sampler_noise(
            args.seed, batch_size, model.image_shape, args.num_steps, args.sampler
        )
        seed = None
    except ImportError:
        noise, seed = None, args.seed
    try:
        images = model.sample(
            num_samples=batch_size,
            labels=args.labels,
            num_steps=args.num_steps,
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
        description="Export a .keras DiffusionModel (a teacher or a distilled generator) as "
        "a TensorFlow SavedModel with sample, sample_from_noise, denoise and metadata "
        "endpoints (see keras_mm.export_sampler). Runs on the JAX or TensorFlow backend; "
        "from torch it re-runs itself under TensorFlow.",
    )
    parser.add_argument("--model", required=True, help=".keras file.")
    parser.add_argument("--out", required=True, help="SavedModel directory to write.")
    parser.add_argument("--num-steps", type=int, required=True, help="sampling steps k.")
    parser.add_argument("--sampler", default="ancestral", choices=("ancestral", "ddim"))
    parser.add_argument("--guidance-scale", type=float, default=0.0,
                        help="classifier-free guidance weight (default 0).")
    parser.add_argument("--output", default="uint8", choices=("uint8", "float"),
                        help="uint8 images in [0, 255] or float x-hat in [-1, 1].")
    parser.add_argument("--clip", action="store_true", help="clip x-hat at every step.")
    parser.add_argument("--custom-module", action="append", default=[],
                        help="module defining the network's custom layers (repeatable).")
    parser.add_argument("--quiet", action="store_true", help="print nothing.")
    parser.set_defaults(run=run_export)


def run_export(args):
    from keras_mm.export import export_sampler

    model = load_keras_model(args.model, args.custom_module)
    try:
        export_sampler(
            model,
            args.out,
            num_steps=args.num_steps,
            sampler=args.sampler,
            guidance_scale=args.guidance_scale,
            output=args.output,
            clip=args.clip,
            verbose=not args.quiet,
        )
    except (ValueError, NotImplementedError) as error:
        raise CommandError(str(error)) from None
    return 0


COMMANDS = [add_sample_command, add_export_command]

if __name__ == "__main__":
    sys.exit(main())
