"""ms per teacher training step and per distillation iteration, on every backend.

Prints a markdown table: teacher step, auxiliary update, generator update (Algorithm 2),
instant iteration (Algorithm 3, both half-batches), and their ratios to the teacher step.
Same network (UViT `uvit_digits`, ~0.3M parameters) and batch on each backend; compiled
steps (`jit_compile=True` on JAX and TensorFlow).

    python benchmarks/distill_step.py [--batch-size 128] [--steps 20]
"""

import argparse
import os
import sys


def measure(batch_size, steps):
    import keras
    import numpy as np

    import keras_mm
    from keras_mm.datasets import load_digits
    from keras_mm.models.uvit import UViT
    from benchmarks._common import time_fit_steps

    images, labels = load_digits()
    data = (images[:batch_size], labels[:batch_size])
    jit = keras.backend.backend() != "torch"
    teacher = keras_mm.DiffusionModel(UViT.from_preset("uvit_digits"), seed=0)
    teacher.compile(jit_compile=jit)
    results = {"teacher": time_fit_steps(teacher, data, steps)}

    class Only(keras_mm.MomentMatchingDistiller):
        part = None

        def iteration(self, data):
            images, condition = keras_mm.models.diffusion_model.unpack_batch(data)
            images = keras.ops.cast(images, "float32")
            condition = self.teacher.check_condition(condition)
            getattr(self, self.part)(images, condition)
            return {m.name: m.result() for m in self.metrics}

    for part, method in (("auxiliary_update", "alternating"),
                         ("generator_update", "alternating"),
                         ("instant_update", "instant")):
        distiller = Only(teacher, num_steps=8, method=method, seed=0,
                         preconditioner="identity" if method == "instant" else None)
        distiller.part = part
        distiller.compile(jit_compile=jit)
        results[part] = time_fit_steps(distiller, data, steps)
    base = results["teacher"]
    cells = [f"{results[k]:.1f} ({results[k] / base:.2f}x)" for k in
             ("auxiliary_update", "generator_update", "instant_update")]
    print(f"| {keras.backend.backend()} | {base:.1f} | " + " | ".join(cells) + " |")
    del np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--single", action="store_true", help="only the current backend")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    header = ["| backend | teacher step ms | auxiliary ms (ratio) | generator ms (ratio) | "
              "instant ms (ratio) |", "|---|---|---|---|---|"]
    if args.single:
        measure(args.batch_size, args.steps)
        return
    from benchmarks._common import run_per_backend

    print(f"batch {args.batch_size}, UViT uvit_digits, {args.steps} timed steps")
    print("\n".join(header + run_per_backend(__file__, ["--batch-size", str(args.batch_size),
                                                        "--steps", str(args.steps)])))


if __name__ == "__main__":
    main()
