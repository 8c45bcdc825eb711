"""Stable Diffusion 3 distilled by moment matching into an 8-step sampler, data-free.

What it does: loads KerasHub's `StableDiffusion3Backbone` (the `stable_diffusion_3_medium`
preset: MMDiT, VAE, CLIP-L/G, T5) as a keras_mm teacher (rectified flow on the VAE's
latents), samples the guided teacher once for a list of prompts and caches the latents (moment
matching needs data only as x to make z_t, so the teacher's own samples serve), distills the
MMDiT into an 8-step student with Algorithm 2 and the paper's Adam (Appendix B), writes a
grid of the student's images (decoded by SD3's VAE) and exports it as a TensorFlow
SavedModel (prompt embeddings and a seed in, uint8 images out, the VAE decoder inside).

Needs:
    weights      the preset from Kaggle (accept SD3's license there; KAGGLE_USERNAME and
                 KAGGLE_KEY). `--dry-run` needs none: a randomly initialised tiny backbone
                 (`keras_mm.models.sd3.tiny_sd3_backbone`) stands in and nothing downloads.
    accelerator  one with 80 GB or more for SD3 medium at 512x512 (teacher, student and
                 auxiliary MMDiT, two Adam states; see the README's "Distill Stable
                 Diffusion 3"). Not run at that size here: only `--dry-run` was run (CPU).
    time         the dry run: a minute or two on a CPU.

Run: KERAS_BACKEND=jax python examples/distill_sd3.py --prompts prompts.txt
(`--dry-run` runs every stage for a few steps on the tiny backbone.)

The same run through the command line: `keras-mm distill --config sd3_medium --set
data.path=prompts.txt --run-dir runs/sd3` (`--dry-run` prints its plan), then `keras-mm
sample --model runs/sd3/generator.keras --captions "a cat"` and `keras-mm export`.
"""

import argparse
import os

import keras
import keras_hub
import numpy as np

import keras_mm
from keras_mm.datasets import infinite_batches
from keras_mm.images import save_image_grid
from keras_mm.models import sd3
from keras_mm.training.sd3 import DEFAULT_PROMPTS

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="runs/distill_sd3")
parser.add_argument("--prompts", default=None, help="text file of prompts, one per line.")
parser.add_argument("--dry-run", action="store_true",
                    help="a tiny random backbone, a few steps of every stage, on a CPU.")
args = parser.parse_args()

# Teacher (keras-mm's sd3_medium config)
PRESET = "stable_diffusion_3_medium"
IMAGE_SHAPE = (512, 512, 3)  # the paper's text-to-image size; SD3's native is 1024
TEACHER_NUM_STEPS = 28  # SD3's default sampling steps, for the data
GUIDANCE_SCALE = 6.0  # keras_mm's w: SD3's guidance 7.0 is (1 + w)
NUM_EXAMPLES = 10_000  # teacher samples, cycling through the prompts
SAMPLE_BATCH_SIZE = 16
# Distillation (section 5.5 and Appendix B)
NUM_STEPS = 8
METHOD = "alternating"
BATCH_SIZE = 512
DISTILL_STEPS = 50_000
LEARNING_RATE = 1e-4
WARMUP_STEPS = 1000
CHECKPOINT_EVERY = 1000
GRID_PROMPTS = ["a photo of a cat sitting on a windowsill", "a lighthouse at sunset"]
if args.dry_run:
    IMAGE_SHAPE, TEACHER_NUM_STEPS, NUM_EXAMPLES, SAMPLE_BATCH_SIZE = (32, 32, 3), 4, 8, 8
    NUM_STEPS, BATCH_SIZE, DISTILL_STEPS, WARMUP_STEPS, CHECKPOINT_EVERY = 2, 4, 4, 1, 2
os.makedirs(args.out, exist_ok=True)
keras.utils.set_random_seed(0)

