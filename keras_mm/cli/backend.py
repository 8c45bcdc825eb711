"""`--backend`: Keras's backend is fixed when Keras is first imported, so it is set before
that, or the command re-runs itself in a fresh interpreter."""

import argparse
import os
import subprocess
import sys

BACKENDS = ("jax", "tensorflow", "torch")


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
