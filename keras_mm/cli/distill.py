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
                        help="the teacher's .keras file (required).")
    add_run_arguments(parser, "distill")
    parser.add_argument("--num-steps", type=int,
                        help="k, the student's sampling steps (distill.num_steps).")
    parser.add_argument("--method", choices=("alternating", "instant"),
                        help="Algorithm 2 or 3 (distill.method).")
    parser.set_defaults(run=run)


def run(args):
    from keras_mm.configs import ConfigError
    from keras_mm.training import distill

    config = resolve_config(args, "distill", DISTILL_FLAGS)
    if args.print_config:
        return print_config(config)
    require(args.teacher, "--teacher")
    require(args.run_dir, "--run-dir")
    check_output_directory(args.run_dir, "--run-dir")
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
