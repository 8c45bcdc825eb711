"""The `keras-mm` command line: a thin script per command over `keras_mm.training`.

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

Your own images: `--set data.source=image_folder --set data.path=DIR` (one subfolder per
class) or `--set data.source=npz --set data.path=FILE.npz`.

`train-teacher`, `distill` and `evaluate` read a named config (`keras_mm.configs`) or a JSON
file, changed by `--set section.key=value` and explicit flags. Training runs in checkpoints
of `checkpoint_every` steps (a Keras "epoch" each): a progress bar, a CSV and TensorBoard row
and an atomic checkpoint (`keras_mm.training.checkpoint`, docs/reliability.md) each time, so
re-running an interrupted command resumes it exactly.

Each command is a module with `add_command(subparsers)`, which declares its arguments and
sets `run=<function>` (parsed arguments -> exit code); list a new one in `COMMANDS`. Keras
is imported inside the functions only: `--backend` must be set before Keras starts (see
`keras_mm.cli.backend`).
"""

import argparse
import sys

from keras_mm.cli import distill, evaluate, export, sample, train_teacher
from keras_mm.cli.backend import (  # noqa: F401
    BACKENDS,
    add_backend_argument,
    requested_backend,
    rerun_with_backend,
    select_backend,
)
from keras_mm.cli.options import CommandError
from keras_mm.configs import ConfigError

COMMANDS = [train_teacher, distill, evaluate, sample, export]


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
    except (CommandError, ConfigError) as error:
        print(f"keras-mm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # The file system refused (disk full, permissions changed mid-run...): one line
        # naming the path, not a traceback.
        print(f"keras-mm {args.command}: error: {error}", file=sys.stderr)
        return 1


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-mm",
        description="Multistep distillation of diffusion models via moment matching: train a "
        "teacher, distill a few-step student, evaluate, export and sample. `keras-mm COMMAND "
        "--help` explains each command and its config keys.",
    )
    add_backend_argument(parser, default=None)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_command(subparsers)
    return parser
