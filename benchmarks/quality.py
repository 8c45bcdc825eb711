"""Sample quality on the bundled digits: distilled students against the teacher's samplers.

Trains a class-conditional UViT `uvit_digits` teacher on scikit-learn's 1,797 8x8 digits
(`--schedule vp`: the variance-preserving process, x-prediction; `--schedule flow`: a
rectified-flow teacher, `FlowMatchingSchedule`, velocity prediction and loss), evaluates its
samplers, distills one student per (method, k) and, with `--lora-rank R`, one LoRA student
(rank R deltas on the teacher's one copy) per (`--lora-methods`, `--lora-steps`), keeping each
student's best-FD checkpoint (FD measured every `--eval-every` steps on 500 samples, as the
paper selects by FID), and prints a markdown table: Fréchet distance in the shipped
`DigitsFeatures` space (against all 1,797 real digits), class accuracy of the feature
network's head, precision and recall (k-NN, k = 3), on `--num-samples` samples with balanced
labels and a fixed seed. Students are sampled with Algorithm 1 (ancestral), the sampler they
are trained for. The table is rewritten to `--out`/results.md after every row.

Students use the library's defaults (`MomentMatchingDistiller(teacher, num_steps=k,
method=m)` and `compile()`: weighting "auto", for the instant method nu of eq. 10 with a
bias-corrected 0.99 moving average, the paper's Adam at learning rate 1e-4, decaying
linearly to zero at the end of `fit`) except the warmup: a tenth of `--distill-steps` (the
default 1,000 warmup steps would be the whole run). `--learning-rate`, `--weighting`,
`--teacher-gradient-ema`, `--subtract-data-gradient` and `--warmup-steps` override them for
every student of the run.

The VP table (teacher rows at 4, 8, 64, 256 steps; students at k = 4, 8; LoRA r = 16 at
k = 8) takes about 25 minutes on an idle 2-core CPU with the torch backend and
OMP_NUM_THREADS=1 (57 ms per teacher step, about 240 ms per alternating and 125 ms per
instant step at batch 128, see distill_step.py), the flow table about 12.
`--teacher-epochs 5 --distill-steps 20 --eval-every 10 --num-samples 200` is a smoke-size
run (a few minutes idle).

    KERAS_BACKEND=torch python benchmarks/quality.py [--schedule vp|flow]
        [--teacher-epochs 200] [--distill-steps 1000] [--eval-every 250]
        [--num-samples 1000] [--methods alternating instant] [--student-steps 1 2 4 8]
        [--lora-rank R] [--lora-steps 8] [--lora-methods alternating]
        [--teacher-steps 8 16 32 64 128 256] [--samplers ancestral ddim] [--out DIR]
        [--teacher-weights PATH]
"""

