"""Every layer of keras_mm/models/layers.py through the shared test base (tests/testing.py)."""

import math

import numpy as np
import pytest

from keras_mm.models.layers import (
    Attention,
    FourierFeatures,
    ResBlock,
    TextConditioning,
    TransformerBlock,
)
from tests.testing import run_layer_test, to_numpy

BATCH = 2
RNG = np.random.default_rng(0)
IMAGES = RNG.normal(size=(BATCH, 4, 4, 3)).astype("float32")
EMBEDDING = RNG.normal(size=(BATCH, 8)).astype("float32")
TOKENS = RNG.normal(size=(BATCH, 5, 8)).astype("float32")
TEXT = RNG.normal(size=(BATCH, 3, 6)).astype("float32")
TEXT_MASK = np.array([[True, True, False], [False, False, False]])  # row 1: the null caption


def test_fourier_features(tmp_path):
    logsnr = np.array([0.0, 3.0], "float32")
    _, features = run_layer_test(
        FourierFeatures, {"num_frequencies": 4, "min_frequency": 0.5, "max_frequency": 4.0},
        logsnr, (BATCH, 8), tmp_path=tmp_path, expected_num_trainable_weights=0,
    )  # fmt: skip
    # Closed form: sin and cos of logsnr times geometrically spaced frequencies.
    frequencies = np.geomspace(0.5, 4.0, 4)
    angles = logsnr[:, None] * frequencies
    np.testing.assert_allclose(
        features, np.concatenate([np.sin(angles), np.cos(angles)], -1), atol=1e-5
    )
    with pytest.raises(ValueError, match="num_frequencies"):
        FourierFeatures(0)


def test_res_block(tmp_path):
    # 3 -> 6 channels: the skip branch is a 1x1 convolution (UViT's tests cover 6 -> 6).
    layer, _ = run_layer_test(
        ResBlock, {"channels": 6, "norm_groups": 3},
        {"inputs": IMAGES, "embedding": EMBEDDING}, (BATCH, 4, 4, 6),
        tmp_path=tmp_path, expected_num_trainable_weights=10,
    )  # fmt: skip
    assert layer.skip is not None and layer.norm_in.groups == 3 and layer.norm_out.groups == 3


def test_cross_attention_with_a_mask(tmp_path):
    # Self-attention runs inside every TransformerBlock (here and in UViT's tests).
    context_mask = np.array([[True, False, True], [True, True, True]])
    layer, out = run_layer_test(
        Attention, {"num_heads": 2},
        {"inputs": TOKENS, "context": TEXT, "context_mask": context_mask}, (BATCH, 5, 8),
        tmp_path=tmp_path, expected_num_trainable_weights=8,
    )  # fmt: skip
    # A masked-out key does not change the output; an attended one does.
    changed = TEXT.copy()
    changed[:, 1] += 10.0
    moved = to_numpy(layer(TOKENS, changed, context_mask))
    np.testing.assert_allclose(moved[0], out[0], atol=1e-5)
    assert np.abs(moved[1] - out[1]).max() > 1e-3
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        Attention(3)(TOKENS)


def test_transformer_block_with_cross_attention(tmp_path):
    # Row 1's caption is masked out but for its first token.
    text_mask = np.array([[True, True, False], [True, False, False]])
    layer, _ = run_layer_test(
        TransformerBlock, {"num_heads": 2, "mlp_ratio": 2, "cross_attention": True},
        {"inputs": TOKENS, "embedding": EMBEDDING, "context": TEXT, "context_mask": text_mask},
        (BATCH, 5, 8), tmp_path=tmp_path, expected_num_trainable_weights=22,
    )  # fmt: skip
    assert layer.num_norms == 3
    with pytest.raises(ValueError, match="cross_attention=True but got no `context`"):
        TransformerBlock(2, cross_attention=True)(TOKENS, EMBEDDING)


def test_text_conditioning(tmp_path):
    layer, (context, context_mask, pooled) = run_layer_test(
        TextConditioning, {"width": 8, "embedding_dim": 4},
        {"text_embeddings": TEXT, "text_mask": TEXT_MASK},
        ((BATCH, 4, 8), (BATCH, 4), (BATCH, 4)), tmp_path=tmp_path,
        expected_num_trainable_weights=8,
    )  # fmt: skip
    # The null token is always attendable; the null caption's pooled embedding is learned.
    np.testing.assert_array_equal(context_mask, np.concatenate([[[1], [1]], TEXT_MASK], 1))
    np.testing.assert_allclose(pooled[1], to_numpy(layer.null_pooled), atol=1e-6)
    np.testing.assert_allclose(context[:, 0], np.tile(to_numpy(layer.null_token), (2, 1)))
    assert not math.isclose(float(np.abs(pooled[0] - pooled[1]).max()), 0.0)
