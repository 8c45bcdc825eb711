"""Named run configurations of `keras-mm`: data, network, teacher training, distillation, evaluation.

A config is a nested dict with the sections `data`, `model`, `teacher`, `distill`, `eval`
and `grid`; `CONFIG_KEYS` documents every key. The presets carry the paper's values where
it gives them (Salimans et al. 2024, Appendix B: batch 2048, 200k distillation steps, FID
every 5,000 steps keeping the best, Adam with beta1 = 0, beta2 = 0.99, eps = 1e-12, 1,000
warmup steps then linear decay to zero, gradient clipping at norm 1, no EMA, weight decay or
dropout) and say where they do not.

    config = keras_mm.configs.get_config("cifar10")
    config = keras_mm.configs.apply_overrides(config, ["distill.steps=1000"])

A config file is JSON holding a full config, or `{"base": "<preset or file>", ...}` with
only the keys that differ from its base.
"""

import copy
import json
import os
import textwrap

# The paper's distillation optimizer (Appendix B); `distill.adam`.
PAPER_ADAM = {"beta_1": 0.0, "beta_2": 0.99, "epsilon": 1e-12, "global_clipnorm": 1.0}

CONFIG_KEYS = {
    "description": "one line on what the config is for",
    "data.source": '"digits" (scikit-learn\'s 8x8 digits, bundled), "tfds" (tfds.load) or '
                   '"captions" (text-image pairs)',
    "data.name": "TFDS dataset name, e.g. cifar10, imagenet_resized/64x64, imagenet2012; "
                 'captions: "shapes" (keras_mm.datasets.make_captioned_shapes, bundled) or a '
                 "TFDS dataset with an image and a caption feature, e.g. coco_captions",
    "data.split": "TFDS split to train on",
    "data.image_shape": "[height, width, channels] of the training images (TFDS images are "
                        "center-cropped to a square and resized)",
    "data.num_classes": "number of classes (labels condition the model), or null",
    "data.random_flip": "flip training images left-right at random",
    "data.data_dir": "TFDS data directory (null: TFDS's default, ~/tensorflow_datasets)",
    "data.shuffle_buffer": "examples in the tf.data shuffle buffer",
    "data.text_encoder": "captions: KerasHub T5 preset encoding the captions (e.g. "
                         "t5_1.1_xxl, from Kaggle) or a local preset directory; its hidden_dim "
                         "must equal model.uvit.text_dim. Each distinct caption is encoded "
                         "once and cached in RUN_DIR/caption_embeddings.npz",
    "data.sequence_length": "captions: caption tokens kept (padded or truncated)",
    "data.num_examples": 'captions: examples drawn ("shapes") or read from the start of the '
                         "TFDS split into memory (null: all of it)",
    "data.image_feature": "captions, TFDS: the image feature",
    "data.caption_feature": "captions, TFDS: the caption feature; a/b for nested features "
                            "(coco_captions: captions/text), the first caption of a list",
    "model.uvit_preset": "UViT preset (keras_mm.models.uvit_presets), or null to build from "
                         "model.uvit alone",
    "model.uvit": "UViT constructor arguments overriding the preset, e.g. "
                  '{"base_channels": 64}',
    "model.prediction_type": 'what the network predicts: "v", "eps" or "x"',
    "model.loss_weighting": 'teacher loss weight: "v" (SNR + 1), "edm" or "flat"',
    "model.condition_dropout": "probability of dropping the label during teacher training "
                               "(classifier-free guidance)",
    "teacher.batch_size": "teacher training batch size",
    "teacher.steps": "teacher training steps",
    "teacher.learning_rate": "teacher Adam learning rate after warmup (constant)",
    "teacher.warmup_steps": "linear learning-rate warmup of the teacher",
    "teacher.checkpoint_every": "steps between checkpoints (BackupAndRestore), CSV/TensorBoard "
                                "rows and progress-bar epochs; divides teacher.steps",
    "teacher.sample_every": "steps between sample grids (a multiple of checkpoint_every; 0: "
                            "none)",
    "teacher.seed": "seed of the teacher's initialisation, noise and data order",
    "distill.num_steps": "k, the student's sampling steps",
    "distill.method": '"alternating" (Algorithm 2) or "instant" (Algorithm 3)',
    "distill.time_sampler": 'p(s): "edm" (the paper) or "uniform"',
    "distill.weighting": 'w(s): "auto" (flat for k <= 2, else EDM), "edm", "flat" or "dmd"',
    "distill.conditional_sampling": "z_s ~ q(z_s | z_t, x~) (true, the paper) or q(z_s | x~)",
    "distill.teacher_guidance_scale": "classifier-free guidance of the teacher (section 5.3)",
    "distill.clip_teacher": "clip the teacher's x-hat to [-1, 1]",
    "distill.teacher_gradient_ema": "EMA decay of nu across instant iterations (0: none)",
    "distill.preconditioner_steps": "instant method: estimate Lambda from this many batches "
                                    "instead of the teacher's Adam state (0: use the Adam state)",
    "distill.batch_size": "distillation batch size",
    "distill.steps": "distillation steps (one step = one auxiliary + one generator update for "
                     "the alternating method)",
    "distill.learning_rate": "peak learning rate (null: 1e-4 alternating, 1e-3 instant; the "
                             "paper does not give it)",
    "distill.warmup_steps": "linear learning-rate warmup",
    "distill.decay_to_zero": "then decay the learning rate linearly to 0 at distill.steps",
    "distill.adam": "Adam arguments of both networks: beta_1, beta_2, epsilon, global_clipnorm",
    "distill.checkpoint_every": "steps between checkpoints (BackupAndRestore), CSV/TensorBoard "
                                "rows and progress-bar epochs; divides distill.steps",
    "distill.sample_every": "steps between sample grids (a multiple of checkpoint_every; 0: "
                            "none)",
    "distill.fid_every": "steps between FIDs during distillation, the best kept (a multiple "
                         "of checkpoint_every; 0: none)",
    "distill.seed": "seed of the distiller's draws and data order",
    "eval.feature_extractor": '"digits" (shipped DigitsFeatures, for 8x8 digits), '
                              '"inception_v3" (InceptionFeatures, images of 75+ pixels) or '
                              '"color_layout" (ColorLayoutFeatures, mean colours of the '
                              "image quadrants: for tiny colour images such as the 8x8 "
                              "captioned shapes)",
    "eval.inception_weights": '"imagenet" (downloaded by Keras), a weights file, or null '
                              "(random: for tests only)",
    "eval.num_samples": "samples per FID / evaluation",
    "eval.num_reference": "real images of the reference statistics (null: the whole split); "
                          "captions: the evaluation samples take the captions of the first "
                          "eval.num_samples of them (reused cyclically if fewer)",
    "eval.reference_split": 'TFDS split of the reference images (captions, "shapes": a '
                            "held-out draw with another seed)",
    "eval.batch_size": "samples per sampling call and images per feature batch",
    "eval.seed": "seed of the evaluation samples, fixed across evaluations",
    "eval.teacher_num_steps": "sampling steps of a teacher in `evaluate`, `sample`, `export` "
                              "and its grids",
    "eval.guidance_scale": "classifier-free guidance when sampling for evaluation",
    "eval.precision_recall": "also report improved precision and recall",
    "eval.class_accuracy": "also report class accuracy (needs a classifier head over the "
                           "data's labels: DigitsFeatures, or Inception on ImageNet)",
    "grid.num_samples": "images per sample grid",
    "grid.num_columns": "images per grid row",
}

