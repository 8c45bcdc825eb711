"""Text to image at toy scale: a T5-conditioned UViT teacher, distilled into an 8-step sampler.

What it does: the whole text-to-image path of §5.5 of Salimans et al. 2024 on captioned
8x8 images that it draws itself ("a red square on the left", "green circle, right", ...).
It loads a T5 encoder through KerasHub's preset loader, embeds every distinct caption once
(cached on disk), trains a UViT teacher that cross-attends to the T5 token embeddings with
10% caption dropout for classifier-free guidance, measures how well samples follow their
captions (the mean colour and the left/right balance of each sample), distills the teacher
by moment matching (Algorithm 2) while tracking FD, and exports the student with its text
encoder as a TensorFlow SavedModel that takes a caption's token ids.

Needs:
    data         none: the captioned shapes are drawn with NumPy.
    text encoder none by default: a tiny random T5 and a SentencePiece vocabulary trained on
                 the captions are written as a local KerasHub preset and loaded from there.
                 `--text-encoder t5_base_multi` (or t5_1.1_xxl) loads real weights from
                 Kaggle instead (needs Kaggle credentials and the download).
    accelerator  none: a CPU. KERAS_BACKEND=torch is the fastest on CPUs; jax and
                 tensorflow work too.
    time         about 6 minutes on 2 busy CPU cores with torch and OMP_NUM_THREADS=1
                 (one thread is faster for these tiny matrices; two threads on busy
                 shared cores were an order of magnitude slower). Measured: teacher and
                 8-step student follow the captions' colour and side in 100% of 384
                 samples.

Run: OMP_NUM_THREADS=1 KERAS_BACKEND=torch python examples/text_to_image.py
(`--dry-run` runs every stage for a few steps.)

The same run through the command line: `keras-mm train-teacher --config text2image_toy
--set data.text_encoder=runs/text_to_image/t5_tiny_preset --set model.uvit.text_dim=64
--run-dir runs/t2i_teacher`, then `distill`, `evaluate`, `export` and `sample --captions`
(see `keras-mm --help` and keras_mm/cli/__init__.py).

At real scale (the paper's 512x512 model), change:
    - the encoder: `TextEncoder.from_preset("t5_1.1_xxl", sequence_length=128,
      dtype="bfloat16")` (Imagen's choice; 4096-wide embeddings; ~10 GB of encoder weights
      in bfloat16, and the whole T5 is loaded once before its decoder is dropped);
    - the caption cache: 128 x 4096 embeddings are 1 MB per caption in bfloat16, so encode
      the dataset's captions once, offline and sharded (e.g. TFRecords of float16
      embeddings and masks), instead of the in-memory table of `captioned_dataset`;
    - the network: a ~400M-parameter UViT (e.g. `UViT.from_preset("imagenet128_small",
      num_classes=None, text_dim=4096, image_shape=(512, 512, 3), patch_size=4)`, a
      transformer at 32x32 tokens) and the schedule shifted for 512 pixels
      (`CosineSchedule(image_size=512)`, the default for that image shape);
    - the data: a licensed text-image dataset, and FID with Inception features (the
      default `FIDCallback` extractor) on 30k MS-COCO captions; CLIP score is not provided;
    - training: the paper's batch sizes and step counts (Appendix B), several accelerators
      (keras.distribution.DataParallel), and guidance scales 0 to 3 at sampling (Table 3).
"""

import argparse
import io
import os
import time

import keras
import keras_hub
import numpy as np
import sentencepiece

import keras_mm
from keras_mm.callbacks import FIDCallback
from keras_mm.datasets import captioned_dataset, make_captioned_shapes
from keras_mm.export import export_sampler
from keras_mm.images import save_image_grid
from keras_mm.metrics.feature_extractor import FeatureExtractor
from keras_mm.models.text_encoder import TextEncoder
from keras_mm.models.uvit import UViT

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="runs/text_to_image")
parser.add_argument("--text-encoder", default=None,
                    help="a KerasHub T5 preset or directory; default: a tiny local T5.")
