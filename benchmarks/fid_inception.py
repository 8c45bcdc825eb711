"""Time to featurise 64x64 images with FIDInceptionFeatures (the FID Inception network), per backend.

Each image is resized to 299x299 as pytorch-fid does and run through the full Inception graph,
so the time per image hardly depends on the input size. The network gets random weights (the
time does not depend on them; pytorch-fid's file is not needed). One warm-up batch compiles
the network first; the timed images are featurised in batches of `--batch-size`, and the
time for 10k images is extrapolated from them.

    python benchmarks/fid_inception.py [--images 512] [--batch-size 64]   # every backend
    KERAS_BACKEND=jax python benchmarks/fid_inception.py --single          # one backend
"""

import argparse
import os
import sys
import time


def measure(num_images, batch_size):
    import keras
    import numpy as np

    from keras_mm.metrics.extractors.fid_inception import FIDInceptionFeatures

    extractor = FIDInceptionFeatures(weights=None, batch_size=batch_size)
    rng = np.random.default_rng(0)
    for variable in extractor.model.weights:
        value = rng.normal(0.0, 0.05, variable.shape)
        if "variance" in variable.path:
            value = np.abs(value) + 1.0
        variable.assign(value.astype("float32"))
    images = rng.integers(0, 256, (num_images, 64, 64, 3), dtype="uint8")
    extractor(images[:batch_size])  # compile
    start = time.perf_counter()
    features = extractor(images)
    seconds = time.perf_counter() - start
    assert features.shape == (num_images, 2048) and np.all(np.isfinite(features))
    minutes_10k = seconds / num_images * 10_000 / 60
    print(f"| {keras.backend.backend()} | {num_images} | {batch_size} | {seconds:.1f} | "
          f"{num_images / seconds:.2f} | {minutes_10k:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--single", action="store_true", help="only the current backend")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.single:
        measure(args.images, args.batch_size)
        return
    from benchmarks._common import run_per_backend

    header = ["| backend | images | batch | seconds | images/s | 10k images, minutes |",
              "|---|---|---|---|---|---|"]
    print("\n".join(header + run_per_backend(
        __file__, ["--images", str(args.images), "--batch-size", str(args.batch_size)])))


if __name__ == "__main__":
    main()