# Free-form dicts whose keys are not listed in CONFIG_KEYS.
OPEN_SECTIONS = ("model.uvit", "distill.adam")

# Shared by the class-conditional TFDS presets: Appendix B's distillation.
PAPER_DISTILL = {
    "num_steps": 8,
    "method": "alternating",
    "time_sampler": "edm",
    "weighting": "auto",
    "conditional_sampling": True,
    "teacher_guidance_scale": 0.0,
    "clip_teacher": False,
    "teacher_gradient_ema": 0.0,
    "preconditioner_steps": 0,
    "batch_size": 2048,
    "steps": 200_000,
    "learning_rate": None,
    "warmup_steps": 1000,
    "decay_to_zero": True,
    "adam": dict(PAPER_ADAM),
    "checkpoint_every": 1000,
    "sample_every": 5000,
    "fid_every": 5000,
    "seed": 0,
}

# The paper trains its ImageNet base models for 1M steps at batch 2048 (Appendix B); their
# learning rate is not given, 1e-4 is simple diffusion's.
PAPER_TEACHER = {
    "batch_size": 2048,
    "steps": 1_000_000,
    "learning_rate": 1e-4,
    "warmup_steps": 1000,
    "checkpoint_every": 1000,
    "sample_every": 10_000,
    "seed": 0,
}