import argparse
import os
import sys
import tempfile
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", choices=["vp", "flow"], default="vp",
                        help="teacher process: variance preserving (x-prediction) or "
                        "rectified flow (FlowMatchingSchedule, velocity prediction)")
    parser.add_argument("--teacher-epochs", type=int, default=200,
                        help="teacher epochs of len(digits) // batch_size full batches")
    parser.add_argument("--distill-steps", type=int, default=1000,
                        help="fit steps per student (alternating: 1 auxiliary + 1 generator "
                        "update each; instant: one iteration of Algorithm 3)")
    parser.add_argument("--eval-every", type=int, default=250,
                        help="distillation steps between FD evaluations (best kept)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak learning rate of every student (default: the library's)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="students' warmup (default: a tenth of --distill-steps)")
    parser.add_argument("--weighting", default="auto", help="students' w(s)")
    parser.add_argument("--teacher-gradient-ema", type=float, default=None,
                        help="instant students' average of nu (default: the library's)")
    parser.add_argument("--subtract-data-gradient", type=int, default=None,
                        help="instant students: 1/0 (default: the library's)")
    parser.add_argument("--num-samples", type=int, default=1000,
                        help="samples per evaluated row")
    parser.add_argument("--methods", nargs="*", default=["alternating", "instant"],
                        help="full students' methods (none: teacher and LoRA rows only)")
    parser.add_argument("--student-steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="also distill LoRA students with deltas of this rank")
    parser.add_argument("--lora-steps", type=int, nargs="+", default=[8],
                        help="k of the LoRA students")
    parser.add_argument("--lora-methods", nargs="+", default=["alternating"])
    parser.add_argument("--teacher-steps", type=int, nargs="+",
                        default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--samplers", nargs="+", default=["ancestral", "ddim"],
                        help="teacher samplers")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=None,
                        help="folder for results.md and best checkpoints (default: temporary)")
    parser.add_argument("--teacher-weights", default=None,
                        help="a .weights.h5 path: the teacher is loaded from it if it exists, "
                        "else trained and saved there (reruns with other student options)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.warmup_steps is None:
        args.warmup_steps = max(1, args.distill_steps // 10)
    return args


def build_teacher(args, images, labels):
    """Train the `uvit_digits` teacher of `args.schedule` on full batches (or load it from
    `--teacher-weights`); returns it and its training minutes ("loaded" if loaded)."""
    import keras_mm
    from keras_mm.datasets import infinite_batches
    from keras_mm.models.uvit import UViT

    network = UViT.from_preset("uvit_digits")
    if args.schedule == "flow":
        teacher = keras_mm.DiffusionModel(network, schedule=keras_mm.FlowMatchingSchedule(),
                                          prediction_type="flow", loss_weighting="flow",
                                          seed=args.seed)
    else:
        teacher = keras_mm.DiffusionModel(network, seed=args.seed)
    teacher.compile()
    if args.teacher_weights and os.path.exists(args.teacher_weights):
        teacher.optimizer.build(teacher.trainable_variables)  # Lambda: the teacher's Adam state
        teacher.load_weights(args.teacher_weights)
        return teacher, "loaded"
    start = time.time()
    teacher.fit(infinite_batches(images, labels, batch_size=args.batch_size, seed=args.seed),
                steps_per_epoch=len(images) // args.batch_size, epochs=args.teacher_epochs,
                verbose=0)
    if args.teacher_weights:
        teacher.save_weights(args.teacher_weights)
    return teacher, f"{(time.time() - start) / 60:.1f}"


def distill(teacher, method, num_steps, lora_rank, images, labels, features, args, out):
    """Distill one student; returns it (best-FD weights loaded) and training facts."""
    import keras_mm
    from keras_mm.callbacks import FIDCallback
    from keras_mm.datasets import infinite_batches

    options = {"weighting": args.weighting, "lora_rank": lora_rank}
    if args.teacher_gradient_ema is not None:
        options["teacher_gradient_ema"] = args.teacher_gradient_ema
    if args.subtract_data_gradient is not None and method == "instant":
        options["subtract_data_gradient"] = bool(args.subtract_data_gradient)
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=num_steps, method=method,
                                                 seed=args.seed, **options)
    distiller.compile(learning_rate=args.learning_rate, warmup_steps=args.warmup_steps)
    name = f"{method}_{num_steps}" + (f"_lora{lora_rank}" if lora_rank else "")
    best_path = os.path.join(out, f"{name}.weights.h5")
    fid = FIDCallback(reference_data=images, num_samples=500,
                      every_n_steps=min(args.eval_every, args.distill_steps), num_steps=num_steps,
                      seed=1234, labels=10, feature_extractor=features, save_best_to=best_path,
                      verbose=0)
    stream = infinite_batches(images, labels, batch_size=args.batch_size, seed=args.seed)
    start = time.time()
    distiller.fit(stream, steps_per_epoch=args.distill_steps, epochs=1, shuffle=False,
                  verbose=0, callbacks=[fid])
    minutes = (time.time() - start) / 60
    if os.path.exists(best_path):
        distiller.load_weights(best_path)
    return distiller, {"minutes": minutes, "best_step": fid.best_step}


def student_specs(args):
    """(row name, method, k, LoRA rank) of every student of the run, in order."""
    specs = [(f"student ({m})", m, k, None) for m in args.methods for k in args.student_steps]
    if args.lora_rank:
        specs += [(f"student ({m}, LoRA r={args.lora_rank})", m, k, args.lora_rank)
                  for m in args.lora_methods for k in args.lora_steps]
    return specs


def header(args, backend):
    """The table's caption: data, teacher, the students' hyperparameters."""
    import keras_mm
    from keras_mm.distillation.optimizers import DEFAULT_LEARNING_RATE

    lr = (f"lr {args.learning_rate}" if args.learning_rate is not None
          else f"lr {DEFAULT_LEARNING_RATE:g} (default)")
    subtract = ("" if args.subtract_data_gradient is None else
                f", subtract_data_gradient={bool(args.subtract_data_gradient)}")
    ema = (args.teacher_gradient_ema if args.teacher_gradient_ema is not None else "0.99 "
           "(default)")
    teacher = ("variance preserving, x-prediction" if args.schedule == "vp" else
               "rectified flow (FlowMatchingSchedule), velocity prediction and loss")
    return (f"Bundled digits (1,797 real 8x8 images as the reference), UViT `uvit_digits` "
            f"teacher ({teacher}), backend `{backend}`, keras_mm {keras_mm.__version__}; "
            f"teacher {args.teacher_epochs} epochs of full batches of {args.batch_size}; "
            f"students {args.distill_steps} steps each at batch {args.batch_size} (weighting "
            f"{args.weighting}, {lr}, warmup {args.warmup_steps} then linear decay to 0, "
            f"instant: average of nu {ema}{subtract}), best-FD checkpoint of every "
            f"{args.eval_every} steps; {args.num_samples} samples per row, seed 99.")


def write_table(rows, args, backend, out):
    lines = [header(args, backend), "",
             ("| model | sampler | steps | FD (DigitsFeatures) | class accuracy | precision "
              "| recall | training min | best step | sampling s |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, sampler, num_steps, r, minutes, best in rows:
        lines.append(f"| {name} | {sampler} | {num_steps} | {r['fd']:.3f} | "
                     f"{r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{minutes} | {best} | {r['seconds']:.1f} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import numpy as np

    from keras_mm import metrics
    from keras_mm.datasets import load_digits

    out = args.out or tempfile.mkdtemp(prefix="keras_mm_quality_")
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    images, labels = load_digits()
    features = metrics.DigitsFeatures()
    eval_labels = np.arange(args.num_samples) % 10
    backend = keras.backend.backend()

    print(f"Teacher: UViT uvit_digits ({args.schedule}), {args.teacher_epochs} epochs, "
          f"backend {backend}", flush=True)
    teacher, teacher_minutes = build_teacher(args, images, labels)
    rows = []
    for sampler in args.samplers:
        for num_steps in args.teacher_steps:
            _, result = metrics.sample_and_score(teacher, eval_labels, num_steps, images,
                                                 features, sampler=sampler, seed=99)
            rows.append(("teacher", sampler, num_steps, result, teacher_minutes, "-"))
            write_table(rows, args, backend, out)
            print(f"  teacher {sampler:<9} {num_steps:>3} steps: FD {result['fd']:.3f}",
                  flush=True)
    for name, method, num_steps, lora_rank in student_specs(args):
        student, facts = distill(teacher, method, num_steps, lora_rank, images, labels,
                                 features, args, out)
        _, result = metrics.sample_and_score(student, eval_labels, num_steps, images,
                                             features, seed=99)
        best = "-" if facts["best_step"] is None else str(facts["best_step"])
        rows.append((name, "ancestral", num_steps, result, f"{facts['minutes']:.1f}", best))
        write_table(rows, args, backend, out)
        print(f"  {name} {num_steps} steps: FD {result['fd']:.3f} "
              f"(best at step {best}, {facts['minutes']:.1f} min)", flush=True)
    print(write_table(rows, args, backend, out))
    return rows


if __name__ == "__main__":
    main()
