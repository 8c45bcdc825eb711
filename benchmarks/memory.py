"""Memory of distillation against teacher training: counted state and measured peak RSS.

Moment matching holds more than teacher training: the alternating method (Algorithm 2) keeps
the teacher, the generator and the auxiliary network and two optimizer states; the instant
method (Algorithm 3) the teacher, the generator, Lambda and one optimizer state. Per
parameter count P the paper's accounting (Adam with beta1 = 0 needs only its second moment
v) is 3P for teacher training (weights, m, v), 5P alternating (5/3 of it) and 4P instant
(4/3). Keras's Adam allocates m even with beta_1 = 0 (7P and 5P); the distiller's default
optimizer, `keras_mm.distillation.AdamWithoutMomentum`, does not, so keras_mm holds 5P and 4P.

For each configuration this script starts a fresh process per backend, builds the models for
the UViT preset, runs a few `fit` steps and reports:

- state counted from the models: every distinct weight and optimizer variable alive
  (the teacher, the distiller's networks, Lambda, the optimizers' slots), in MB;
- the paper's count for the same P;
- peak resident set size of the process (`resource.getrusage`), and its excess over a
  baseline process that imports keras_mm, loads the data and runs one op.

On the bundled digits preset (~0.3M parameters, ~1.3 MB per copy) the counted state is tiny
next to the framework and compiled-step working memory, so the RSS ratios stay near 1; the
counted columns are what scales to the ImageNet presets (`--count-preset imagenet64_small`
adds their counts, building one network on the CPU).

The distillers' teacher is built but not compiled, as after `keras.saving.load_model` of a
teacher saved without its optimizer; a teacher loaded with its Adam state keeps another 2P
alive (the instant method only needs Lambda from it). The instant method uses
`preconditioner="identity"` here: same memory as Lambda from Adam, no teacher training.

    python benchmarks/memory.py [--backends jax tensorflow torch] [--batch-size 128]
                                [--steps 5] [--preset uvit_digits]
                                [--count-preset imagenet64_small]

About 4 minutes per backend on a 2-core CPU for the digits preset.
"""

import argparse
import json
import os
import subprocess
import sys

# name -> distiller options (None: no distiller). "baseline" imports, loads and runs one op.
CONFIGURATIONS = {
    "baseline": None,
    "teacher": None,
    "alternating": {"method": "alternating"},
    "instant": {"method": "instant"},
    "alternating-lora4": {"method": "alternating", "lora_rank": 4},
    "alternating-lora16": {"method": "alternating", "lora_rank": 16},
    "instant-lora16": {"method": "instant", "lora_rank": 16},
    "alternating-lora16-remat": {"method": "alternating", "lora_rank": 16, "remat": True},
}
# Multiples of P per configuration: the paper's accounting (Adam beta1 = 0 keeps only v).
PAPER_STATE = {"teacher": 3, "alternating": 5, "instant": 4}
MB = 1e6


def state_bytes(variables):
    """Bytes of the distinct float variables in `variables`."""
    import keras
    import numpy as np

    seen, total = set(), 0
    for variable in variables:
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if id(variable) in seen or "float" not in dtype:
            continue
        seen.add(id(variable))
        total += int(np.prod(variable.shape)) * np.dtype(dtype).itemsize
    return total


def allocator_device():
    """`(backend, device)` whose allocator reports its bytes in use, or None: the GPU on
    any backend, and TensorFlow's CPU allocator (`tf.config.experimental.get_memory_info`
    works for "CPU:0"; JAX and torch keep no such count on a CPU)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            return (backend, device) if device.memory_stats() else None
        if backend == "torch":
            import torch

            return (backend, "cuda") if torch.cuda.is_available() else None
        if backend == "tensorflow":
            import tensorflow as tf

            return (backend, "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0")
    except (RuntimeError, AttributeError, KeyError, ValueError):  # no statistics here
        return None
    return None


def allocator_bytes(device):
    """`(current, peak)` bytes in use by `allocator_device()`'s allocator."""
    backend, name = device
    if backend == "jax":
        stats = name.memory_stats()
        return stats.get("bytes_in_use"), stats.get("peak_bytes_in_use")
    if backend == "torch":
        import torch

        return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
    import tensorflow as tf

    info = tf.config.experimental.get_memory_info(name)
    return info["current"], info["peak"]


