"""ms per teacher training step and per distillation update, on every backend.

Prints a markdown table: teacher step, auxiliary update, generator update (Algorithm 2),
instant iteration (Algorithm 3, both half-batches), and their ratios to the teacher step;
then the cost F of one no-grad forward pass of the network (timed with the others) and
the floor 1 + 2F/S it sets: each alternating update is one forward and backward pass, as a
teacher step S is, plus two stopped forward passes (the auxiliary update: the generator's
x~ and the teacher's g_theta(z_s); the generator update: the teacher's and the auxiliary's
predictions).
The four are timed interleaved (teacher, auxiliary, generator, instant, in turn, `--rounds`
times, each a `fit` over `--steps` batches after one warm-up `fit` that compiles): every
row sees the same load and the same compilation, and none is first in its process. The
ratio is the median over rounds of (update / teacher step in the same round). Same network
(a UViT preset, `uvit_digits` by default) and random batches on each backend; steps are
XLA-compiled (`jit_compile=True`) on JAX and TensorFlow, eager on torch unless
`--torch-compile` (Keras's `jit_compile=True`, i.e. `torch.compile`).

    OMP_NUM_THREADS=1 python benchmarks/distill_step.py [--batch-size 128] [--steps 5] \
        [--rounds 5] [--torch-compile] [--backends jax tensorflow torch]
"""

import argparse
import os
import sys

PARTS = (
    ("auxiliary", "auxiliary_update", "alternating", None),
    ("generator", "generator_update", "alternating", None),
    ("instant", "instant_update", "instant", None),
)
# Low-rank students (issue 14): the same updates with `lora_rank=LORA_RANK`.
LORA_RANK = 16
LORA_PARTS = (
    ("LoRA auxiliary", "auxiliary_update", "alternating", LORA_RANK),
    ("LoRA generator", "generator_update", "alternating", LORA_RANK),
)


def header(parts):
    cells = " | ".join(f"{name} ms (ratio)" for name, *_ in parts)
    return (f"| backend | jit_compile | teacher step ms | {cells} | no-grad forward ms (F / S) "
            "| floor 1 + 2F/S |\n|" + "---|" * (5 + len(parts)))


def forward_runner(teacher, images, labels, batch_size, steps, jit_compile):
    """A run of `steps` no-grad forward passes of `teacher`'s denoiser at `batch_size`,
    compiled as the steps are (XLA on JAX and TensorFlow with `jit_compile`, eager torch
    under `no_grad`): the cost F of one stopped forward pass inside an update."""
    import numpy as np
    from keras import ops

    from keras_mm.backend import compile_with_variables

    noisy = ops.convert_to_tensor(images[:batch_size])
    logsnr = ops.convert_to_tensor(np.linspace(-5, 5, batch_size).astype("float32"))
    condition = {"labels": ops.convert_to_tensor(labels[:batch_size])}
    forward = compile_with_variables(teacher.denoise, teacher.network.variables,
                                     jit_compile=jit_compile)

    def run():
        for _ in range(steps):
            out = forward(noisy, logsnr, condition)
        ops.convert_to_numpy(out[:1])  # waits for the device

    return run


def single_update_distiller(teacher, part, method, lora_rank=None):
    """A distiller whose `fit` step is only `part` (one of the `*_update` methods), with a
    full student or, given `lora_rank`, low-rank deltas on the teacher's kernels."""
    import keras

    import keras_mm

    class SingleUpdate(keras_mm.MomentMatchingDistiller):
        def iteration(self, data):
            images, condition = self.teacher.unpack_batch(data)
            images = keras.ops.cast(images, "float32")
            condition = self.teacher.check_condition(condition)
            getattr(self, part)(images, condition)
            return {m.name: m.result() for m in self.metrics}

    return SingleUpdate(teacher, num_steps=8, method=method, seed=0, lora_rank=lora_rank,
                        preconditioner="identity" if method == "instant" else None)


