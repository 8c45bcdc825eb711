"""What the commands share: config options (`--config`, `--set`, `--print-config`), the
training-run options, and the model that `sample` and `export` read."""

import argparse
import json
import os
import textwrap

from keras_mm.cli.backend import add_backend_argument


class CommandError(Exception):
    """A user error in the command line: printed as `keras-mm <command>: error: <message>`,
    exit code 2 (as are `keras_mm.configs.ConfigError`s from the library)."""


CONFIG_EPILOG = (
    "Configs: {presets}, or a JSON file (a full config, or {{\"base\": \"<preset>\", ...}} with "
    "the keys that change). --print-config shows the resolved one. Keys for --set KEY=VALUE "
    "(values are JSON: 8, 1e-4, null, true, [32, 32, 3], {{\"base_channels\": 64}}; anything "
    "else is a string):"
)

TRAINING_FLAGS = (("steps", "steps"), ("batch_size", "batch_size"),
                  ("learning_rate", "learning_rate"), ("checkpoint_every", "checkpoint_every"),
                  ("seed", "seed"))


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


def add_run_arguments(parser, section):
    """--run-dir, the training flags of config section `section`, --verbose, --overwrite."""
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
                        "interrupted run (everything that run wrote is deleted).")


def wrap(text):
    """`text` filled to the terminal's usual width (help texts with a raw epilog)."""
    return textwrap.fill(text, width=88)


def config_epilog(sections):
    """The --help epilog: how configs are given, and the keys of `sections`."""
    from keras_mm.configs import CONFIGS, describe_keys

    header = wrap(CONFIG_EPILOG.format(presets=", ".join(CONFIGS)))
    return f"{header}\n{describe_keys(sections)}\n"


def resolve_config(args, section=None, flags=()):
    """The config named by `--config`, with `--set` overrides, then the explicit flags
    (`flags`: pairs of argument name and key of `section`)."""
    from keras_mm import configs

    config = configs.get_config(args.config)
    config = configs.apply_overrides(config, args.overrides)
    for name, key in flags:
        value = getattr(args, name, None)
        if value is not None:
            config = configs.set_value(config, f"{section}.{key}", value)
    configs.check_config(config)
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


def require(value, flag):
    if not value:
        raise CommandError(f"{flag} is required.")


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text!r}.")
    return value


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_directory(path, flag):
    """A CommandError unless directory `path` can be written (or created): not a file, and
    its nearest existing ancestor a writable directory. Checked before any work starts."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandError(f"{flag} '{path}' is a file, not a directory: pass a directory "
                           "path (a new one is created).")
    _check_writable(_nearest_existing(path), path, flag)


def check_output_file(path, flag):
    """A CommandError unless file `path` can be written (its directory created if needed)."""
    if os.path.isdir(path):
        raise CommandError(f"{flag} '{path}' is a directory: pass a file path, e.g. "
                           f"{os.path.join(path, 'grid.png')}.")
    _check_writable(_nearest_existing(os.path.dirname(os.path.abspath(path))), path, flag)


def _check_writable(existing, path, flag):
    if not os.path.isdir(existing):
        raise CommandError(f"{flag} '{path}' cannot be created: '{existing}' is a file. Pass a "
                           "path in a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{flag} '{path}': '{existing}' is not writable. Pass a path in a "
                           "directory you can write to.")


def check_keras_file(path, flag):
    """A CommandError unless the .keras file `path` can be read: a zip archive whose weights
    file opens (a copy cut short, e.g. by a full disk, fails here with one line instead of
    inside the loader)."""
    import zipfile

    if not str(path).endswith(".keras") or not os.path.isfile(path):
        return  # the loader says what is wrong with other paths
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "model.weights.h5" in names:
                import h5py

                with archive.open("model.weights.h5") as weights, h5py.File(weights, "r"):
                    pass
    except (OSError, zipfile.BadZipFile, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CommandError(f"{flag} '{path}' is damaged ({reason}); write it again (rerun the "
                           "command that made it) or use an intact copy.") from None


def parse_int_list(text):
    """`8,64` -> [8, 64] (argparse type)."""
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 1 like 8,64; got {text!r}.")
    return values


def add_model_arguments(parser):
    """The options of commands that sample a .keras model (`sample`, `export`)."""
    parser.add_argument("--sampler", default="ancestral", choices=("ancestral", "ddim"),
                        help=".keras models: the sampler (default ancestral, Algorithm 1).")
    parser.add_argument("--guidance-scale", type=float, default=0.0,
                        help=".keras models: classifier-free guidance weight (default 0).")
    parser.add_argument("--clip", action="store_true",
                        help=".keras models: clip x-hat to [-1, 1] at every step.")
    parser.add_argument("--custom-module", action="append", default=[],
                        help=".keras models: module defining custom layers (repeatable).")


def keras_model_and_steps(args, config):
    """The DiffusionModel to sample or export (a distiller's generator) and its steps."""
    from keras_mm.training import default_num_steps, load_model

    if args.num_steps is None and config is None:
        raise CommandError(
            "A .keras model needs --num-steps: k for a distilled generator (e.g. 8), 64 to "
            "256 for a teacher (or pass --config to take it from a config)."
        )
    check_keras_file(args.model, "--model")
    model = load_model(args.model, args.custom_module, allow_distiller=True)
    num_steps = args.num_steps
    if num_steps is None:
        num_steps = default_num_steps(model, config)
    return getattr(model, "generator", model), num_steps
