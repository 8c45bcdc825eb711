"""The named run configs (`keras-mm --config NAME`). They carry the paper's values where it
gives them (Salimans et al. 2024, Appendix B: batch 2048, 200k distillation steps, FID every
5,000 steps keeping the best, Adam with beta1 = 0, beta2 = 0.99, eps = 1e-12, 1,000 warmup
steps then linear decay to zero, gradient clipping at norm 1, no EMA, weight decay or
dropout) and say where they do not. Networks are named UViT presets
(`keras_mm.models.uvit_presets`); image shape and class count are stated in `data` only.
"""

import copy

from keras_mm.configs.sections import PAPER_ADAM

# Shared by the class-conditional TFDS presets: Appendix B's distillation.
PAPER_DISTILL = {
    "num_steps": 8,
    "method": "alternating",
    "lora_rank": None,
    "remat": False,
    "time_sampler": "edm",
    "weighting": "auto",
    "conditional_sampling": True,
    "teacher_guidance_scale": 0.0,
    "clip_teacher": False,
    "teacher_gradient_ema": 0.99,
    "subtract_data_gradient": True,
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

# FID on pytorch-fid's Inception network, as the paper's tables (see eval.fid_inception_weights).
PAPER_EVAL = {
    "feature_extractor": "fid_inception",
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
            "path": None,
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


def _sd3_config(description, preset, image_size, num_examples, teacher_num_steps,
                eval_batch_size, distill):
    """A config of an SD3 teacher (model.network "sd3"), distilled data-free: no teacher
    training, no FID or grids during distillation (the images need the VAE decoder)."""
    return {
        "description": description,
        "data": {"source": "prompts", "path": None, "image_shape": [image_size, image_size, 3],
                 "num_classes": None, "num_examples": num_examples},
        "model": {"network": "sd3", "sd3_preset": preset, "uvit_preset": None, "uvit": {},
                  "prediction_type": "v", "loss_weighting": "v", "condition_dropout": 0.0},
        "distill": {**copy.deepcopy(PAPER_DISTILL), "sample_every": 0, "fid_every": 0,
                    **distill},
        "eval": {**copy.deepcopy(PAPER_EVAL), "teacher_num_steps": teacher_num_steps,
                 "batch_size": eval_batch_size, "guidance_scale": 0.0,
                 "class_accuracy": False},
        "grid": {"num_samples": 16, "num_columns": 4},
    }


CONFIGS = {
    # `make demo`'s run on CPU in minutes: scikit-learn's 1,797 digits, 0.3M-parameter UViT.
    "digits": {
        "description": "bundled 8x8 digits on CPU in minutes (the `make demo` settings)",
        "data": {
            "source": "digits",
            "path": None,
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
    # Not in the paper: a ~35M-parameter UViT (DDPM's CIFAR-10 size). Distillation as for
    # ImageNet.
    "cifar10": _tfds_config(
        "class-conditional CIFAR-10 32x32 from TFDS, the paper's distillation settings",
        name="cifar10",
        split="train",
        image_size=32,
        uvit_preset="uvit_cifar10",
        uvit={},
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
            "uvit_preset": "uvit_text2image",
            "uvit": {},
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
    # (e.g. t5_base_multi, text_dim 768, the preset's) or a tiny local one as
    # examples/text_to_image.py writes (hidden_dim 64); set model.uvit.text_dim to its
    # hidden_dim.
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
            "uvit_preset": "uvit_shapes_toy",
            "uvit": {},
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
    # KerasHub's Stable Diffusion 3 medium (MMDiT, 2B parameters) as the teacher, distilled
    # data-free to k = 8 steps with the guided teacher (see keras_mm.training.sd3). The
    # paper's text-to-image run (section 5.5): 512x512, batch 512, 50,000 steps, Appendix B's
    # Adam; SD3's own guidance 7.0 is keras_mm's w = 6 (x = (1 + w) x_c - w x_u). SD3's
    # native 1024x1024: --set data.image_shape=[1024,1024,3].
    "sd3_medium": _sd3_config(
        "KerasHub's Stable Diffusion 3 medium distilled to 8 steps (data-free: the guided "
        "teacher's samples of data.path's prompts); weights from Kaggle",
        preset="stable_diffusion_3_medium", image_size=512, num_examples=10_000,
        teacher_num_steps=28, eval_batch_size=16,
        distill={"batch_size": 512, "steps": 50_000, "teacher_guidance_scale": 6.0}),
    # The same chain on a randomly initialised tiny backbone (small MMDiT, VAE, CLIP-L/G, no
    # T5; keras_mm.models.sd3.tiny_sd3_backbone): runs on a CPU in a minute, for tests.
    "sd3_tiny": _sd3_config(
        "a randomly initialised tiny Stable Diffusion 3 (32x32) through the SD3 chain on CPU",
        preset=None, image_size=32, num_examples=8, teacher_num_steps=4, eval_batch_size=8,
        distill={"num_steps": 2, "batch_size": 4, "steps": 4, "learning_rate": 1e-3,
                 "warmup_steps": 1, "checkpoint_every": 2, "teacher_guidance_scale": 1.5}),
}
