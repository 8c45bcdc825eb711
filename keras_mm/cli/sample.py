"""`keras-mm sample`: images from an exported SavedModel or a .keras model, as a PNG grid."""

import argparse
import os

from keras_mm.cli.exported import sample_saved_model
from keras_mm.cli.options import (
    CommandError,
    add_config_arguments,
    add_model_arguments,
    check_output_file,
    keras_model_and_steps,
    positive_int,
    print_config,
    resolve_model_config,
)
from keras_mm.training import captions, sd3


def add_command(subparsers):
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
    parser.add_argument("--num-samples", type=positive_int,
                        help="number of images (unconditional models).")
    parser.add_argument("--captions", nargs="+", metavar="CAPTION",
                        help='captions, one image each (text-to-image models), e.g. '
                        '--captions "a red square on the left" "a blue circle, right".')
    parser.add_argument("--captions-file", metavar="FILE",
                        help="text file of captions, one per line (added after --captions).")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0).")
    parser.add_argument("--out", required=True, help="PNG file to write.")
    parser.add_argument("--num-steps", type=positive_int,
                        help="sampling steps for a .keras model (a SavedModel has its own); "
                        "default with --config: k for a generator or distiller, "
                        "eval.teacher_num_steps for a teacher.")
    parser.add_argument("--ncols", type=int, help="images per grid row.")
    parser.add_argument("--scale", type=int,
                        help="pixel upscaling of the grid (default: tiles of >= 64 pixels).")
    add_model_arguments(parser)
    add_config_arguments(parser, default=None)
    parser.set_defaults(run=run)


def parse_labels(text):
    try:
        return [int(label) for label in text.split(",") if label.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"labels must be comma-separated integers like 1,2,3; got {text!r}."
        ) from None


def run(args):
    config = resolve_model_config(args, fallback=None)
    if args.print_config:
        return print_config(config)
    from keras_mm.images import save_image_grid

    check_output_file(args.out, "--out")
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


def sample_keras_model(args, config):
    import keras
    import numpy as np

    from keras_mm import export

    model, num_steps = keras_model_and_steps(args, config)
    if sd3.is_sd3(config):
        if args.captions is None:
            raise CommandError("This model is Stable Diffusion 3: pass --captions (the prompts, "
                               "or --captions-file).")
        return sd3.sample_images(config, model, args.captions,
                                 os.path.dirname(os.path.abspath(args.model)),
                                 num_steps, guidance_scale=args.guidance_scale,
                                 sampler=args.sampler, seed=args.seed)
    condition = None
    if model.text_dim is not None:
        if args.captions is None:
            raise CommandError("This model is text-to-image: pass --captions (or "
                               "--captions-file).")
        if not captions.is_text(config):
            raise CommandError(
                "A text-to-image .keras model needs the config of its text encoder: pass "
                "--config (a captions config, e.g. the run's config.json).")
        encoder = captions.load_text_encoder(config)
        captions.check_text_dim(model, config, encoder)
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
