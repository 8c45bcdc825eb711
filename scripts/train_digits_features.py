"""Trains the digits classifier behind `keras_mm.metrics.DigitsFeatures` and ships its weights.

What: a two-convolution classifier of scikit-learn's 8x8 digits, trained on a stratified
80% split with one-pixel shift augmentation, evaluated on the held-out 20%. Its 64-d
penultimate layer is the feature space of the CPU Fréchet distance.
How long: about 10 s on 2 CPU cores. Any backend; the shipped weights were made with JAX.

    KERAS_BACKEND=jax python scripts/train_digits_features.py

Writes keras_mm/assets/digits_classifier.npz (about 150 KB) and prints the held-out accuracy.
"""

import argparse
import os

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from keras_mm.metrics.extractors.digits_features import (
    DIGITS_WEIGHTS_PATH,
    DigitsFeatures,
    build_digits_classifier,
    save_digits_classifier_weights,
)

# Hyperparameters.
SEED = 0
HELDOUT_FRACTION = 0.2
NUM_SHIFTED_COPIES = 4  # augmented copies of the training set, each shifted by <= 1 pixel
EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
MIN_HELDOUT_ACCURACY = 0.97


def shift_by_one_pixel(images, rng):
    """Shifts each image by -1, 0 or +1 pixels in each direction, filling with background."""
    shifted = np.full_like(images, -1.0)
    height, width = images.shape[1:3]
    for i, (dy, dx) in enumerate(rng.integers(-1, 2, size=(len(images), 2))):
        source = images[i, max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
        shifted[
            i, max(0, dy) : max(0, dy) + source.shape[0], max(0, dx) : max(0, dx) + source.shape[1]
        ] = source
    return shifted


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DIGITS_WEIGHTS_PATH, help="where to write the .npz")
    args = parser.parse_args()

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    digits = load_digits()
    images = (digits.images / 8.0 - 1.0).astype("float32")[..., None]
    x_train, x_heldout, y_train, y_heldout = train_test_split(
        images,
        digits.target,
        test_size=HELDOUT_FRACTION,
        stratify=digits.target,
        random_state=SEED,
    )
    x_augmented = np.concatenate(
        [x_train] + [shift_by_one_pixel(x_train, rng) for _ in range(NUM_SHIFTED_COPIES)]
    )
    y_augmented = np.concatenate([y_train] * (NUM_SHIFTED_COPIES + 1))

    model = build_digits_classifier()
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_augmented, y_augmented, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=2)
    _, heldout_accuracy = model.evaluate(x_heldout, y_heldout, verbose=0)
    print(
        f"Held-out accuracy: {heldout_accuracy:.4f} "
        f"({len(x_heldout)} images, trained on {len(x_train)})"
    )
    if heldout_accuracy < MIN_HELDOUT_ACCURACY:
        raise SystemExit(
            f"Held-out accuracy {heldout_accuracy:.4f} < {MIN_HELDOUT_ACCURACY}; not saving."
        )

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_digits_classifier_weights(
        model,
        args.out,
        heldout_accuracy=float(heldout_accuracy),
        num_heldout=len(x_heldout),
        seed=SEED,
        backend=keras.backend.backend(),
        keras_version=keras.__version__,
    )
    # Check the shipped file by the path users take: rebuild, load, classify.
    reloaded = DigitsFeatures(weights=args.out)
    reloaded_accuracy = float(np.mean(reloaded.classify(x_heldout) == y_heldout))
    print(f"Reloaded DigitsFeatures accuracy: {reloaded_accuracy:.4f}")
    print(f"Wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
