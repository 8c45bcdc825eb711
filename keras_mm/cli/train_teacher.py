"""`keras-mm train-teacher`: `keras_mm.training.train_teacher` behind a parser."""

import argparse

from keras_mm.cli.options import (
    TRAINING_FLAGS,
    add_config_arguments,
    add_run_arguments,
    check_output_directory,
    config_epilog,
    print_config,
    require,
    resolve_config,
    wrap,
)


def add_command(subparsers):
    parser = subparsers.add_parser(
        "train-teacher",
        help="Train a diffusion teacher (writes RUN_DIR/teacher.keras).",
        description=wrap("Train a class-conditional (or, with data.source \"captions\", "
        "text-conditional) UViT diffusion model on the config's data and save it, with its "
        "Adam state (the instant method's preconditioner), as "
        "RUN_DIR/teacher.keras. Training runs in checkpoints of teacher.checkpoint_every "
        "steps; re-running an interrupted command resumes from the last one "
        "(atomic checkpoints in RUN_DIR/backup, see docs/reliability.md). Logs go to RUN_DIR/log.csv "
        "and RUN_DIR/tensorboard, sample grids to RUN_DIR/samples."),
        epilog=config_epilog(("description", "data", "model", "teacher", "eval", "grid")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    add_run_arguments(parser, "teacher")
    parser.set_defaults(run=run)


def run(args):
    from keras_mm.training import train_teacher

    config = resolve_config(args, "teacher", TRAINING_FLAGS)
    if args.print_config:
        return print_config(config)
    require(args.run_dir, "--run-dir")
    check_output_directory(args.run_dir, "--run-dir")
    train_teacher(config, args.run_dir, overwrite=args.overwrite, verbose=args.verbose)
    return 0
