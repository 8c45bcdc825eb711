"""Compiled memory of JAX training steps: XLA's buffer assignment, no training.

RSS cannot separate a JAX step's working memory from what XLA keeps from compiling and from
the first step (benchmarks/README.md, "Measured peak memory"). XLA's own account can: for
each configuration this script builds the models, lowers and compiles the train step that
Keras's JAX trainer runs (`jax.jit(model.train_step, donate_argnums=0)`, the state donated
as Keras does) on one batch, and prints `compiled.memory_analysis()`:

- temporaries: `temp_size_in_bytes`, the buffers live inside the step (activations kept for
  the backward pass, gradients, workspace): the step's working memory;
- arguments and outputs (the state and the batch in, the new state and logs out) and the
  part of the outputs aliased to donated arguments.

Ratios are of temporaries to the teacher's training step at the same batch size. Nothing is
trained, so it is light on the CPU (compilation only, about 5-30 s per configuration).

    KERAS_BACKEND=jax python benchmarks/jax_memory.py [--batch-size 128 256]
        [--configurations teacher alternating alternating-lora16 alternating-lora16-remat]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.memory import CONFIGURATIONS, build_model

MB = 1e6


def compiled_memory(model, batch):
    """`memory_analysis()` of the model's compiled JAX train step on `batch`."""
    import jax

    model._symbolic_build(data_batch=batch)  # the optimizer's and metrics' variables
    state = tuple([v.value for v in group] for group in model._state_groups())
    lowered = jax.jit(model.train_step, donate_argnums=0).lower(state, batch)
    return lowered.compile().memory_analysis()


def measure(configuration, preset, batch_size):
    """A dict of the compiled step's sizes in bytes."""
    import keras
    import numpy as np

    from keras_mm.datasets import load_digits

    images, labels = load_digits()
    repeats = int(np.ceil(batch_size / len(images)))
    batch = (keras.ops.convert_to_tensor(np.concatenate([images] * repeats)[:batch_size]),
             keras.ops.convert_to_tensor(np.concatenate([labels] * repeats)[:batch_size]))
    start = time.perf_counter()
    analysis = compiled_memory(build_model(configuration, preset, jit_compile=True), batch)
    return {
        "temp": analysis.temp_size_in_bytes,
        "argument": analysis.argument_size_in_bytes,
        "output": analysis.output_size_in_bytes,
        "alias": analysis.alias_size_in_bytes,
        "seconds": time.perf_counter() - start,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="uvit_digits")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--configurations", nargs="+",
                        default=["teacher", "alternating", "alternating-lora16",
                                 "alternating-lora16-remat"],
                        choices=[c for c in CONFIGURATIONS if c != "baseline"])
    args = parser.parse_args()
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"jax_memory.py measures JAX's compiled steps; run it with "
                         f"KERAS_BACKEND=jax, not {keras.backend.backend()!r}.")
    print("| batch | configuration | temporaries, MB | ratio to teacher | per example, kB | "
          "arguments, MB | outputs, MB | aliased, MB | compile, s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch_size in args.batch_size:
        teacher = None
        for configuration in ["teacher"] + [c for c in args.configurations if c != "teacher"]:
            keras.backend.clear_session()
            sizes = measure(configuration, args.preset, batch_size)
            teacher = teacher or sizes["temp"]
            if configuration not in args.configurations:
                continue
            print(f"| {batch_size} | {configuration} | {sizes['temp'] / MB:.1f} | "
                  f"{sizes['temp'] / teacher:.2f}x | {sizes['temp'] / batch_size / 1e3:.0f} | "
                  f"{sizes['argument'] / MB:.2f} | {sizes['output'] / MB:.2f} | "
                  f"{sizes['alias'] / MB:.2f} | {sizes['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
