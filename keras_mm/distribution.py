"""Sharding the UViT's weights across devices with `keras.distribution.ModelParallel`.

Data parallelism needs nothing from keras_mm: set `keras.distribution.DataParallel()` before
building the models and `fit` splits every batch across the devices (JAX backend). For the
~400M-parameter presets, where three networks and two Adam states (the alternating method)
no longer fit one accelerator, `uvit_layout_map` shards the transformer and ResBlock weights
along a "model" mesh axis. See docs/multi_device.md.
"""

import keras

# Megatron-style: the first matmul of each pair is split by output features, the second by
# input features, so each pair needs one all-reduce. Optimizer slots inherit these layouts.
_UVIT_LAYOUTS = {
    r".*transformer_\d+/(self|cross)_attention/(query|key|value)/kernel": (None, "model"),
    r".*transformer_\d+/(self|cross)_attention/(query|key|value)/bias": ("model",),
    r".*transformer_\d+/(self|cross)_attention/output/kernel": ("model", None),
    r".*transformer_\d+/mlp_in/kernel": (None, "model"),
    r".*transformer_\d+/mlp_in/bias": ("model",),
    r".*transformer_\d+/mlp_out/kernel": ("model", None),
    r".*transformer_\d+/modulation/kernel": (None, "model"),
    r".*transformer_\d+/modulation/bias": ("model",),
    r".*(down|up)_\d+_\d+/conv_in/kernel": (None, None, None, "model"),
    r".*(down|up)_\d+_\d+/conv_in/bias": ("model",),
    r".*(down|up)_\d+_\d+/conv_out/kernel": (None, None, "model", None),
    r".*(down|up)_\d+_\d+/film/kernel": (None, "model"),
    r".*(down|up)_\d+_\d+/film/bias": ("model",),
}


def uvit_layout_map(device_mesh, model_axis="model"):
    """A `keras.distribution.LayoutMap` sharding a `keras_mm.UViT` along `model_axis`.

    The map matches variable paths by regex, so it covers the teacher, the generator and the
    auxiliary copy of a `MomentMatchingDistiller` alike, and their Adam slots. Every sharded
    dimension (channel widths, transformer width, MLP width) must be divisible by the size of
    `model_axis`; the UViT presets' widths are multiples of 128. Unmatched weights (norms,
    embeddings, the stem and output convolutions) are replicated.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with a `model_axis` axis (and usually a
            "batch" axis for data parallelism).
        model_axis: the mesh axis to shard weights along.

    Returns:
        A `keras.distribution.LayoutMap` for `keras.distribution.ModelParallel`.

    Example:
    ```python
    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((len(devices) // 2, 2), ["batch", "model"], devices)
    keras.distribution.set_distribution(keras.distribution.ModelParallel(
        layout_map=keras_mm.distribution.uvit_layout_map(mesh), batch_dim_name="batch"))
    teacher = keras_mm.DiffusionModel(keras_mm.UViT.from_preset("imagenet64_small"))
    ```

    References:
        Shoeybi et al. 2019 (Megatron-LM) §3 for the split of the MLP and attention matmuls.
    """
    if model_axis not in device_mesh.axis_names:
        raise ValueError(
            f"The device mesh has axes {list(device_mesh.axis_names)}, not {model_axis!r}. "
            f"Build it with e.g. DeviceMesh((data, model), ['batch', {model_axis!r}], devices) "
            "or pass model_axis=<one of its axes>."
        )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in _UVIT_LAYOUTS.items():
        layout_map[pattern] = tuple(model_axis if axis == "model" else axis for axis in axes)
    return layout_map