PAPER_EVAL = {
    "feature_extractor": "inception_v3",
    "inception_weights": "imagenet",
    "num_samples": 50_000,
    "num_reference": 50_000,
    "reference_split": "train",
    "batch_size": 500,
    "seed": 0,
    "teacher_num_steps": 256,
    "guidance_scale": 0.0,
    "precision_recall": True,
    "class_accuracy": True,
}


def _tfds_config(description, name, split, image_size, uvit_preset, uvit, class_accuracy,
                 teacher):
    return {
        "description": description,
        "data": {
            "source": "tfds",
            "name": name,
            "split": split,
            "image_shape": [image_size, image_size, 3],
            "num_classes": 1000 if "imagenet" in name else 10,
            "random_flip": True,
            "data_dir": None,
            "shuffle_buffer": 10_000,
        },
        "model": {
            "uvit_preset": uvit_preset,
            "uvit": uvit,
            "prediction_type": "v",
            "loss_weighting": "v",
            "condition_dropout": 0.1,
        },
        "teacher": teacher,
        "distill": copy.deepcopy(PAPER_DISTILL),
        "eval": {**copy.deepcopy(PAPER_EVAL), "class_accuracy": class_accuracy},
        "grid": {"num_samples": 100, "num_columns": 10},
    }


CONFIGS = {
    # `make demo`'s run on CPU in minutes: scikit-learn's 1,797 digits, 0.3M-parameter UViT.
    "digits": {
        "description": "bundled 8x8 digits on CPU in minutes (the `make demo` settings)",
        "data": {
            "source": "digits",
            "image_shape": [8, 8, 1],
            "num_classes": 10,
        },
        "model": {
            "uvit_preset": "uvit_digits",
            "uvit": {},
            "prediction_type": "v",
            "loss_weighting": "v",
            "condition_dropout": 0.1,
        },
        "teacher": {
            "batch_size": 128,
            "steps": 2100,  # 150 epochs of the 1,797 digits
            "learning_rate": 1e-3,
            "warmup_steps": 0,
            "checkpoint_every": 100,
            "sample_every": 500,
            "seed": 0,
        },
        "distill": {
            **copy.deepcopy(PAPER_DISTILL),
            "weighting": "flat",
            "batch_size": 128,
            "steps": 1000,
            "learning_rate": 3e-4,
            "warmup_steps": 100,
            "checkpoint_every": 50,
            "sample_every": 250,
            "fid_every": 250,
        },
        "eval": {
            **copy.deepcopy(PAPER_EVAL),
            "feature_extractor": "digits",
            "inception_weights": None,
            "num_samples": 500,
            "num_reference": None,
            "teacher_num_steps": 256,
        },
        "grid": {"num_samples": 100, "num_columns": 10},
    },
    # Not in the paper: a ~35M-parameter UViT (DDPM's CIFAR-10 size), three levels at
    # 32/16/8 with the transformer on the 8x8 tokens. Distillation as for ImageNet.
    "cifar10": _tfds_config(
        "class-conditional CIFAR-10 32x32 from TFDS, the paper's distillation settings",
        name="cifar10",
        split="train",
        image_size=32,
        uvit_preset=None,
        uvit={
            "image_shape": [32, 32, 3],
            "base_channels": 128,
            "channel_multipliers": [1, 2, 4],
            "num_res_blocks": [2, 2, 0],
            "transformer_depth": 8,
            "num_heads": 8,
            "num_classes": 10,
            "embedding_dim": 512,
            "dropout": 0.1,
            "dropout_from_level": 0,
        },
        class_accuracy=False,  # Inception's head predicts ImageNet classes, not CIFAR's
        # EDM's CIFAR-10 budget (200M images) at batch 512.
        teacher={**PAPER_TEACHER, "batch_size": 512, "steps": 400_000, "learning_rate": 2e-4},
    ),
    # Table 1: class-conditional ImageNet 64x64 with the ~400M-parameter UViT (section 6).
    "imagenet64": _tfds_config(
        "class-conditional ImageNet 64x64 (TFDS imagenet_resized), Table 1's setting",
        name="imagenet_resized/64x64",
        split="train",
        image_size=64,
        uvit_preset="imagenet64_small",
        uvit={},
        class_accuracy=True,
        teacher=dict(PAPER_TEACHER),
    ),
    # Table 2: ImageNet 128x128, center-cropped and resized from TFDS imagenet2012 (which
    # needs the manually downloaded archives, see the TFDS catalog).
    "imagenet128": _tfds_config(
        "class-conditional ImageNet 128x128 (TFDS imagenet2012), Table 2's setting",
        name="imagenet2012",
        split="train",
        image_size=128,
        uvit_preset="imagenet128_small",
        uvit={},
        class_accuracy=True,
        teacher=dict(PAPER_TEACHER),
    ),
    # Section 5.5: 512x512 pixel-space text-to-image with a T5-XXL encoder, batch 512,
    # 50,000 distillation steps. The paper's data set is licensed; TFDS coco_captions stands
    # in for it (its first caption per image). Its images and caption embeddings are held
    # in memory: at this scale, encode the captions offline and shard them instead (see
    # examples/text_to_image.py).
    "text2image": {
        "description": "section 5.5's text-to-image setting: T5-XXL captions, 512x512 "
                       "pixels (see examples/text_to_image.py)",
        "data": {
            "source": "captions",
            "name": "coco_captions",
            "split": "train",
            "image_shape": [512, 512, 3],
            "num_classes": None,
            "data_dir": None,
            "text_encoder": "t5_1.1_xxl",
            "sequence_length": 128,
            "num_examples": None,
            "image_feature": "image",
            "caption_feature": "captions/text",
        },
        "model": {
            "uvit_preset": None,
            "uvit": {
                "image_shape": [512, 512, 3],
                "base_channels": 128,
                "channel_multipliers": [1, 2, 8],
                "num_res_blocks": [2, 2, 0],
                "transformer_depth": 24,
                "num_heads": 16,
                "text_dim": 4096,
                "embedding_dim": 1024,
                "patch_size": 8,
            },
            "prediction_type": "v",
            "loss_weighting": "v",
            "condition_dropout": 0.1,
        },
        "teacher": {**PAPER_TEACHER, "batch_size": 512},
        "distill": {**copy.deepcopy(PAPER_DISTILL), "batch_size": 512, "steps": 50_000},
        "eval": {**copy.deepcopy(PAPER_EVAL), "num_reference": 30_000,
                 "reference_split": "val", "class_accuracy": False},
        "grid": {"num_samples": 16, "num_columns": 4},
    },
    # examples/text_to_image.py's toy run through the CLI: 8x8 captioned shapes drawn with
    # NumPy, a ~90k-parameter UViT that cross-attends to the caption embeddings, FD in the
    # colour-layout feature space. data.text_encoder must name a T5 preset: a real one
    # (e.g. t5_base_multi, text_dim 768) or a tiny local one as examples/text_to_image.py
    # writes (hidden_dim 64); set model.uvit.text_dim to its hidden_dim.
    "text2image_toy": {
        "description": "text to image at toy scale on CPU: 8x8 captioned coloured shapes "
                       '("a red square on the left"), bundled',
        "data": {
            "source": "captions",
            "name": "shapes",
            "split": "train",
            "image_shape": [8, 8, 3],
            "num_classes": None,
            "data_dir": None,
            "text_encoder": "t5_base_multi",
            "sequence_length": 12,
            "num_examples": 8192,
            "image_feature": "image",
            "caption_feature": "caption",
        },
        "model": {
            "uvit_preset": None,
            "uvit": {
                "image_shape": [8, 8, 3],
                "base_channels": 16,
                "channel_multipliers": [1, 2],
                "num_res_blocks": [1, 0],
                "transformer_depth": 2,
                "num_heads": 2,
                "num_classes": None,
                "text_dim": 768,
                "embedding_dim": 64,
                "norm_groups": 4,
            },
            "prediction_type": "v",
            "loss_weighting": "v",
            "condition_dropout": 0.1,
        },
        "teacher": {
            "batch_size": 64,
            "steps": 1500,
            "learning_rate": 2e-3,
            "warmup_steps": 0,
            "checkpoint_every": 150,
            "sample_every": 750,
            "seed": 0,
        },
        "distill": {
            **copy.deepcopy(PAPER_DISTILL),
            "batch_size": 64,
            "steps": 400,
            "learning_rate": 3e-4,
            "warmup_steps": 100,
            "checkpoint_every": 100,
            "sample_every": 200,
            "fid_every": 200,
        },
        "eval": {
            **copy.deepcopy(PAPER_EVAL),
            "feature_extractor": "color_layout",
            "inception_weights": None,
            "num_samples": 384,
            "num_reference": 384,
            "reference_split": "validation",
            "batch_size": 128,
            "teacher_num_steps": 64,
            "guidance_scale": 1.0,
            "class_accuracy": False,
        },
        "grid": {"num_samples": 36, "num_columns": 6},
    },
}