def step_runs(network_config, batch_size, steps, jit_compile, pipelines=False, parts=PARTS):
    """`name -> run()` for the teacher step and the three updates; each run is `steps` steps.

    Args:
        network_config: a UViT preset name or config dict.
        batch_size: examples per step (random images of the network's shape).
        steps: steps per run.
        jit_compile: passed to every `compile`.
        pipelines: also time the teacher step fed by `infinite_batches` and `tf.data`.
        parts: the updates to time, `(name, update method, method, lora_rank)` each.

    Returns:
        `(runs, teacher)`: the runs, and the timed teacher (e.g. to time its samplers).

    The timed teacher and the distillers' (frozen) teacher are two models: freezing a
    teacher empties its trainable variables, which would leave its own step with nothing
    to update.
    """
    import keras_mm
    from benchmarks._common import fit_runner, pipeline_runs, synthetic_data
    from keras_mm.models.uvit import UViT

    def new_teacher():
        if isinstance(network_config, str):
            return keras_mm.DiffusionModel(UViT.from_preset(network_config), seed=0)
        return keras_mm.DiffusionModel(UViT.from_config(network_config), seed=0)

    timed_teacher = new_teacher()
    timed_teacher.compile(jit_compile=jit_compile)
    network = timed_teacher.network
    images, labels = synthetic_data(network.image_shape, network.num_classes, batch_size, steps)
    runs = {"teacher": fit_runner(timed_teacher, images, labels, batch_size)}
    frozen_teacher = new_teacher()
    for name, part, method, lora_rank in parts:
        distiller = single_update_distiller(frozen_teacher, part, method, lora_rank)
        # A constant rate after the warmup: with total_steps="fit" each timed fit would
        # move the decay's end and rebuild (recompile) the train function.
        distiller.compile(jit_compile=jit_compile, total_steps=None)
        runs[name] = fit_runner(distiller, images, labels, batch_size)
    runs["forward"] = forward_runner(frozen_teacher, images, labels, batch_size, steps,
                                     jit_compile)
    if pipelines:
        runs.update(pipeline_runs(timed_teacher, images, labels, batch_size, steps))
    return runs, timed_teacher


def measure(preset, batch_size, steps, rounds, jit_compile, parts=PARTS):
    """Time the teacher step and `parts` interleaved; return the table row (markdown)."""
    import keras

    from benchmarks._common import interleaved_ms, median_and_ratio

    runs, _ = step_runs(preset, batch_size, steps, jit_compile, parts=parts)
    times = interleaved_ms(runs, steps, rounds)
    base = median_and_ratio(times, "teacher", "teacher")[0]
    cells = []
    for name, *_ in parts:
        ms, ratio = median_and_ratio(times, name, "teacher")
        cells.append(f"{ms:.1f} ({ratio:.2f}x)")
    # Each alternating update is one forward and backward pass (as a teacher step) plus
    # two stopped forward passes: its ratio cannot fall below 1 + 2F/S on any backend.
    forward_ms, forward_ratio = median_and_ratio(times, "forward", "teacher")
    cells.append(f"{forward_ms:.1f} ({forward_ratio:.2f})")
    cells.append(f"{1 + 2 * forward_ratio:.2f}x")
    return (f"| {keras.backend.backend()} | {jit_compile} | {base:.1f} | "
            + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="uvit_digits")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed fit")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--torch-compile", action="store_true",
                        help="jit_compile=True (torch.compile) on torch")
    parser.add_argument("--lora", action="store_true",
                        help=f"also time the alternating updates of a rank-{LORA_RANK} LoRA student")
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--single", action="store_true", help="only the current backend")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks._common import BACKENDS, load_average, run_per_backend

    if args.single:
        import keras

        jit = keras.backend.backend() != "torch" or args.torch_compile
        parts = PARTS + (LORA_PARTS if args.lora else ())
        print(measure(args.preset, args.batch_size, args.steps, args.rounds, jit, parts))
        return
    print(f"{args.preset}, batch {args.batch_size}, {args.rounds} interleaved rounds of "
          f"{args.steps} steps; {load_average()} before")
    passed = ["--preset", args.preset, "--batch-size", str(args.batch_size),
              "--steps", str(args.steps), "--rounds", str(args.rounds)]
    passed += ["--torch-compile"] if args.torch_compile else []
    passed += ["--lora"] if args.lora else []
    rows = run_per_backend(__file__, passed, args.backends or BACKENDS)
    print("\n".join([header(PARTS + (LORA_PARTS if args.lora else ()))] + rows))
    print(f"{load_average()} after")


if __name__ == "__main__":
    main()
