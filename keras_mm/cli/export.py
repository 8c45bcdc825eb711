"""`keras-mm export`: a .keras model's sampler as a TensorFlow SavedModel."""

import os

from keras_mm.cli.options import (
    CommandError,
    add_config_arguments,
    add_model_arguments,
    check_output_directory,
    keras_model_and_steps,
    positive_int,
    print_config,
    resolve_model_config,
)
from keras_mm.training import captions, sd3


def add_command(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="Export a .keras DiffusionModel's sampler as a TensorFlow SavedModel.",
        description="Export a .keras DiffusionModel (a teacher or a distilled generator, or "
        "a distiller's generator) as a TensorFlow SavedModel with sample, sample_from_noise, "
        "denoise and metadata endpoints (see keras_mm.export_sampler). Runs on the JAX or "
        "TensorFlow backend; from torch it re-runs itself under TensorFlow. A text-to-image "
        "model is exported with its frozen T5 encoder (data.text_encoder of the config: "
        "sample_from_tokens and encode_text endpoints) and the tokenizer's SentencePiece "
        "vocabulary in OUT/assets.extra/ (keras_mm.export.VOCABULARY_FILE), so that "
        "`keras-mm sample --captions` works on it without a config.",
    )
    parser.add_argument("--model", required=True, help=".keras file.")
    parser.add_argument("--out", required=True, help="SavedModel directory to write.")
    parser.add_argument("--num-steps", type=positive_int,
                        help="sampling steps k (required without --config; with it, k for a "
                        "generator or distiller, eval.teacher_num_steps for a teacher).")
    parser.add_argument("--output", default="uint8", choices=("uint8", "float"),
                        help="uint8 images in [0, 255] or float x-hat in [-1, 1].")
    add_model_arguments(parser)
    parser.add_argument("--max-batch-size", type=positive_int, default=None,
                        help="the most images one call of the SavedModel may ask for; larger "
                        "requests are refused (default 1024, keras_mm.export.MAX_BATCH_SIZE).")
    parser.add_argument("--quiet", action="store_true", help="print nothing.")
    add_config_arguments(parser, default=None)
    parser.set_defaults(run=run)


def run(args):
    config = resolve_model_config(args, fallback=None)
    if args.print_config:
        return print_config(config)
    from keras_mm.export import MAX_BATCH_SIZE, export_sampler

    check_output_directory(args.out, "--out")
    model, num_steps = keras_model_and_steps(args, config)
    encoder = decoder = None
    if sd3.is_sd3(config):  # latents in, images out: the run's VAE decoder goes inside
        from keras_mm.models.sd3 import SD3Decoder

        decoder = SD3Decoder.from_backbone(sd3.load_backbone(config, os.path.dirname(
            os.path.abspath(args.model))))
    elif model.text_dim is not None:
        if not captions.is_text(config):
            raise CommandError(
                "A text-to-image model is exported with its text encoder: pass --config (a "
                "captions config naming data.text_encoder, e.g. the run's config.json).")
        encoder = captions.load_text_encoder(config)
        captions.check_text_dim(model, config, encoder)
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
            decoder=decoder,
            max_batch_size=args.max_batch_size or MAX_BATCH_SIZE,
        )
    except (ValueError, NotImplementedError) as error:
        raise CommandError(str(error)) from None
    return 0