def get_config(name_or_path):
    """A deep copy of preset `name_or_path`, or the config in that JSON file.

    A file may hold `"base": "<preset or file>"` and only the keys that differ from it
    (merged recursively); relative base paths are relative to the file.
    """
    if name_or_path in CONFIGS:
        return copy.deepcopy(CONFIGS[name_or_path])
    if not os.path.isfile(name_or_path):
        raise ValueError(
            f"Unknown config {name_or_path!r}: not a preset ({', '.join(CONFIGS)}) nor a JSON "
            "file."
        )
    with open(name_or_path) as f:
        try:
            config = json.load(f)
        except ValueError as error:
            raise ValueError(f"Config file {name_or_path!r} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise TypeError(f"Config file {name_or_path!r} must hold a JSON object, not "
                        f"{type(config).__name__}.")
    base = config.pop("base", None)
    if base is None:
        return config
    if base not in CONFIGS and not os.path.isabs(base):
        base = os.path.join(os.path.dirname(os.path.abspath(name_or_path)), base)
    return merge(get_config(base), config)


def merge(base, changes, prefix=""):
    """`base` updated recursively by `changes`; keys must exist in `base` (typo guard)."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        path = f"{prefix}{key}"
        if key not in merged:
            raise ValueError(_unknown_key_message(path, merged))
        both_dicts = isinstance(value, dict) and isinstance(merged[key], dict)
        if both_dicts and path in OPEN_SECTIONS:
            merged[key] = {**merged[key], **value}  # any constructor argument may be added
        elif both_dicts:
            merged[key] = merge(merged[key], value, prefix=f"{path}.")
        else:
            merged[key] = value
    return merged


def apply_overrides(config, overrides):
    """`config` with `"section.key=value"` overrides; values are JSON (`8`, `null`,
    `[1, 2]`, `true`), anything else a string."""
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key:
            raise ValueError(
                f"Override {override!r} is not KEY=VALUE, e.g. distill.steps=100 or "
                "model.uvit.base_channels=64."
            )
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        config = set_value(config, key.strip(), value)
    return config


def set_value(config, key, value):
    """`config` with the dotted `key` set to `value` (a copy)."""
    changes = value
    for part in reversed(key.split(".")):
        changes = {part: changes}
    return merge(config, changes)


def _unknown_key_message(path, section):
    parent = path.rpartition(".")[0]
    where = f"'{parent}'" if parent else "the top level"
    return (
        f"Unknown config key {path!r}; the keys of {where} are {sorted(section)}. See "
        "`keras-mm train-teacher --help` for what each one means."
    )


def check_config(config):
    """Raise a ValueError naming any key of `CONFIG_KEYS` that `config` lacks."""
    missing = [key for key in CONFIG_KEYS if _lookup(config, key) is _MISSING
               and not _optional(config, key)]
    if missing:
        raise ValueError(
            f"The config lacks {missing}. Start a config file with "
            '"base": "<preset>" to inherit them.'
        )


_MISSING = object()


def _lookup(config, key):
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _optional(config, key):
    """Keys that only one data source has."""
    source = _lookup(config, "data.source")
    tfds_or_captions = ("data.name", "data.split", "data.data_dir")
    tfds_only = ("data.random_flip", "data.shuffle_buffer")
    caption_only = ("data.text_encoder", "data.sequence_length", "data.num_examples",
                    "data.image_feature", "data.caption_feature")
    return (
        (key in tfds_or_captions and source not in ("tfds", "captions"))
        or (key in tfds_only and source != "tfds")
        or (key in caption_only and source != "captions")
    )


def describe_keys(sections=None):
    """Lines documenting the config keys (of `sections` only, when given) for `--help`."""
    lines = []
    for key, text in CONFIG_KEYS.items():
        if sections is None or key.split(".")[0] in sections:
            lines.append(textwrap.fill(text, width=92, initial_indent=f"  {key:<31} ",
                                       subsequent_indent=" " * 34))
    return "\n".join(lines)
