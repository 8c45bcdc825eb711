"""ImageNet 64x64: distill a class-conditional UViT teacher into an 8-step sampler (Table 1).

What it does: trains the paper's ~400M-parameter UViT teacher on ImageNet 64x64 (or loads
one with --teacher), distills it by moment matching (Algorithm 2 of Salimans et al. 2024)
with the Appendix B settings, computes the FID and class accuracy of the student every
5,000 steps with Inception-v3 on fixed seeds, keeps the best weights, and saves the
generator and its sample grids.

Needs:
    data         TFDS `imagenet_resized/64x64` (the box-downsampled ImageNet of Chrabaszcz
                 et al. 2017, downloaded from image-net.org on the first run: about 14 GB)
                 and the Inception-v3 ImageNet weights (downloaded by Keras, about 90 MB).
    accelerator  several GPUs or TPUs, with KERAS_BACKEND=jax preferably: the paper used
                 256 TPUv5e chips. Distillation holds three copies of the 400M-parameter
                 network (teacher, generator, auxiliary) and two Adam states; shard them with
                 keras_mm.distribution.uvit_layout_map, or lower BATCH_SIZE.
    time         the paper's teacher took 2 days on 256 chips (1M steps at batch 2048);
                 distillation is 200k steps at batch 2048, plus 50k samples through
                 Inception at every FID. Not measured here.

Check the script on a CPU without downloads: `python examples/imagenet64.py --dry-run` runs
every stage once at toy size on TFDS mock data, with random Inception weights.

The same run from the command line:
    keras-mm train-teacher --config imagenet64 --run-dir runs/imagenet64_teacher
    keras-mm distill --config imagenet64 --teacher runs/imagenet64_teacher/teacher.keras \\
        --run-dir runs/imagenet64_student
"""

import argparse
import os

import keras
import tensorflow_datasets as tfds

import keras_mm
from keras_mm.distillation.distiller import WarmupLinearDecay

# Data
DATASET = "imagenet_resized/64x64"
NUM_CLASSES = 1000
# Teacher: the paper's "small" UViT of simple diffusion (~400M parameters, section 6),
# trained for 1M steps at batch 2048 (Appendix B); its learning rate is simple diffusion's.
UVIT_PRESET = "imagenet64_small"
UVIT = {}  # changes to the preset
TEACHER_BATCH_SIZE = 2048
TEACHER_STEPS = 1_000_000
TEACHER_LEARNING_RATE = 1e-4
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
# The reference is 50k training images (the usual statistics use all 1.28M).
FID_EVERY = 5000
FID_SAMPLES = 50_000
NUM_REFERENCE = 50_000
INCEPTION_WEIGHTS = "imagenet"
# A checkpoint, a log row and a progress-bar epoch every this many steps.
CHECKPOINT_EVERY = 1000

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/imagenet64", help="output directory")
parser.add_argument("--teacher", help="a trained teacher .keras file: skip teacher training")
parser.add_argument("--dry-run", action="store_true",
                    help="every stage once at toy size on TFDS mock data (CPU, no download)")
args = parser.parse_args()
if args.dry_run:
    # Random examples shaped like ImageNet 64x64's instead of the real files, until the end.
    mock_tfds = tfds.testing.mock_data(num_examples=64)
    mock_tfds.__enter__()
    UVIT = {"base_channels": 8, "channel_multipliers": (1, 2), "num_res_blocks": 1,
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
    teacher = keras_mm.DiffusionModel(keras_mm.UViT.from_preset(UVIT_PRESET, **UVIT))
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
# The classifier head gives class accuracy: Inception's classes are ImageNet's labels.
inception = keras_mm.metrics.InceptionFeatures(weights=INCEPTION_WEIGHTS, classifier_head=True)
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
    extra_metrics=("class_accuracy",),
)
grids = keras_mm.SampleGridCallback(
    os.path.join(args.out, "student_{epoch:04d}.png"),
    every_n_epochs=FID_EVERY // CHECKPOINT_EVERY,
    num_samples=100,
    labels=NUM_CLASSES,
    num_columns=10,
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
                                os.path.join(args.out, "student_best.png"), ncols=10)