def reset_allocator_peak(device):
    """Reset the peak of `device`'s allocator where the backend can (JAX cannot: False)."""
    backend, name = device
    if backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return True
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats(name)
        return True
    return False


def peak_device_bytes():
    """Peak accelerator memory where the backend reports it (None on CPU)."""
    device = allocator_device()
    if device is None or device[1] == "CPU:0":
        return None
    return allocator_bytes(device)[1]


def proc_status_bytes(key):
    """`VmRSS` or `VmHWM` (peak RSS) of this process, in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def step_peak_callback():
    """A callback that, after the first (compiling) batch, resets the peak RSS (Linux's
    /proc/self/clear_refs) and the allocator's peak where there is one (`allocator_device`),
    and records what is in use then: the later steps' peaks above it are the steps' own
    working memory (activations, gradients, temporaries), without compilation."""
    import keras

    class StepPeak(keras.callbacks.Callback):
        resting = first_peak = 0
        device = allocator_device()
        allocator_resting = None

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                StepPeak.first_peak = proc_status_bytes("VmHWM")
                with open("/proc/self/clear_refs", "w") as clear_refs:
                    clear_refs.write("5")
                StepPeak.resting = proc_status_bytes("VmRSS")
                if self.device is not None and reset_allocator_peak(self.device):
                    StepPeak.allocator_resting = allocator_bytes(self.device)[0]

        def allocator_peak(self):
            """The allocator's peak in use since the reset (state and step), or None."""
            if self.allocator_resting is None:
                return None
            return allocator_bytes(self.device)[1]

        def allocator_step_peak(self):
            """The allocator's peak since the reset above what was in use then, or None."""
            peak = self.allocator_peak()
            return None if peak is None else peak - self.allocator_resting

    return StepPeak()


def build_model(configuration, preset, jit_compile):
    """The compiled teacher of `preset`, or a distiller of it with `configuration`'s options."""
    import keras_mm
    from keras_mm.models.uvit import UViT

    teacher = keras_mm.DiffusionModel(UViT.from_preset(preset), seed=0)
    if configuration == "teacher":
        model = teacher
    else:
        options = CONFIGURATIONS[configuration]
        model = keras_mm.MomentMatchingDistiller(
            teacher, num_steps=8, seed=0, **options,
            preconditioner="identity" if options["method"] == "instant" else None)
    model.compile(jit_compile=jit_compile)
    return model


def measure(configuration, preset, batch_size, steps, tf_jit_compile=True):
    """Run `configuration` in this process; print one JSON line with its numbers."""
    import keras
    import numpy as np

    from keras_mm.datasets import load_digits

    images, labels = load_digits()
    repeats = int(np.ceil(batch_size * steps / len(images)))
    images = np.concatenate([images] * repeats)[: batch_size * steps]
    labels = np.concatenate([labels] * repeats)[: batch_size * steps]
    backend = keras.backend.backend()
    jit = {"jax": True, "tensorflow": tf_jit_compile, "torch": False}[backend]
    result = {"configuration": configuration, "backend": backend}
    if configuration == "baseline":
        keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.ones((batch_size, 8, 8, 1))))
    else:
        model = build_model(configuration, preset, jit)
        teacher = model if configuration == "teacher" else model.teacher
        result["parameters"] = int(sum(np.prod(v.shape) for v in teacher.parameters))
        callback = step_peak_callback()
        model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0,
                  callbacks=[callback])
        result["step_peak_bytes"] = proc_status_bytes("VmHWM") - callback.resting
        result["first_peak_bytes"] = callback.first_peak
        result["allocator_step_peak_bytes"] = callback.allocator_step_peak()
        result["allocator_peak_bytes"] = callback.allocator_peak()
        optimizer_variables = list(model.optimizer.variables)
        result["state_bytes"] = state_bytes(
            list(model.weights) + list(teacher.weights) + optimizer_variables)
        result["optimizer_bytes"] = state_bytes(optimizer_variables)
    # The process's peak: before the reset (compilation, first step) or after it.
    result["peak_rss_bytes"] = max(result.get("first_peak_bytes", 0),
                                   proc_status_bytes("VmHWM"))
    result["peak_device_bytes"] = peak_device_bytes()
    print("RESULT " + json.dumps(result))