parser.add_argument("--dry-run", action="store_true", help="a few steps of every stage.")
args = parser.parse_args()

# Data
NUM_EXAMPLES = 8192
BACKGROUND_TINT = 0.4  # the background takes on some of the shape's colour
SEQUENCE_LENGTH = 12  # tokens per caption (T5-XXL at scale: 128)
# Teacher
UVIT = {
    "image_shape": (8, 8, 3),
    "base_channels": 16,
    "channel_multipliers": (1, 2),
    "num_res_blocks": (1, 0),
    "transformer_depth": 2,
    "num_heads": 2,
    "num_classes": None,
    "embedding_dim": 64,
    "norm_groups": 4,
}
BATCH_SIZE = 64
TEACHER_STEPS = 1500
TEACHER_LEARNING_RATE = 2e-3
CAPTION_DROPOUT = 0.1
# Distillation
NUM_STEPS = 8
DISTILL_STEPS = 400
LEARNING_RATE = 3e-4
WARMUP_STEPS = 100
EVAL_EVERY = 200
NUM_SAMPLES = 384
GUIDANCE_SCALE = 1.0  # at sampling and export
if args.dry_run:
    NUM_EXAMPLES, TEACHER_STEPS, DISTILL_STEPS, WARMUP_STEPS = 512, 10, 4, 1
    EVAL_EVERY, NUM_SAMPLES = 2, 48
os.makedirs(args.out, exist_ok=True)
keras.utils.set_random_seed(0)

"""
## Captioned data and the text encoder

Without a preset, write a tiny T5 preset directory: a SentencePiece vocabulary trained on
the captions and a 2-layer T5 with random weights. KerasHub centres a fresh T5's token
embeddings on 1 (std 0.05), which would make all captions embed alike; they are redrawn
from N(0, 1), as trained embeddings are spread out.
"""
images, captions, attributes = make_captioned_shapes(
    NUM_EXAMPLES, background_tint=BACKGROUND_TINT, return_attributes=True)
print(f"{len(images)} images {images.shape[1:]}, e.g. {captions[:3]}")
preset = args.text_encoder
if preset is None:
    preset = os.path.join(args.out, "t5_tiny_preset")
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=proto, vocab_size=64, model_type="WORD",
        hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    tokenizer = keras_hub.models.T5Tokenizer(proto=proto.getvalue())
    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_heads=4,
        hidden_dim=64, intermediate_dim=128, dropout=0.0)
    table = backbone.token_embedding.embeddings
    table.assign(np.random.default_rng(0).normal(size=table.shape).astype("float32"))
    backbone.save_to_preset(preset)
    tokenizer.save_to_preset(preset)
    del backbone

encoder = TextEncoder.from_preset(preset, sequence_length=SEQUENCE_LENGTH)
# Each distinct caption goes through the frozen encoder once; the pipeline looks rows up.
cache = os.path.join(args.out, "caption_embeddings.npz")
dataset = captioned_dataset(images, captions, encoder, batch_size=BATCH_SIZE,
                            cache_path=cache).repeat()

