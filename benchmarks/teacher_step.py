"""ms per teacher training step, compiled and not, and fed by each input pipeline.

Rows, timed interleaved (`--rounds` rounds, each a `fit` over `--steps` batches, after one
warm-up `fit` each):

- `jit_compile` False and True (torch: True is `torch.compile`, with `--torch-compile`);
- the compiled step fed three ways: in-memory arrays passed to `fit` (the synthetic
  baseline), `keras_mm.datasets.infinite_batches` (a Python generator of shuffled numpy
  batches, what the CLI and examples use), and a shuffled `tf.data` pipeline with
  `prefetch(AUTOTUNE)`. The ratio is steps/s against the in-memory arrays (goal >= 0.95).

    OMP_NUM_THREADS=1 python benchmarks/teacher_step.py [--batch-size 128] [--steps 5] \
        [--rounds 5] [--preset uvit_digits] [--torch-compile]
"""

import argparse
import os
import sys

HEADER = ("| backend | jit_compile | input | ms/step | images/s | steps/s against in-memory |\n"
          "|---|---|---|---|---|---|")


def teacher_runs(preset, batch_size, steps, compile_options):
    """`(jit, input) -> run()` for the teacher step; each run is `steps` steps. The input
    pipelines feed the last (compiled) option's model."""
    import keras_mm
    from benchmarks._common import fit_runner, pipeline_runs, synthetic_data
    from keras_mm.models.uvit import UViT

    runs = {}
    for jit in compile_options:
        teacher = keras_mm.DiffusionModel(UViT.from_preset(preset), seed=0)
        teacher.compile(jit_compile=jit)
        network = teacher.network
        images, labels = synthetic_data(network.image_shape, network.num_classes,
                                        batch_size, steps)
        runs[(jit, "in-memory arrays")] = fit_runner(teacher, images, labels, batch_size)
    for source, run in pipeline_runs(teacher, images, labels, batch_size, steps).items():
        runs[(jit, source)] = run
    return runs


def measure(preset, batch_size, steps, rounds, compile_options):
    """Markdown rows for the current backend."""
    import keras

    from benchmarks._common import interleaved_ms, median_and_ratio

    runs = teacher_runs(preset, batch_size, steps, compile_options)
    times = interleaved_ms(runs, steps, rounds)
    rows = []
    for jit, source in runs:
        base = (jit, "in-memory arrays")
        ms, ratio = median_and_ratio(times, (jit, source), base)
        rows.append(f"| {keras.backend.backend()} | {jit} | {source} | {ms:.1f} | "
                    f"{batch_size / ms * 1000:.0f} | {1 / ratio:.2f}x |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="uvit_digits")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed fit")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time jit_compile=True (torch.compile) on torch")
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--single", action="store_true", help="only the current backend")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks._common import BACKENDS, load_average, run_per_backend

    if args.single:
        import keras

        compiled = keras.backend.backend() != "torch" or args.torch_compile
        options = (False, True) if compiled else (False,)
        print("\n".join(measure(args.preset, args.batch_size, args.steps, args.rounds,
                                options)))
        return
    print(f"{args.preset} teacher, batch {args.batch_size}, {args.rounds} interleaved rounds "
          f"of {args.steps} steps; {load_average()} before")
    passed = ["--preset", args.preset, "--batch-size", str(args.batch_size),
              "--steps", str(args.steps), "--rounds", str(args.rounds)]
    passed += ["--torch-compile"] if args.torch_compile else []
    print("\n".join([HEADER] + run_per_backend(__file__, passed, args.backends or BACKENDS)))
    print(f"{load_average()} after")


if __name__ == "__main__":
    main()
