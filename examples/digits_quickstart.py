"""Quickstart: distill a diffusion model into an 8-step sampler, on 8x8 digits, in minutes.

What it does: the keras_mm Python API in one page. Trains a class-conditional UViT teacher
on scikit-learn's 1,797 handwritten 8x8 digits, distills it into an 8-step student by
moment matching (Algorithm 2 of Salimans et al. 2024) while tracking its Fréchet distance
(FD) in the feature space of a small shipped digits classifier, compares the student with
the teacher at 8 and 256 steps, and exports the student as a TensorFlow SavedModel.

Needs:
    data         none to download: the digits ship with scikit-learn.
    accelerator  none: a CPU. KERAS_BACKEND=torch is the fastest on CPUs; jax and
                 tensorflow work too.
    time         a few minutes on 2 CPU cores with torch (see the timings it prints).

Run: KERAS_BACKEND=torch python examples/digits_quickstart.py --out runs/quickstart
The same with the command line: keras-mm train-teacher --config digits ..., then
keras-mm distill, evaluate and export (see `keras-mm --help`).
"""

import argparse
import os
import time

import keras
import numpy as np

import keras_mm
from keras_mm.datasets import infinite_batches, load_digits
from keras_mm.images import save_image_grid

# Teacher
UVIT_PRESET = "uvit_digits"  # a ~0.3M-parameter UViT
TEACHER_EPOCHS = 150  # ~2,100 steps
BATCH_SIZE = 128
# Student
NUM_STEPS = 8  # k: network calls per sample
DISTILL_STEPS = 600  # each one auxiliary and one generator update
LEARNING_RATE = 3e-4
WARMUP_STEPS = 60
# Evaluation
EVAL_EVERY = 100  # distillation steps between FD evaluations; the best weights are kept
NUM_SAMPLES = 500
TEACHER_STEPS = 256

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/digits_quickstart", help="output directory")
parser.add_argument("--dry-run", action="store_true",
                    help="a tiny network and a few steps: checks that the script runs")
args = parser.parse_args()
if args.dry_run:
    UVIT_PRESET, TEACHER_EPOCHS, DISTILL_STEPS, WARMUP_STEPS = "uvit_tiny", 1, 4, 1
    EVAL_EVERY, NUM_SAMPLES, TEACHER_STEPS = 2, 20, 4
os.makedirs(args.out, exist_ok=True)
keras.utils.set_random_seed(0)

"""
## Data and teacher

The digits come as float32 images in [-1, 1] of shape [1797, 8, 8, 1] with labels 0-9.
`DiffusionModel` wraps a denoiser network with a cosine logSNR schedule and trains it with
the v-prediction loss; labels are dropped 10% of the time for classifier-free guidance.
"""
images, labels = load_digits()
teacher = keras_mm.DiffusionModel(keras_mm.UViT.from_preset(UVIT_PRESET))
teacher.compile()  # Adam(1e-3, global_clipnorm=1); its state is the instant method's Λ
start = time.time()
# The plain Keras call: an epoch is len(images) // BATCH_SIZE full batches (DiffusionModel.fit
# takes no step on the partial batch; its docstring has the measurements).
teacher.fit(images, labels, batch_size=BATCH_SIZE, epochs=TEACHER_EPOCHS, verbose=2)
print(f"Teacher trained in {(time.time() - start) / 60:.1f} min")

"""
## Distillation

The generator starts as a copy of the teacher; one `fit` step updates the auxiliary
denoiser, then the generator. `compile()` gives the paper's Adam (β1 = 0, β2 = 0.99,
ε = 1e-12, clipping at norm 1) with warmup and linear decay. `FIDCallback` measures the FD
of 500 samples from fixed noise every `EVAL_EVERY` steps and saves the best weights.
"""
distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=NUM_STEPS, weighting="flat")
distiller.compile(learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS,
                  total_steps=DISTILL_STEPS)
best_weights = os.path.join(args.out, "student_best.weights.h5")
fid = keras_mm.FIDCallback(reference_data=images, num_samples=NUM_SAMPLES, labels=10,
                           feature_extractor="digits", save_best_to=best_weights)
grids = keras_mm.SampleGridCallback(os.path.join(args.out, "student_{epoch:02d}.png"),
                                    num_samples=100, labels=10, num_columns=10, scale=4)
start = time.time()
distiller.fit(
    infinite_batches(images, labels, batch_size=BATCH_SIZE),  # endless: count in steps
    steps_per_epoch=EVAL_EVERY,
    epochs=DISTILL_STEPS // EVAL_EVERY,
    shuffle=False,  # the stream is shuffled already
    callbacks=[fid, grids],
    verbose=2,
)
print(f"Distilled in {(time.time() - start) / 60:.1f} min; best FD {fid.best_fid:.2f} after "
      f"{fid.best_epoch * EVAL_EVERY} steps")
distiller.load_weights(best_weights)

"""
## Teacher against student

The same labels and seed for each sampler; FD in DigitsFeatures space (lower is better)
and the fraction of samples that the digits classifier reads as their label.
"""
features = keras_mm.metrics.DigitsFeatures()
eval_labels = np.arange(NUM_SAMPLES) % 10
for name, model, num_steps in [("teacher", teacher, NUM_STEPS),
                               ("teacher", teacher, TEACHER_STEPS),
                               ("student", distiller, NUM_STEPS)]:
    start = time.time()
    samples = keras.ops.convert_to_numpy(
        model.sample(labels=eval_labels, num_steps=num_steps, seed=1))
    seconds = time.time() - start
    distance = keras_mm.metrics.FrechetDistance(features)
    distance.update_state(real=images, generated=samples)
    accuracy = keras_mm.metrics.ClassAccuracy(features)
    accuracy.update_state(samples, eval_labels)
    print(f"{name} {num_steps:>3} steps: FD {distance.result():6.2f}, class accuracy "
          f"{accuracy.result():.2f}, {seconds:.1f} s for {NUM_SAMPLES} samples")
    save_image_grid(samples[:100], os.path.join(args.out, f"{name}_{num_steps}_steps.png"),
                    ncols=10, scale=4)

"""
## Export

A SavedModel that needs only TensorFlow: `tf.saved_model.load(path).sample(labels=...,
seed=...)`, or `keras-mm sample --model <path> --labels 1,2,3 --out grid.png`.
"""
distiller.generator.save(os.path.join(args.out, "student.keras"))
keras_mm.export_sampler(distiller.generator, os.path.join(args.out, "student_savedmodel"),
                        num_steps=NUM_STEPS)