def run_configuration(backend, configuration, batch_size, args):
    # Allocations of 64 kB and more are mmap'ed and unmapped when freed, so that RSS follows
    # the live memory instead of glibc's arenas holding freed blocks.
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "MALLOC_MMAP_THRESHOLD_": "65536"}
    command = [sys.executable, os.path.abspath(__file__), "--single", configuration,
               "--preset", args.preset, "--batch-size", str(batch_size),
               "--steps", str(args.steps), "--tf-jit-compile", args.tf_jit_compile]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{backend} {configuration} failed: {tail}")
    return json.loads(lines[-1][len("RESULT "):])


def table_row(backend, batch_size, configuration, result, teacher, baseline):
    """One markdown row; ratios are to the teacher step at the same batch size."""
    parameter_bytes = teacher["parameters"] * 4
    excess = result["peak_rss_bytes"] - baseline
    excess_ratio = excess / max(teacher["peak_rss_bytes"] - baseline, 1)
    step, teacher_step = result["step_peak_bytes"], teacher["step_peak_bytes"]
    device = result["peak_device_bytes"]
    allocator = result.get("allocator_step_peak_bytes")
    teacher_allocator = teacher.get("allocator_step_peak_bytes")
    allocator_cells = ("n/a | n/a" if allocator is None or not teacher_allocator else
                       f"{allocator / MB:.1f} | {allocator / teacher_allocator:.2f}x")
    in_use = result.get("allocator_peak_bytes")
    allocator_cells += f" | {'n/a' if in_use is None else f'{in_use / batch_size / 1e3:.0f}'}"
    paper = PAPER_STATE.get(configuration)
    return (
        f"| {backend} | {batch_size} | {configuration} | {result['state_bytes'] / MB:.2f} "
        f"({result['optimizer_bytes'] / MB:.2f} optimizer) | "
        f"{result['state_bytes'] / parameter_bytes:.2f}P"
        f"{f' (paper {paper}P)' if paper else ''} | {result['peak_rss_bytes'] / MB:.0f} | "
        f"{excess / MB:.0f} | {excess_ratio:.2f}x | {step / MB:.0f} | "
        f"{step / max(teacher_step, 1):.2f}x | {step / batch_size / 1e3:.0f} | "
        f"{allocator_cells} | {'n/a' if device is None else f'{device / MB:.0f}'} |")