# The teacher: KerasHub's backbone and tokenizers, as a keras_mm DiffusionModel.
if args.dry_run:
    backbone = sd3.tiny_sd3_backbone(IMAGE_SHAPE)
    preprocessor = sd3.tiny_sd3_preprocessor()
else:
    backbone = keras_hub.models.StableDiffusion3Backbone.from_preset(
        PRESET, image_shape=IMAGE_SHAPE)
    preprocessor = keras_hub.models.StableDiffusion3TextToImagePreprocessor.from_preset(PRESET)
# Classifier-free guidance against the empty prompt's embeddings, as SD3's own sampler.
teacher = sd3.sd3_teacher(backbone, empty_prompt=preprocessor.generate_preprocess([""]))
print(f"Teacher: {backbone.diffuser.count_params():,} MMDiT parameters, latents "
      f"{teacher.image_shape}.")


def encode(prompts):
    """SD3's condition (CLIP/T5 embeddings) of `prompts`, as numpy arrays."""
    condition = sd3.encode_prompts(backbone, preprocessor.generate_preprocess(prompts))
    return {key: keras.ops.convert_to_numpy(value) for key, value in condition.items()}


# The data: the guided teacher's samples of the prompts, made once and cached (each
# prompt's embeddings stored once: SD3's context is 154 x 4096 floats).
if args.prompts:
    with open(args.prompts, encoding="utf-8") as file:
        prompts = [line.strip() for line in file if line.strip()]
else:
    prompts = list(DEFAULT_PROMPTS)
cache = os.path.join(args.out, "teacher_samples.npz")
if os.path.exists(cache):
    data = dict(np.load(cache))
else:
    data = {**encode(prompts), "prompt_index": np.arange(NUM_EXAMPLES) % len(prompts)}
    data["latents"] = np.concatenate([keras.ops.convert_to_numpy(teacher.sample(
        condition={key: data[key][data["prompt_index"][i:i + SAMPLE_BATCH_SIZE]]
                   for key in ("context", "pooled_projection")},
        num_steps=TEACHER_NUM_STEPS, guidance_scale=GUIDANCE_SCALE, seed=i))
        for i in range(0, NUM_EXAMPLES, SAMPLE_BATCH_SIZE)])
    np.savez(cache, **data)
print(f"{len(data['latents'])} teacher latents of {len(prompts)} prompts in {cache}.")


def batches():
    """Endless shuffled batches of latents with their prompts' condition."""
    for latents, rows in infinite_batches(data["latents"], data["prompt_index"],
                                          batch_size=BATCH_SIZE, seed=0):
        yield ({"images": latents, "context": data["context"][rows],
                "pooled_projection": data["pooled_projection"][rows]},)


# Distillation: Algorithm 2 against the guided teacher, in resumable checkpoints.
distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=NUM_STEPS, method=METHOD,
                                             teacher_guidance_scale=GUIDANCE_SCALE, seed=0)
distiller.compile(learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS)
distiller.fit(batches(), epochs=DISTILL_STEPS // CHECKPOINT_EVERY,
              steps_per_epoch=CHECKPOINT_EVERY, verbose=2, shuffle=False,
              callbacks=[keras.callbacks.BackupAndRestore(os.path.join(args.out, "backup"))])
distiller.generator.save(os.path.join(args.out, "generator.keras"))

# The student's images, decoded by SD3's VAE, and the SavedModel with the decoder inside.
latents = distiller.sample(condition=encode(GRID_PROMPTS), seed=0)
images = keras.ops.convert_to_numpy(sd3.decode_latents(backbone, latents))
save_image_grid(np.clip(images, -1, 1), os.path.join(args.out, "student.png"))
keras_mm.export_sampler(distiller.generator, os.path.join(args.out, "student_savedmodel"),
                        num_steps=NUM_STEPS, decoder=sd3.SD3Decoder.from_backbone(backbone))
print(f"Wrote {args.out}/student.png, generator.keras and student_savedmodel.")