"""
## Teacher

The UViT cross-attends from its transformer tokens to the T5 token embeddings (padding
masked) and adds their pooled mean to the logSNR embedding. `DiffusionModel` drops 10% of
the captions (an all-False mask: the UViT's learned null embedding) for guidance.
"""
network = UViT(**UVIT, text_dim=encoder.hidden_dim)
teacher = keras_mm.DiffusionModel(network, condition_dropout=CAPTION_DROPOUT)
teacher.compile(optimizer=keras.optimizers.Adam(TEACHER_LEARNING_RATE, global_clipnorm=1.0))
start = time.time()
teacher.fit(dataset, steps_per_epoch=max(1, TEACHER_STEPS // 10), epochs=10, verbose=2)
print(f"Teacher trained in {(time.time() - start) / 60:.1f} min")

"""
## Do samples follow their captions?

The caption's colour should be the brightest channel of a sample's mean, and its side the
brighter half. Chance: 1/3 for colour, 1/2 for position.
"""
eval_captions = captions[-NUM_SAMPLES:]
eval_color = attributes["color"][-NUM_SAMPLES:]
eval_left = attributes["position"][-NUM_SAMPLES:] == 0
eval_condition = encoder.encode(eval_captions)


def caption_following(samples):
    samples = np.asarray(keras.ops.convert_to_numpy(samples))
    color = np.mean(samples.mean(axis=(1, 2)).argmax(-1) == eval_color)
    half = samples.shape[2] // 2
    left = samples[:, :, :half].mean(axis=(1, 2, 3)) > samples[:, :, half:].mean(axis=(1, 2, 3))
    return f"colour {color:.2f}, position {np.mean(left == eval_left):.2f}"


for num_steps in (NUM_STEPS, 64):
    samples = teacher.sample(condition=eval_condition, num_steps=num_steps, seed=1,
                             guidance_scale=GUIDANCE_SCALE)
    print(f"teacher, {num_steps} steps: {caption_following(samples)}")
    save_image_grid(keras.ops.convert_to_numpy(samples)[:64],
                    os.path.join(args.out, f"teacher_{num_steps}_steps.png"), ncols=8, scale=4)

"""
## Distillation

FD is measured in the space of the mean colours of 2x2 blocks of the image (the Inception
network of FID needs larger images), on samples for the captions of the reference images.
"""


class ColorLayoutFeatures(FeatureExtractor):
    def __init__(self):
        inputs = keras.Input(UVIT["image_shape"])
        pooled = keras.layers.AveragePooling2D(4)(inputs)  # 2x2 blocks of colour
        super().__init__(keras.Model(inputs, keras.layers.Flatten()(pooled)),
                         name="color_layout")


distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=NUM_STEPS)
distiller.compile(learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS,
                  total_steps=DISTILL_STEPS)
best_weights = os.path.join(args.out, "student_best.weights.h5")
fid = FIDCallback(
    reference_data=images[-NUM_SAMPLES:], condition=eval_condition,
    feature_extractor=ColorLayoutFeatures(), num_samples=NUM_SAMPLES, batch_size=128,
    save_best_to=best_weights)
start = time.time()
distiller.fit(dataset, steps_per_epoch=EVAL_EVERY, epochs=max(1, DISTILL_STEPS // EVAL_EVERY),
              callbacks=[fid], verbose=2)
print(f"Distilled in {(time.time() - start) / 60:.1f} min; best FD {fid.best_fid:.3f}")
distiller.load_weights(best_weights)
samples = distiller.sample(condition=eval_condition, seed=1, guidance_scale=GUIDANCE_SCALE)
print(f"student, {NUM_STEPS} steps: {caption_following(samples)}")
save_image_grid(keras.ops.convert_to_numpy(samples)[:64],
                os.path.join(args.out, f"student_{NUM_STEPS}_steps.png"), ncols=8, scale=4)

"""
## Export

The SavedModel holds the sampler and the frozen T5 encoder, and needs only TensorFlow:
`sample_from_tokens(token_ids, padding_mask, seed)` for token ids from the T5 SentencePiece
tokenizer (`encoder.tokenize(captions)`), or `sample(text_embeddings, text_mask, seed)`.
"""
path = os.path.join(args.out, "student_savedmodel")
export_sampler(distiller.generator, path, num_steps=NUM_STEPS,
               guidance_scale=GUIDANCE_SCALE, text_encoder=encoder)
tokens = encoder.tokenize(["a red square on the left", "a blue circle on the right"])
print("Tokens to serve:", tokens["token_ids"].tolist())
