"""CIFAR-10: train a class-conditional UViT teacher, then distill it into an 8-step sampler.

What it does: trains a diffusion teacher on CIFAR-10 (or loads one with --teacher), distills
it by moment matching (Algorithm 2 of Salimans et al. 2024) with the paper's Appendix B
settings, computes the FID of the student every 5,000 steps with Inception-v3 on fixed
seeds, keeps the best weights, and saves the generator and its sample grids.

Needs:
    data         TFDS `cifar10` (downloaded on the first run, about 160 MB) and the
                 Inception-v3 ImageNet weights for FID (downloaded by Keras, about 90 MB).
    accelerator  GPUs or TPUs, with KERAS_BACKEND=jax preferably. Distillation holds three
                 copies of the network (teacher, generator, auxiliary); at the paper's batch
                 of 2048 that means several accelerators (keras.distribution.DataParallel)
                 or a smaller BATCH_SIZE.
    time         not measured here: the teacher (400k steps at batch 512) and the
                 distillation (200k steps at batch 2048, plus 50k samples through Inception
                 at every FID) each take days of accelerator time.

Check the script on a CPU without downloads: `python examples/cifar10.py --dry-run` runs
every stage once at toy size on TFDS mock data, with random Inception weights.

The same run from the command line:
    keras-mm train-teacher --config cifar10 --run-dir runs/cifar10_teacher
    keras-mm distill --config cifar10 --teacher runs/cifar10_teacher/teacher.keras \\
        --run-dir runs/cifar10_student
"""

import argparse
import os

import keras
import tensorflow_datasets as tfds

import keras_mm
from keras_mm.distillation.distiller import WarmupLinearDecay

# Data
DATASET = "cifar10"
NUM_CLASSES = 10
# Teacher: the paper distills ImageNet teachers only. A ~35M-parameter UViT (DDPM's size
# for CIFAR-10) with the transformer on 8x8 tokens, trained on EDM's budget of 200M images.
UVIT = {
    "image_shape": (32, 32, 3),
    "base_channels": 128,
    "channel_multipliers": (1, 2, 4),
    "num_res_blocks": (2, 2, 0),
    "transformer_depth": 8,
    "num_heads": 8,
    "num_classes": NUM_CLASSES,
    "embedding_dim": 512,
    "dropout": 0.1,
    "dropout_from_level": 0,
}
TEACHER_BATCH_SIZE = 512
TEACHER_STEPS = 400_000
TEACHER_LEARNING_RATE = 2e-4
TEACHER_WARMUP_STEPS = 1000
# Distillation (Appendix B): batch 2048, 200k steps, Adam with beta1 = 0, beta2 = 0.99,
# eps = 1e-12, 1,000 warmup steps then linear decay to 0, clipping at norm 1 (the
# distiller's default optimizer). The learning rate is not in the paper.
NUM_STEPS = 8
METHOD = "alternating"
BATCH_SIZE = 2048
DISTILL_STEPS = 200_000
LEARNING_RATE = 1e-4
WARMUP_STEPS = 1000
# Evaluation: FID on 50k samples every 5,000 steps, fixed seeds and labels, best kept.
FID_EVERY = 5000
FID_SAMPLES = 50_000
NUM_REFERENCE = 50_000
INCEPTION_WEIGHTS = "imagenet"
# A checkpoint, a log row and a progress-bar epoch every this many steps.
CHECKPOINT_EVERY = 1000

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/cifar10", help="output directory")
parser.add_argument("--teacher", help="a trained teacher .keras file: skip teacher training")
parser.add_argument("--dry-run", action="store_true",
                    help="every stage once at toy size on TFDS mock data (CPU, no download)")
args = parser.parse_args()
if args.dry_run:
    # Random examples shaped like CIFAR-10's instead of the real files, until the end.
    mock_tfds = tfds.testing.mock_data(num_examples=64)
    mock_tfds.__enter__()
    UVIT = {**UVIT, "base_channels": 8, "channel_multipliers": (1, 2), "num_res_blocks": 1,
            "transformer_depth": 1, "num_heads": 2, "embedding_dim": 16, "norm_groups": 2}
    TEACHER_BATCH_SIZE = BATCH_SIZE = 8
    TEACHER_STEPS = DISTILL_STEPS = FID_EVERY = CHECKPOINT_EVERY = 2
    TEACHER_WARMUP_STEPS = WARMUP_STEPS = 1
    FID_SAMPLES, NUM_REFERENCE, INCEPTION_WEIGHTS = 8, 16, None
