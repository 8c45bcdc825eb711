"""ms per teacher training step for the digits preset, on every backend.

    python benchmarks/teacher_step.py [--batch-size 128] [--steps 30]
"""

import argparse
import os
import sys


def measure(batch_size, steps):
    import keras

    import keras_mm
    from keras_mm.datasets import load_digits
    from keras_mm.models.uvit import UViT
    from benchmarks._common import time_fit_steps

    images, labels = load_digits()
    network = UViT.from_preset("uvit_digits")
    rows = []
    for jit in ((False, True) if keras.backend.backend() != "torch" else (False,)):
        teacher = keras_mm.DiffusionModel(UViT.from_config(network.get_config()), seed=0)
        teacher.compile(jit_compile=jit)
        ms = time_fit_steps(teacher, (images[:batch_size], labels[:batch_size]), steps)
        rows.append(f"| {keras.backend.backend()} | {jit} | {ms:.1f} | {batch_size / ms * 1000:.0f} |")
    print("\n".join(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--single", action="store_true", help="only the current backend")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.single:
        measure(args.batch_size, args.steps)
        return
    from benchmarks._common import run_per_backend

    print(f"UViT uvit_digits teacher, batch {args.batch_size}")
    print("| backend | jit_compile | ms/step | images/s |\n|---|---|---|---|")
    print("\n".join(run_per_backend(__file__, ["--batch-size", str(args.batch_size),
                                               "--steps", str(args.steps)])))


if __name__ == "__main__":
    main()
