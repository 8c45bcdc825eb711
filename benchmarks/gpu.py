"""One prepared accelerator benchmark: training-step ratios, sampler speed, peak memory.

For each backend and each configuration (a fresh process each, so peak memory is the
configuration's own), prints:

- the teacher step and the auxiliary, generator and instant updates in ms and as ratios to
  the teacher step, timed interleaved (see `distill_step.py`), one no-grad forward pass F
  as a fraction of the teacher step S (the alternating updates' floor is 1 + 2F/S), and
  the teacher step fed by `infinite_batches` and by `tf.data` with prefetch, as steps/s
  against in-memory arrays;
- images/s of the 1-, 2-, 4-, 8- and 256-step ancestral samplers (`DiffusionModel.sample`,
  compiled as `sample` compiles it), median of interleaved calls;
- peak device memory (JAX `memory_stats`, TF `get_memory_info`, torch
  `max_memory_allocated`; peak RSS where the device is a CPU).

Configurations: `imagenet64_small` (~420M parameters, 64x64x3) under `mixed_bfloat16` at
`--batch-size` (64 by default; lower it if a row reports out-of-memory), then `uvit_digits`
in float32 at batch 128, for comparison with the CPU tables. Steps compile with
`jit_compile=True` on JAX and TensorFlow; torch runs eager (Keras's `torch.compile` route
was slower on CPU, see README). The whole run stops at `--time-limit` seconds (480).

    python benchmarks/gpu.py                       # all three backends, ~8 minutes
    python benchmarks/gpu.py --backends jax --batch-size 32
    python benchmarks/gpu.py --smoke               # tiny sizes, eager, CPU (a test)
"""

import argparse
import json
import os
import subprocess
import sys
import time

SAMPLER_STEPS = (1, 2, 4, 8, 256)
SMOKE_SAMPLER_STEPS = (1, 4)
# A UViT small enough for the smoke test to compile and run in seconds.
SMOKE_NETWORK = {"image_shape": (8, 8, 1), "base_channels": 8, "channel_multipliers": (1, 2),
                 "num_res_blocks": (1, 0), "transformer_depth": 1, "num_heads": 2,
                 "num_classes": 10, "embedding_dim": 16, "norm_groups": 4}


def configurations(args):
    """`(label, network, dtype policy, batch size)` of each row, in order."""
    if args.smoke:
        return [("smoke", SMOKE_NETWORK, "mixed_bfloat16", 4)]
    return [("imagenet64_small", "imagenet64_small", "mixed_bfloat16", args.batch_size),
            ("uvit_digits", "uvit_digits", "float32", 128)]


def sampler_speeds(model, batch_size, sampler_steps, rounds):
    """Images/s of `model.sample` at each number of steps: median of interleaved calls."""
    import statistics

    import keras
    import numpy as np

    labels = np.arange(batch_size, dtype="int32") % (model.num_classes or 1)
    labels = None if model.num_classes is None else labels

    def call(num_steps):
        return lambda: keras.ops.convert_to_numpy(
            model.sample(num_samples=batch_size, labels=labels, num_steps=num_steps, seed=0))

    from benchmarks._common import interleaved_ms

    times = interleaved_ms({k: call(k) for k in sampler_steps}, 1, rounds)
    return {k: batch_size / statistics.median(ms) * 1000 for k, ms in times.items()}


def run_configuration(network, policy, batch_size, steps, rounds, sampler_steps, jit):
    """Everything for one configuration on the current backend; returns a dict of numbers."""
    import keras

    from benchmarks._common import device_peak_mb, interleaved_ms, median_and_ratio
    from benchmarks.distill_step import PARTS, step_runs

    keras.config.set_dtype_policy(policy)
    runs, teacher = step_runs(network, batch_size, steps, jit, pipelines=True)
    times = interleaved_ms(runs, steps, rounds)
    result = {"teacher_ms": median_and_ratio(times, "teacher", "teacher")[0],
              "parameters": teacher.network.count_params()}
    for name, *_ in PARTS:
        result[name] = median_and_ratio(times, name, "teacher")
    result["forward"] = median_and_ratio(times, "forward", "teacher")
    for source in ("infinite_batches", "tf.data prefetch"):
        result[source] = 1 / median_and_ratio(times, source, "teacher")[1]
    result["train_peak_mb"], result["memory_kind"] = device_peak_mb()
    result["samplers"] = sampler_speeds(teacher, batch_size, sampler_steps, rounds)
    result["peak_mb"] = device_peak_mb()[0]
    return result