os.makedirs(args.out, exist_ok=True)
keras.utils.set_random_seed(0)

"""
## The teacher

Images come from TFDS as float32 in [-1, 1] with their labels, in an endless shuffled
stream; `fit` counts `CHECKPOINT_EVERY` steps as an epoch, and `BackupAndRestore` resumes an
interrupted run from the last one.
"""
if args.teacher:
    teacher = keras.saving.load_model(args.teacher)
else:
    teacher_data = keras_mm.datasets.tfds_image_dataset(
        DATASET, batch_size=TEACHER_BATCH_SIZE, random_flip=True)
    teacher = keras_mm.DiffusionModel(keras_mm.UViT(**UVIT))
    schedule = WarmupLinearDecay(TEACHER_LEARNING_RATE, TEACHER_WARMUP_STEPS)
    teacher.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=1.0))
    teacher.fit(
        teacher_data,
        steps_per_epoch=CHECKPOINT_EVERY,
        epochs=TEACHER_STEPS // CHECKPOINT_EVERY,
        callbacks=[keras.callbacks.BackupAndRestore(os.path.join(args.out, "teacher_backup"))],
    )
    teacher.save(os.path.join(args.out, "teacher.keras"))

"""
## Distillation

The FID reference statistics come from `NUM_REFERENCE` training images in Inception-v3's
pool features. `FIDCallback` samples `FID_SAMPLES` images with the same seeds and balanced
labels at every evaluation and saves the weights whenever the FID improves.
"""
inception = keras_mm.metrics.InceptionFeatures(weights=INCEPTION_WEIGHTS)
reference = keras_mm.datasets.tfds_image_dataset(
    DATASET, batch_size=500, shuffle=False, repeat=False, num_examples=NUM_REFERENCE,
    drop_remainder=False)
reference_stats = keras_mm.metrics.FeatureStatistics.from_images(reference, inception)

distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=NUM_STEPS, method=METHOD)
distiller.compile(learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS,
                  total_steps=DISTILL_STEPS)
best_weights = os.path.join(args.out, "best_fid.weights.h5")
fid = keras_mm.FIDCallback(
    reference_stats=reference_stats,
    num_samples=FID_SAMPLES,
    every_n_epochs=FID_EVERY // CHECKPOINT_EVERY,
    labels=NUM_CLASSES,
    feature_extractor=inception,
    save_best_to=best_weights,
)
grids = keras_mm.SampleGridCallback(
    os.path.join(args.out, "student_{epoch:04d}.png"),
    every_n_epochs=FID_EVERY // CHECKPOINT_EVERY,
    num_samples=100,
    labels=NUM_CLASSES,
    num_columns=10, scale=2,
)
distill_data = keras_mm.datasets.tfds_image_dataset(
    DATASET, batch_size=BATCH_SIZE, random_flip=True, seed=1)
distiller.fit(
    distill_data,
    steps_per_epoch=CHECKPOINT_EVERY,
    epochs=DISTILL_STEPS // CHECKPOINT_EVERY,
    callbacks=[
        fid,
        grids,
        keras.callbacks.CSVLogger(os.path.join(args.out, "distill_log.csv"), append=True),
        keras.callbacks.BackupAndRestore(os.path.join(args.out, "distill_backup")),
    ],
)

"""
## The result

The paper reports the best FID seen during distillation; its weights go into the
generator, a plain `DiffusionModel` that samples in `NUM_STEPS` network calls.
"""
print(f"Best FID {fid.best_fid:.2f} after {fid.best_epoch * CHECKPOINT_EVERY} steps")
distiller.load_weights(best_weights)
distiller.generator.save(os.path.join(args.out, "generator.keras"))
samples = distiller.sample(labels=[label % NUM_CLASSES for label in range(100)], seed=0)
keras_mm.images.save_image_grid(keras.ops.convert_to_numpy(samples),
                                os.path.join(args.out, "student_best.png"), ncols=10, scale=2)
