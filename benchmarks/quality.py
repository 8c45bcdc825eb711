"""Sample quality on the bundled digits: distilled students at k = 1, 2, 4, 8 steps from both
methods against the teacher's ancestral and DDIM samplers at 8 ... 256 steps.

Trains a class-conditional UViT `uvit_digits` teacher on scikit-learn's 1,797 8x8 digits,
distills one student per (method, k), keeping each student's best-FD checkpoint (FD measured
every `--eval-every` steps on 500 samples, as the paper selects by FID), and prints a markdown
table: Fréchet distance in the shipped `DigitsFeatures` space (against all 1,797 real digits),
class accuracy of the feature network's head, precision and recall (k-NN, k = 3), on
`--num-samples` samples with balanced labels and a fixed seed. Students are sampled with
Algorithm 1 (ancestral), the sampler they are trained for.

Hyperparameters are the DESIGN.md priors for the digits: flat w(s) for both methods, an
exponential moving average of nu (decay 0.99) for the instant method, the paper's Adam
(beta1 = 0, beta2 = 0.99, eps = 1e-12, warmup, linear decay, clipnorm 1).

The defaults take about 35 minutes on an idle 2-core CPU with the torch backend (the fastest
there: 57 ms per teacher step, 243 ms per alternating and 126 ms per instant step at batch
128, see distill_step.py): teacher ~3 min, its 12 rows ~3 min, each alternating student
~4.5 min and each instant student ~2.5 min with its FD evaluations.
`--teacher-epochs 5 --distill-steps 20 --eval-every 10 --num-samples 200` is a smoke-size
run (a few minutes idle).

    KERAS_BACKEND=torch python benchmarks/quality.py [--teacher-epochs 200]
        [--distill-steps 1000] [--eval-every 250] [--num-samples 1000]
        [--methods alternating instant] [--student-steps 1 2 4 8]
        [--teacher-steps 8 16 32 64 128 256] [--samplers ancestral ddim] [--out DIR]
"""

import argparse
import os
import sys
import tempfile
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-epochs", type=int, default=200,
                        help="teacher epochs of len(digits) // batch_size full batches")
    parser.add_argument("--distill-steps", type=int, default=1000,
                        help="fit steps per student (alternating: 1 auxiliary + 1 generator "
                        "update each; instant: one iteration of Algorithm 3)")
    parser.add_argument("--eval-every", type=int, default=250,
                        help="distillation steps between FD evaluations (best kept)")
    parser.add_argument("--learning-rate", type=float, default=3e-4,
                        help="peak learning rate of the distillers' Adam")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="distillers' warmup (default: a tenth of --distill-steps)")
    parser.add_argument("--num-samples", type=int, default=1000,
                        help="samples per evaluated row")
    parser.add_argument("--methods", nargs="+", default=["alternating", "instant"])
    parser.add_argument("--student-steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--teacher-steps", type=int, nargs="+",
                        default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--samplers", nargs="+", default=["ancestral", "ddim"],
                        help="teacher samplers")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=None,
                        help="folder for results.md and best checkpoints (default: temporary)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def distill(teacher, method, num_steps, images, labels, features, args, out):
    """Distill one student; returns it (best-FD weights loaded) and training facts."""
    import keras_mm
    from keras_mm.callbacks import FIDCallback
    from keras_mm.datasets import infinite_batches

    distiller = keras_mm.MomentMatchingDistiller(
        teacher, num_steps=num_steps, method=method, weighting="flat",
        teacher_gradient_ema=0.99 if method == "instant" else 0.0, seed=args.seed)
    warmup = args.warmup_steps
    if warmup is None:
        warmup = max(1, args.distill_steps // 10)
    distiller.compile(learning_rate=args.learning_rate, warmup_steps=warmup,
                      total_steps=max(args.distill_steps, warmup + 1))
    best_path = os.path.join(out, f"{method}_{num_steps}.weights.h5")
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


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import numpy as np

    import keras_mm
    from keras_mm import metrics
    from keras_mm.datasets import load_digits
    from keras_mm.models.uvit import UViT

    out = args.out or tempfile.mkdtemp(prefix="keras_mm_quality_")
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    images, labels = load_digits()
    features = metrics.DigitsFeatures()
    eval_labels = np.arange(args.num_samples) % 10
    backend = keras.backend.backend()

    print(f"Teacher: UViT uvit_digits, {args.teacher_epochs} epochs, backend {backend}",
          flush=True)
    teacher = keras_mm.DiffusionModel(UViT.from_preset("uvit_digits"), seed=args.seed)
    teacher.compile()
    start = time.time()
    from keras_mm.datasets import infinite_batches

    # Full batches only: with a partial last batch every epoch the teacher came out markedly
    # worse in our runs (cause not isolated).
    teacher.fit(infinite_batches(images, labels, batch_size=args.batch_size, seed=args.seed),
                steps_per_epoch=len(images) // args.batch_size, epochs=args.teacher_epochs,
                verbose=0)
    teacher_minutes = (time.time() - start) / 60

    rows = []
    for sampler in args.samplers:
        for num_steps in args.teacher_steps:
            _, result = metrics.sample_and_score(teacher, eval_labels, num_steps, images,
                                                 features, sampler=sampler, seed=99)
            rows.append(("teacher", sampler, num_steps, result, f"{teacher_minutes:.1f}", "-"))
            print(f"  teacher {sampler:<9} {num_steps:>3} steps: FD {result['fd']:.3f}",
                  flush=True)
    for method in args.methods:
        for num_steps in args.student_steps:
            student, facts = distill(teacher, method, num_steps, images, labels, features,
                                     args, out)
            _, result = metrics.sample_and_score(student, eval_labels, num_steps, images,
                                                 features, seed=99)
            best = "-" if facts["best_step"] is None else str(facts["best_step"])
            rows.append((f"student ({method})", "ancestral", num_steps, result,
                         f"{facts['minutes']:.1f}", best))
            print(f"  {method:<11} student {num_steps} steps: FD {result['fd']:.3f} "
                  f"(best at step {best}, {facts['minutes']:.1f} min)", flush=True)

    lines = [
        (f"Bundled digits (1,797 real 8x8 images as the reference), UViT `uvit_digits`, backend "
        f"`{backend}`; teacher {args.teacher_epochs} epochs at batch {args.batch_size}; "
        f"students {args.distill_steps} steps each (flat w(s), lr {args.learning_rate}, instant "
        f"with a 0.99 moving average of nu), best-FD checkpoint of every {args.eval_every} "
        f"steps; {args.num_samples} samples per row, seed 99."),
        "",
        ("| model | sampler | steps | FD (DigitsFeatures) | class accuracy | precision | recall "
        "| training min | best step | sampling s |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, sampler, num_steps, r, minutes, best in rows:
        lines.append(f"| {name} | {sampler} | {num_steps} | {r['fd']:.3f} | "
                     f"{r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{minutes} | {best} | {r['seconds']:.1f} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