def measured_table(args):
    """Run every (backend, batch size, configuration) in a fresh process; table lines."""
    lines = [
        (f"UViT `{args.preset}`, {args.steps} fit steps per configuration (jit_compile: JAX "
         f"True, TensorFlow {args.tf_jit_compile}, torch eager), one fresh process each; "
         "ratios are to the teacher step at the same batch size. Baselines (imports, data, "
         "one op):"),
        "",
        ("| backend | batch | configuration | state counted from the models, MB | state / "
         "P float32 values | process peak RSS, MB | above baseline, MB | ratio | step peak "
         "above resting RSS, MB | ratio | per example, kB | allocator step peak, MB | ratio | "
         "allocator peak in use per example, kB | peak device memory, MB |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    configurations = [c for c in args.configurations if c not in ("baseline", "teacher")]
    for backend in args.backends:
        try:
            baseline = run_configuration(backend, "baseline", args.batch_size[0], args)
        except RuntimeError as error:
            lines.append(f"| {backend} | | {error} |")
            continue
        base = baseline["peak_rss_bytes"]
        lines[0] += f" {backend} {base / MB:.0f} MB,"
        for batch_size in args.batch_size:
            try:
                teacher = run_configuration(backend, "teacher", batch_size, args)
            except RuntimeError as error:
                lines.append(f"| {backend} | {batch_size} | {error} |")
                continue
            lines.append(table_row(backend, batch_size, "teacher", teacher, teacher, base))
            print(lines[-1], file=sys.stderr, flush=True)
            for configuration in configurations:
                try:
                    result = run_configuration(backend, configuration, batch_size, args)
                except RuntimeError as error:
                    lines.append(f"| {backend} | {batch_size} | {error} |")
                    continue
                lines.append(table_row(backend, batch_size, configuration, result, teacher,
                                       base))
                print(lines[-1], file=sys.stderr, flush=True)
    lines[0] = lines[0].rstrip(",") + "."
    return lines


def count_preset(preset):
    """Parameter count of a preset and the state each configuration holds (no training)."""
    import numpy as np

    import keras_mm
    from keras_mm.models.uvit import UViT

    # DiffusionModel builds the network (one forward pass on a single example).
    model = keras_mm.DiffusionModel(UViT.from_preset(preset))
    parameters = int(sum(np.prod(v.shape) for v in model.parameters))
    gb = parameters * 4 / 1e9
    keras_adam_state = {"teacher": 3, "alternating": 7, "instant": 5}
    lines = [f"\n{preset}: P = {parameters / 1e6:.1f}M parameters ({gb:.2f} GB in float32)",
             "", ("| configuration | paper's count = keras_mm's (GB) | with Keras's "
                  "Adam(beta_1=0) (GB) |"), "|---|---|---|"]
    for configuration in ("teacher", "alternating", "instant"):
        paper, keras_adam = PAPER_STATE[configuration], keras_adam_state[configuration]
        lines.append(f"| {configuration} | {paper * gb:.2f} ({paper}P) | "
                     f"{keras_adam * gb:.2f} ({keras_adam}P) |")
    from keras_mm.distillation import LoRANetwork

    for rank in (4, 16):
        # The deltas (float32) and AdamWithoutMomentum's v for them, generator and auxiliary;
        # the instant method adds Lambda and the moving average of nu (P each; its default
        # teacher_gradient_ema=0.99) and has no auxiliary.
        delta = sum(int(np.prod(v.shape)) for v in LoRANetwork(model.network, rank).weights)
        alternating, instant = parameters + 4 * delta, 3 * parameters + 2 * delta
        lines.append(f"| alternating, LoRA r={rank} ({delta / 1e6:.2f}M deltas per network) | "
                     f"{alternating * 4 / 1e9:.2f} ({alternating / parameters:.2f}P) | |")
        lines.append(f"| instant, LoRA r={rank} | {instant * 4 / 1e9:.2f} "
                     f"({instant / parameters:.2f}P) | |")
    return lines


SD3_MEDIUM = {"patch_size": 2, "hidden_dim": 1536, "num_layers": 24, "num_heads": 24,
              "position_size": 192}  # KerasHub's stable_diffusion_3_medium MMDiT


def mmdit_counts(hidden_dim, ranks):
    """Counts of a KerasHub MMDiT with SD3-medium's structure at `hidden_dim`: parameters P,
    values in 1-D parameters (biases, trained in full by a LoRA student), and the LoRA
    deltas' size (`keras_mm.distillation.LoRANetwork`'s default targets) at each rank."""
    import math

    from keras_hub.src.models.stable_diffusion_3.mmdit import MMDiT

    config = {**SD3_MEDIUM, "hidden_dim": hidden_dim}
    network = MMDiT(**config, latent_shape=(64, 64, 16), context_shape=(154, 4096),
                    pooled_projection_shape=(2048,))
    counts = {"P": 0, "vectors": 0, **{f"lora{r}": 0 for r in ranks}}
    for variable in network.weights:
        n = math.prod(variable.shape)
        counts["P"] += n
        if len(variable.shape) <= 1:
            counts["vectors"] += n
        elif variable.path.split("/")[-1] == "kernel":
            for r in ranks:
                counts[f"lora{r}"] += r * (math.prod(variable.shape[:-1]) + variable.shape[-1])
    return counts


def count_sd3_medium(ranks=(4, 16)):
    """SD3-medium MMDiT counts, exactly: every count is a polynomial of degree <= 2 in the
    hidden size h (the other sizes fixed), so three small builds determine it; a fourth
    checks it. Returns table lines with the state of each configuration and the arithmetic
    of what fits on which GPU."""
    import numpy as np

    sizes, check = (48, 96, 144), 192  # multiples of the 24 heads
    built = {h: mmdit_counts(h, ranks) for h in (*sizes, check)}
    h_target = SD3_MEDIUM["hidden_dim"]
    counts = {}
    for key in built[check]:
        coefficients = np.polyfit(sizes, [built[h][key] for h in sizes], 2)
        predicted = np.polyval(coefficients, check)
        if abs(predicted - built[check][key]) > 0.5:
            raise RuntimeError(f"{key}: the count is not quadratic in h")
        counts[key] = round(float(np.polyval(coefficients, h_target)))
    p = counts["P"]
    gb = 1e9
    title = (f"\nSD3-medium MMDiT (KerasHub `stable_diffusion_3_medium`'s denoiser, h = "
             f"{h_target}, 24 layers): P = {p / 1e9:.3f}B parameters, "
             f"{counts['vectors'] / 1e6:.1f}M of them in biases and norms. Counted exactly "
             "from KerasHub MMDiTs of the same structure at h = "
             f"{', '.join(map(str, sizes))} (every count is quadratic in h; h = {check} built "
             "and checked), not from a 2B build.")
    lines = [title, "", "| configuration | trained values | state, GB | multiple of P (float32) |",
             "|---|---|---|---|"]

    def row(name, trained, state_bytes):
        lines.append(f"| {name} | {trained / 1e6:,.0f}M | {state_bytes / gb:.1f} | "
                     f"{state_bytes / (4 * p):.2f}P |")

    row("teacher training (weights, Adam m, v; float32)", p, 12 * p)
    row("alternating, full copies (keras_mm's 5P)", 2 * p, 20 * p)
    row("instant, full copy (4P)", p, 16 * p)
    for r in ranks:
        delta = counts[f"lora{r}"] + counts["vectors"]
        # Deltas (float32) and AdamWithoutMomentum's v for them, for generator and auxiliary.
        row(f"alternating, LoRA r={r}, float32 teacher", 2 * delta, 4 * p + 2 * 2 * 4 * delta)
        row(f"alternating, LoRA r={r}, bfloat16 teacher", 2 * delta, 2 * p + 2 * 2 * 4 * delta)
        # Lambda and the moving average of nu are teacher-sized (float32).
        row(f"instant, LoRA r={r}, float32 teacher (+ Lambda, nu average)", delta,
            12 * p + 2 * 4 * delta)
    return lines, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--preset", default="uvit_digits")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[128],
                        help="one table block per batch size")
    parser.add_argument("--configurations", nargs="*", default=list(CONFIGURATIONS),
                        choices=list(CONFIGURATIONS),
                        help="what to measure (the baseline and the teacher always run)")
    parser.add_argument("--steps", type=int, default=5, help="fit steps per configuration")
    parser.add_argument("--count-preset", nargs="*", default=[],
                        help="also count the state of these presets (builds one network)")
    parser.add_argument("--count-sd3", action="store_true",
                        help="count the state of an SD3-medium MMDiT distillation (needs "
                        "keras-hub; builds small MMDiTs only)")
    parser.add_argument("--tf-jit-compile", default="true", choices=["true", "auto"],
                        help='TensorFlow\'s jit_compile: "auto" is Keras\'s default (XLA '
                        "off on a CPU); its allocator's step peak is then exact, while under "
                        "XLA on a CPU it grows in 64 MiB blocks")
    parser.add_argument("--single", choices=CONFIGURATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.single:
        measure(args.single, args.preset, args.batch_size[0], args.steps,
                tf_jit_compile=True if args.tf_jit_compile == "true" else "auto")
        return
    if args.count_sd3:
        print("\n".join(count_sd3_medium()[0]))
        return

    lines = measured_table(args) if args.configurations else []
    if args.count_preset:
        import keras  # noqa: F401  (the backend of this process builds the network)

        for preset in args.count_preset:
            lines.extend(count_preset(preset))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