def format_rows(backend, label, policy, batch_size, result):
    """Two markdown rows (training, sampling) from `run_configuration`'s numbers."""
    updates = " | ".join(f"{result[name][0]:.1f} ({result[name][1]:.2f}x)"
                         for name in ("auxiliary", "generator", "instant"))
    training = (f"| {backend} | {label} | {policy} | {batch_size} | "
                f"{result['teacher_ms']:.1f} | {updates} | "
                f"{result['forward'][0]:.1f} ({result['forward'][1]:.2f}) | "
                f"{result['infinite_batches']:.2f}x / {result['tf.data prefetch']:.2f}x | "
                f"{result['train_peak_mb']:.0f} ({result['memory_kind']}) |")
    speeds = " | ".join(f"{k}: {v:.1f}" for k, v in result["samplers"].items())
    sampling = (f"| {backend} | {label} | {speeds} | {result['peak_mb']:.0f} "
                f"({result['memory_kind']}) |")
    return training, sampling


TRAINING_HEADER = (
    "| backend | network | policy | batch | teacher step ms | auxiliary ms (ratio) | "
    "generator ms (ratio) | instant ms (ratio) | no-grad forward ms (F / S) | "
    "infinite_batches / tf.data, steps/s against arrays | peak memory after training, MB |"
    "\n|---|---|---|---|---|---|---|---|---|---|---|")
SAMPLING_HEADER = ("| backend | network | images/s by number of steps | peak memory, MB |\n"
                   "|---|---|---|---|")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--batch-size", type=int, default=64,
                        help="batch of the imagenet64_small rows")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed fit")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--time-limit", type=float, default=480.0, help="seconds, in all")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU test")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    if args.smoke:
        args.steps, args.rounds = 1, 1
    sampler_steps = SMOKE_SAMPLER_STEPS if args.smoke else SAMPLER_STEPS
    if args.single is not None:
        if os.environ.get("KERAS_BACKEND") != "tensorflow":
            import tensorflow as tf

            # tf.data (the pipeline rows) must not take the GPU memory JAX or torch uses.
            tf.config.set_visible_devices([], "GPU")
        label, network, policy, batch_size = configurations(args)[int(args.single)]
        jit = os.environ.get("KERAS_BACKEND") != "torch"
        result = run_configuration(network, policy, batch_size, args.steps, args.rounds,
                                   sampler_steps, jit)
        print("RESULT " + json.dumps(result))
        return

    from benchmarks._common import load_average

    deadline = time.monotonic() + args.time_limit
    print(f"{load_average()} before; {args.rounds} interleaved rounds of {args.steps} steps")
    training, sampling = [TRAINING_HEADER], [SAMPLING_HEADER]
    passed = ["--batch-size", str(args.batch_size), "--steps", str(args.steps),
              "--rounds", str(args.rounds)] + (["--smoke"] if args.smoke else [])
    for backend in args.backends:
        for index, (label, _, policy, batch_size) in enumerate(configurations(args)):
            left = deadline - time.monotonic()
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
            try:
                out = subprocess.run(
                    [sys.executable, __file__, "--single", str(index), *passed], env=env,
                    capture_output=True, text=True, timeout=max(left, 1), check=False)
                results = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
                failure = None if results else (out.stderr.strip().splitlines() or ["?"])[-1]
            except subprocess.TimeoutExpired:
                results, failure = [], f"stopped at the {args.time_limit:.0f} s time limit"
            if failure:
                training.append(f"| {backend} | {label} | {policy} | {batch_size} | "
                                f"failed: {failure} |")
                continue
            rows = format_rows(backend, label, policy, batch_size,
                               json.loads(results[-1][len("RESULT "):]))
            training.append(rows[0])
            sampling.append(rows[1])
            print(f"done: {backend} {label}", flush=True)
    print("\n".join(training) + "\n\n" + "\n".join(sampling))
    print(f"{load_average()} after")
    if any("failed:" in row for row in training):
        sys.exit(1)


if __name__ == "__main__":
    main()
