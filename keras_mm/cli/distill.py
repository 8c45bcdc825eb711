"""`keras-mm distill`: `keras_mm.training.distill` behind a parser."""

import argparse

from keras_mm.cli.options import (
    TRAINING_FLAGS,
    CommandError,
    add_config_arguments,
    add_run_arguments,
    check_keras_file,
    check_output_directory,
    config_epilog,
    print_config,
    require,
    resolve_config,
    wrap,
)

DISTILL_FLAGS = TRAINING_FLAGS + (("num_steps", "num_steps"), ("method", "method"))


def add_command(subparsers):
    parser = subparsers.add_parser(
        "distill",
        help="Distill a teacher into a few-step generator by moment matching.",
        description=wrap("Distill TEACHER (a .keras DiffusionModel, e.g. from train-teacher) into "
        "a distill.num_steps-step generator with MomentMatchingDistiller (Algorithm 2 or 3) "
        "and the paper's Adam (Appendix B). Every distill.fid_every steps the FID of the "
        "generator's samples is computed with fixed seeds and labels, and the best "
        "weights are kept in RUN_DIR/best_fid.weights.h5 (RUN_DIR/best_fid.best.json says "
        "when). Writes RUN_DIR/distiller.keras (the final state: teacher, generator, "
        "auxiliary, optimizers) and RUN_DIR/generator.keras (the generator DiffusionModel at "
        "the best FID, or the final one without FID). Checkpoints, resume, logs and grids as "
        "for train-teacher."),
        epilog=config_epilog(("distill", "eval", "grid")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--teacher", metavar="PATH",
                        help="the teacher's .keras file (required, except for model.network "
                        "\"sd3\" configs, whose teacher is model.sd3_preset).")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (teacher, data, distillation, optimizer) "
                        "and exit, loading and downloading nothing.")
    add_run_arguments(parser, "distill")
    parser.add_argument("--num-steps", type=int,
                        help="k, the student's sampling steps (distill.num_steps).")
    parser.add_argument("--method", choices=("alternating", "instant"),
                        help="Algorithm 2 or 3 (distill.method).")
    parser.set_defaults(run=run)


def run(args):
    from keras_mm.configs import ConfigError
    from keras_mm.training import distill, sd3

    config = resolve_config(args, "distill", DISTILL_FLAGS)
    if args.print_config:
        return print_config(config)
    if sd3.is_sd3(config):
        if args.teacher:
            raise CommandError(f"--config {args.config} distills model.sd3_preset (model.network "
                               "'sd3'): drop --teacher.")
    else:
        require(args.teacher or args.dry_run, "--teacher")
    if args.dry_run:
        return print_plan(config, args)
    require(args.run_dir, "--run-dir")
    check_output_directory(args.run_dir, "--run-dir")
    if args.teacher:
        check_keras_file(args.teacher, "--teacher")
    try:
        distill(config, args.teacher, args.run_dir, overwrite=args.overwrite,
                verbose=args.verbose)
    except ConfigError as error:
        if "needs the preconditioner Lambda" not in str(error):
            raise
        # The library's message names Python arguments; here the fix is a config key.
        raise CommandError(
            f"distill.method=instant needs the preconditioner Lambda, and the teacher "
            f"'{args.teacher}' has no usable Adam state (e.g. it was saved without its "
            "optimizer). Set --set distill.preconditioner_steps=N to estimate Lambda from N "
            "batches (e.g. 100), or pass the teacher.keras that train-teacher wrote."
        ) from None
    return 0


def print_plan(config, args):
    """--dry-run: what `distill` would do with `config`, from the config alone."""
    from keras_mm.training import runs, sd3
    from keras_mm.training.builders import distill_learning_rate

    runs.check_runnable(config)
    data, model, distill = config["data"], config["model"], config["distill"]
    height, width, _ = data["image_shape"]
    if sd3.is_sd3(config):
        preset = model["sd3_preset"]
        where = (f"KerasHub preset {preset!r} (downloaded from Kaggle when the run starts, "
                 "not now)" if preset else "a random tiny backbone (kept in RUN_DIR/"
                 f"{sd3.BACKBONE_DIR})")
        teacher = (f"Stable Diffusion 3 from {where}, {height}x{width} images as "
                   f"{height // 8}x{width // 8}x16 VAE latents, rectified flow")
        prompts = data["path"] or f"{len(sd3.DEFAULT_PROMPTS)} built-in prompts"
        captioned = (f"the captioned images of {data['path']} as VAE latents, cached in "
                     f"RUN_DIR/{sd3.IMAGE_LATENTS}")
        data_free = (f"data-free: {data['num_examples'] or 'one per prompt'} teacher samples "
                     f"of {prompts} ({config['eval']['teacher_num_steps']} steps, guidance "
                     f"{distill['teacher_guidance_scale']:g}), cached in "
                     f"RUN_DIR/{sd3.TEACHER_SAMPLES}")
        source = captioned if data["source"] == "image_folder" else data_free
    else:
        teacher = f"{args.teacher or '(--teacher not given)'}, {height}x{width} images"
        source = f"data.source {data['source']!r}" + (f" ({data['name']})" if data["name"]
                                                      else "")
    adam = distill["adam"]
    lines = [
        f"Config: {args.config} ({config['description']})",
        f"Teacher: {teacher}",
        f"Data: {source}",
        (f"Student: {distill['num_steps']} sampling steps, {distill['method']} method, "
        f"time sampler {distill['time_sampler']}, weighting {distill['weighting']}, teacher "
        f"guidance {distill['teacher_guidance_scale']:g}"),
        f"Optimizer: Adam beta_1={adam.get('beta_1')}, beta_2={adam.get('beta_2')}, "
        f"epsilon={adam.get('epsilon')}, global_clipnorm={adam.get('global_clipnorm')}; peak "
        f"learning rate {distill_learning_rate(config):g} after {distill['warmup_steps']} "
        f"warmup steps" + (", then linear decay to 0" if distill["decay_to_zero"] else ""),
        (f"Training: {distill['steps']} steps at batch {distill['batch_size']}, a checkpoint "
        f"every {distill['checkpoint_every']}, FID every {distill['fid_every'] or 'never'}"),
        f"Run directory: {args.run_dir or '(--run-dir not given)'}",
        "Dry run: nothing was loaded, downloaded or written.",
    ]
    print("\n".join(lines))
    return 0
