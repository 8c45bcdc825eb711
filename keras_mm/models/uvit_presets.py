"""Named UViT configurations, built by `UViT.from_preset(name, **overrides)`."""

_IMAGENET64_SMALL = {
    "image_shape": (64, 64, 3),
    "base_channels": 128,
    "channel_multipliers": (1, 2, 8),
    "num_res_blocks": (2, 2, 0),
    "transformer_depth": 24,
    "num_heads": 16,
    "num_classes": 1000,
    "embedding_dim": 1024,
    "dropout": 0.1,
    "dropout_from_level": 1,
}


UVIT_PRESETS = {
    # For unit tests: a few thousand parameters, builds and runs in well under a second.
    "uvit_tiny": {
        "image_shape": (8, 8, 1),
        "base_channels": 4,
        "channel_multipliers": (1, 2),
        "num_res_blocks": 1,
        "transformer_depth": 1,
        "num_heads": 2,
        "num_classes": 10,
        "embedding_dim": 8,
        "mlp_ratio": 2,
        "norm_groups": 2,
    },
    # The bundled 8x8 sklearn digits on CPU: ~0.3M parameters, most of them in the
    # transformer at 4x4 (16 tokens), where a parameter costs the least compute.
    "uvit_digits": {
        "image_shape": (8, 8, 1),
        "base_channels": 16,
        "channel_multipliers": (1, 4),
        "num_res_blocks": (1, 0),
        "transformer_depth": 3,
        "num_heads": 4,
        "num_classes": 10,
        "embedding_dim": 128,
        "dropout": 0.1,
        "dropout_from_level": 1,
        "norm_groups": 8,
    },
    # Class-conditional ImageNet 64x64 at the paper's scale (~400M parameters, §6): conv
    # ResBlocks at 64 and 32, the transformer at 16x16 (simple diffusion's "small" U-ViT
    # shape; its exact widths are not in the paper, these match the parameter count).
    "imagenet64_small": _IMAGENET64_SMALL,
    # The same network on 128x128 images cut into 2x2 patches first (simple diffusion's
    # downsampling for higher resolutions), so it runs at the 64x64 net's cost.
    "imagenet128_small": {
        **_IMAGENET64_SMALL,
        "image_shape": (128, 128, 3),
        "patch_size": 2,
    },
    # CIFAR-10 32x32 (not in the paper): ~35M parameters, DDPM's CIFAR-10 size, three
    # levels at 32/16/8 with the transformer on the 8x8 tokens.
    "uvit_cifar10": {
        "image_shape": (32, 32, 3),
        "base_channels": 128,
        "channel_multipliers": (1, 2, 4),
        "num_res_blocks": (2, 2, 0),
        "transformer_depth": 8,
        "num_heads": 8,
        "num_classes": 10,
        "embedding_dim": 512,
        "dropout": 0.1,
        "dropout_from_level": 0,
    },
    # Section 5.5's 512x512 pixel-space text to image, cross-attending to T5-XXL's 4096-wide
    # embeddings: 8x8 patches first, then the 64x64 net's levels.
    "uvit_text2image": {
        "image_shape": (512, 512, 3),
        "base_channels": 128,
        "channel_multipliers": (1, 2, 8),
        "num_res_blocks": (2, 2, 0),
        "transformer_depth": 24,
        "num_heads": 16,
        "text_dim": 4096,
        "embedding_dim": 1024,
        "patch_size": 8,
    },
    # The 8x8 captioned shapes (examples/text_to_image.py, the text2image_toy config): ~90k
    # parameters; text_dim is t5_base_multi's width (set it to your encoder's).
    "uvit_shapes_toy": {
        "image_shape": (8, 8, 3),
        "base_channels": 16,
        "channel_multipliers": (1, 2),
        "num_res_blocks": (1, 0),
        "transformer_depth": 2,
        "num_heads": 2,
        "num_classes": None,
        "text_dim": 768,
        "embedding_dim": 64,
        "norm_groups": 4,
    },
}
