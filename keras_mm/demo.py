"""`make demo`: teacher -> 8-step moment-matching student on the bundled digits, with a table.

Trains a class-conditional UViT teacher on scikit-learn's 8x8 digits, distills an 8-step
student (the instant method, Algorithm 3, by default: `--method alternating` for Algorithm 2),
with the library's defaults but a 100-step warmup, then measures the Fréchet distance on the
shipped `DigitsFeatures`, class accuracy, precision and recall of the teacher's ancestral
sampler at 8, 64 and 256 steps and of the student at 8 steps, and writes
`<out>/results.md` (with the student's FD every `--eval-every` steps) and a PNG grid per row.

Run: `KERAS_BACKEND=tensorflow python -m keras_mm.demo --out runs/demo` (what `make demo`
does). Training runs on full batches (`keras_mm.datasets.infinite_batches`), counted in steps.
"""

import argparse
import os
import time

import keras
import numpy as np

from keras_mm import configs, metrics, training
from keras_mm.callbacks import FIDCallback
from keras_mm.datasets import infinite_batches, load_digits
from keras_mm.images import save_image_grid


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--teacher-epochs", type=int, default=150,
                        help="teacher epochs of 14 full batches of 128 digits")
    parser.add_argument("--method", choices=["instant", "alternating"], default="instant",
                        help="distillation algorithm (instant: Algorithm 3; alternating: 2)")
    parser.add_argument("--distill-steps", type=int, default=1000,
                        help="distiller fit steps (alternating: 1 auxiliary + 1 generator "
                             "update each)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak learning rate of the distiller's Adam (default: the "
                             "library's)")
    parser.add_argument("--num-samples", type=int, default=1000,
                        help="samples per evaluated sampler")
    parser.add_argument("--eval-every", type=int, default=100,
                        help="distillation steps between Fréchet-distance evaluations")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def demo_config(args, steps_per_epoch):
    """The "digits" config (`keras-mm --config digits`) with the demo's options."""
    return configs.apply_overrides(configs.get_config("digits"), [
        f"teacher.steps={args.teacher_epochs * steps_per_epoch}",
        f"teacher.seed={args.seed}",
        f"distill.steps={args.distill_steps}",
        f"distill.method={args.method}",
        f"distill.learning_rate={'null' if args.learning_rate is None else args.learning_rate}",
        f"distill.warmup_steps={min(100, args.distill_steps // 10)}",
        f"distill.seed={args.seed}",
    ])


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    images, labels = load_digits()
    features = metrics.DigitsFeatures()
    eval_labels = np.arange(args.num_samples) % 10

    steps_per_epoch = len(images) // 128
    config = demo_config(args, steps_per_epoch)

    print(f"[1/3] Teacher: UViT 'uvit_digits' on {len(images)} digits, backend "
          f"{keras.backend.backend()}")
    teacher = training.build_teacher(config)
    start = time.time()
    teacher.fit(infinite_batches(images, labels, batch_size=128, seed=args.seed),
                steps_per_epoch=steps_per_epoch, epochs=args.teacher_epochs, verbose=2)
    teacher_minutes = (time.time() - start) / 60

    print(f"[2/3] Distilling an 8-step student ({args.method}, {args.distill_steps} steps)")
    distiller = training.build_distiller(config, teacher)
    best_path = os.path.join(args.out, "student_best.weights.h5")
    fid = FIDCallback(reference_data=images, num_samples=500, every_n_steps=args.eval_every,
                      num_steps=8, seed=1234, labels=10, feature_extractor=features,
                      save_best_to=best_path)
    start = time.time()
    log_every = min(50, args.distill_steps)  # a progress line every this many steps
    distiller.fit(infinite_batches(images, labels, batch_size=128, seed=args.seed + 1),
                  steps_per_epoch=log_every, epochs=max(1, args.distill_steps // log_every),
                  verbose=2, callbacks=[fid])
    distill_minutes = (time.time() - start) / 60
    if os.path.exists(best_path):
        distiller.load_weights(best_path)

    print("[3/3] Evaluating")
    rows = []
    for name, model, steps in (("teacher", teacher, 8), ("teacher", teacher, 64),
                               ("teacher", teacher, 256), (f"student ({args.method})", distiller, 8)):
        samples, result = metrics.sample_and_score(model, eval_labels, steps, images, features,
                                                   seed=99)
        grid = os.path.join(args.out, f"{name.split()[0]}_{steps}_steps.png")
        save_image_grid(samples[:100], grid, ncols=10, scale=4)
        rows.append((name, steps, result, os.path.basename(grid)))
        print(f"  {name:<22} {steps:>3} steps: FD {result['fd']:.3f}")

    table = [
        (f"Bundled digits, backend `{keras.backend.backend()}`, {args.num_samples} samples "
         f"each; teacher {args.teacher_epochs} epochs ({teacher_minutes:.1f} min), distillation "
         f"{args.distill_steps} steps ({distill_minutes:.1f} min; best-FD checkpoint kept)."),
        "",
        ("| sampler | steps | FD (DigitsFeatures) | class accuracy | precision | recall "
         "| sampling s | grid |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, steps, r, grid in rows:
        table.append(f"| {name} | {steps} | {r['fd']:.3f} | {r['accuracy']:.3f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['seconds']:.1f} | {grid} |")
    curve = ", ".join(f"{e['step']}: {e['fid']:.2f}" for e in fid.evaluations)
    table += ["", f"The student's FD during distillation (500 samples, step: FD): {curve}."]
    text = "\n".join(table) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
