"""The FID Inception network (the 2015 TensorFlow graph, as pytorch-fid ships it) in Keras."""

import os

import keras
import numpy as np
from keras import ops

from keras_mm.metrics.feature_extractor import FeatureExtractor

FID_INCEPTION_NAME = "fid_inception"
FID_INCEPTION_IMAGE_SIZE = 299
FID_INCEPTION_NUM_CLASSES = 1008
PYTORCH_FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    + PYTORCH_FID_WEIGHTS_FILE
)
DEFAULT_WEIGHTS_PATH = os.path.join(
    os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")),
    "keras_mm",
    "fid_inception.weights.h5",
)
# The batch-norm epsilon of the TF graph (torchvision's BasicConv2d uses the same).
BATCH_NORM_EPSILON = 1e-3


def missing_weights_message(path):
    """The one line shown when the converted FID Inception weights are not at `path`."""
    return (
        f"FID Inception weights not found at {path!r}: download pytorch-fid's "
        f"{PYTORCH_FID_WEIGHTS_FILE} ({PYTORCH_FID_WEIGHTS_URL}) and convert it once with "
        "`keras_mm.metrics.FIDInceptionFeatures.from_pytorch_fid(path_to_pth)`, which writes "
        f"{DEFAULT_WEIGHTS_PATH!r} (or pass `weights=` a converted `.weights.h5`)."
    )


def bilinear_resize_matrix(input_size, output_size):
    """[output_size, input_size] matrix of PyTorch's bilinear resize along one axis.

    Reproduces `torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
    antialias=False)` with an output size given: output pixel `i` samples the input at
    `(i + 0.5) * input_size / output_size - 0.5`, clamped below at 0, between its two
    nearest input pixels. No antialiasing filter when shrinking.
    """
    # In float32, as torch computes the source coordinates for float32 images.
    scale = np.float32(input_size) / np.float32(output_size)
    centers = np.arange(output_size, dtype="float32") + np.float32(0.5)
    source = np.maximum(scale * centers - np.float32(0.5), np.float32(0.0))
    lower = np.floor(source).astype("int64")
    upper = np.minimum(lower + 1, input_size - 1)
    upper_weight = (source - lower.astype("float32")).astype("float64")
    matrix = np.zeros((output_size, input_size))
    np.add.at(matrix, (np.arange(output_size), lower), 1.0 - upper_weight)
    np.add.at(matrix, (np.arange(output_size), upper), upper_weight)
    return matrix


def resize_like_pytorch_fid(images, size=FID_INCEPTION_IMAGE_SIZE):
    """Resizes a float batch [B, H, W, C] to [B, size, size, C] as pytorch-fid does."""
    rows = bilinear_resize_matrix(images.shape[1], size).astype("float32")
    columns = bilinear_resize_matrix(images.shape[2], size).astype("float32")
    return np.einsum("ih,bhwc,jw->bijc", rows, images, columns, optimize=True)


@keras.saving.register_keras_serializable(package="keras_mm")
class FIDInceptionLogits(keras.layers.Layer):
    """The 1008-way classifier of the FID Inception graph, with or without its bias.

    Holds the kernel and the bias either way, so one weights file serves both outputs.

    Args:
        units: number of classes (1008 in the 2015 graph: 1000 ImageNet classes and 8
            unused ones).
        use_bias_in_output: add the bias. `False` (the default) gives the logits of the
            original Inception Score code (Salimans et al.'s `inception_score.py` multiplies
            pool3 by the softmax weights only), which torch-fidelity and torchmetrics call
            `"logits_unbiased"`; `True` gives the graph's own logits.
    """

    def __init__(self, units=FID_INCEPTION_NUM_CLASSES, use_bias_in_output=False, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.use_bias_in_output = use_bias_in_output

    def build(self, input_shape):
        self.kernel = self.add_weight((input_shape[-1], self.units), initializer="zeros",
                                      name="kernel")
        self.bias = self.add_weight((self.units,), initializer="zeros", name="bias")

    def call(self, features):
        logits = ops.matmul(features, self.kernel)
        return logits + self.bias if self.use_bias_in_output else logits

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "use_bias_in_output": self.use_bias_in_output}


def _conv_bn(x, filters, kernel_size, name, strides=1, padding="valid"):
    """torchvision's BasicConv2d: convolution without bias, batch norm, ReLU."""
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                            use_bias=False, data_format="channels_last",
                            kernel_initializer="zeros", name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _same(x, filters, kernel_size, name):
    return _conv_bn(x, filters, kernel_size, name, padding="same")


def _average_pool(x, name):
    # Padding excluded from the average, as TF's SAME pooling (pytorch-fid's "patch").
    return keras.layers.AveragePooling2D(3, 1, padding="same", name=f"{name}_avg_pool")(x)


def _concat(branches, name):
    return keras.layers.Concatenate(axis=-1, name=name)(branches)


def _block_a(x, pool_features, name):
    """FIDInceptionA (Mixed_5b..5d)."""
    branch1x1 = _conv_bn(x, 64, 1, f"{name}_branch1x1")
    branch5x5 = _conv_bn(x, 48, 1, f"{name}_branch5x5_1")
    branch5x5 = _same(branch5x5, 64, 5, f"{name}_branch5x5_2")
    branch3x3dbl = _conv_bn(x, 64, 1, f"{name}_branch3x3dbl_1")
    branch3x3dbl = _same(branch3x3dbl, 96, 3, f"{name}_branch3x3dbl_2")
    branch3x3dbl = _same(branch3x3dbl, 96, 3, f"{name}_branch3x3dbl_3")
    branch_pool = _conv_bn(_average_pool(x, name), pool_features, 1, f"{name}_branch_pool")
    return _concat([branch1x1, branch5x5, branch3x3dbl, branch_pool], name)


def _block_b(x, name):
    """InceptionB (Mixed_6a), the grid reduction 35 -> 17."""
    branch3x3 = _conv_bn(x, 384, 3, f"{name}_branch3x3", strides=2)
    branch3x3dbl = _conv_bn(x, 64, 1, f"{name}_branch3x3dbl_1")
    branch3x3dbl = _same(branch3x3dbl, 96, 3, f"{name}_branch3x3dbl_2")
    branch3x3dbl = _conv_bn(branch3x3dbl, 96, 3, f"{name}_branch3x3dbl_3", strides=2)
    branch_pool = keras.layers.MaxPooling2D(3, 2, name=f"{name}_max_pool")(x)
    return _concat([branch3x3, branch3x3dbl, branch_pool], name)


def _block_c(x, channels_7x7, name):
    """FIDInceptionC (Mixed_6b..6e), factorized 7x7 convolutions."""
    c7 = channels_7x7
    branch1x1 = _conv_bn(x, 192, 1, f"{name}_branch1x1")
    branch7x7 = _conv_bn(x, c7, 1, f"{name}_branch7x7_1")
    branch7x7 = _same(branch7x7, c7, (1, 7), f"{name}_branch7x7_2")
    branch7x7 = _same(branch7x7, 192, (7, 1), f"{name}_branch7x7_3")
    branch7x7dbl = _conv_bn(x, c7, 1, f"{name}_branch7x7dbl_1")
    for index, (filters, kernel) in enumerate(
        [(c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))], start=2
    ):
        branch7x7dbl = _same(branch7x7dbl, filters, kernel, f"{name}_branch7x7dbl_{index}")
    branch_pool = _conv_bn(_average_pool(x, name), 192, 1, f"{name}_branch_pool")
    return _concat([branch1x1, branch7x7, branch7x7dbl, branch_pool], name)


def _block_d(x, name):
    """InceptionD (Mixed_7a), the grid reduction 17 -> 8."""
    branch3x3 = _conv_bn(x, 192, 1, f"{name}_branch3x3_1")
    branch3x3 = _conv_bn(branch3x3, 320, 3, f"{name}_branch3x3_2", strides=2)
    branch7x7x3 = _conv_bn(x, 192, 1, f"{name}_branch7x7x3_1")
    branch7x7x3 = _same(branch7x7x3, 192, (1, 7), f"{name}_branch7x7x3_2")
    branch7x7x3 = _same(branch7x7x3, 192, (7, 1), f"{name}_branch7x7x3_3")
    branch7x7x3 = _conv_bn(branch7x7x3, 192, 3, f"{name}_branch7x7x3_4", strides=2)
    branch_pool = keras.layers.MaxPooling2D(3, 2, name=f"{name}_max_pool")(x)
    return _concat([branch3x3, branch7x7x3, branch_pool], name)


def _block_e(x, name, max_pool):
    """FIDInceptionE_1 (Mixed_7b, average pool) and FIDInceptionE_2 (Mixed_7c, max pool)."""
    branch1x1 = _conv_bn(x, 320, 1, f"{name}_branch1x1")
    branch3x3 = _conv_bn(x, 384, 1, f"{name}_branch3x3_1")
    branch3x3 = _concat([_same(branch3x3, 384, (1, 3), f"{name}_branch3x3_2a"),
                         _same(branch3x3, 384, (3, 1), f"{name}_branch3x3_2b")],
                        f"{name}_branch3x3")
    branch3x3dbl = _conv_bn(x, 448, 1, f"{name}_branch3x3dbl_1")
    branch3x3dbl = _same(branch3x3dbl, 384, 3, f"{name}_branch3x3dbl_2")
    branch3x3dbl = _concat([_same(branch3x3dbl, 384, (1, 3), f"{name}_branch3x3dbl_3a"),
                            _same(branch3x3dbl, 384, (3, 1), f"{name}_branch3x3dbl_3b")],
                           f"{name}_branch3x3dbl")
    if max_pool:
        # The 2015 graph max-pools here (pytorch-fid's FIDInceptionE_2 keeps that quirk).
        pooled = keras.layers.MaxPooling2D(3, 1, padding="same", name=f"{name}_max_pool")(x)
    else:
        pooled = _average_pool(x, name)
    branch_pool = _conv_bn(pooled, 192, 1, f"{name}_branch_pool")
    return _concat([branch1x1, branch3x3, branch3x3dbl, branch_pool], name)


def build_fid_inception(use_bias_in_output=False):
    """The FID Inception-v3 graph: images [B, 299, 299, 3] in [-1, 1] -> [pool3, logits].

    Layer names are pytorch-fid's module paths with `_` for `.` (e.g.
    `Mixed_5b_branch1x1_conv`), which is how `FIDInceptionFeatures.from_pytorch_fid` maps
    the `.pth` state dict onto it.

    Kernels start at zero (random initializers compile once per kernel shape on JAX, which
    made building take minutes on a loaded CPU): the network is meant to be loaded.

    Returns:
        A `keras.Model` with outputs `[pool3 [B, 2048], logits [B, 1008]]`.
    """
    size = FID_INCEPTION_IMAGE_SIZE
    inputs = keras.Input((size, size, 3), name="images")
    x = _conv_bn(inputs, 32, 3, "Conv2d_1a_3x3", strides=2)
    x = _conv_bn(x, 32, 3, "Conv2d_2a_3x3")
    x = _same(x, 64, 3, "Conv2d_2b_3x3")
    x = keras.layers.MaxPooling2D(3, 2, name="maxpool1")(x)
    x = _conv_bn(x, 80, 1, "Conv2d_3b_1x1")
    x = _conv_bn(x, 192, 3, "Conv2d_4a_3x3")
    x = keras.layers.MaxPooling2D(3, 2, name="maxpool2")(x)
    x = _block_a(x, 32, "Mixed_5b")
    x = _block_a(x, 64, "Mixed_5c")
    x = _block_a(x, 64, "Mixed_5d")
    x = _block_b(x, "Mixed_6a")
    for name, channels_7x7 in [("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                               ("Mixed_6e", 192)]:
        x = _block_c(x, channels_7x7, name)
    x = _block_d(x, "Mixed_7a")
    x = _block_e(x, "Mixed_7b", max_pool=False)
    x = _block_e(x, "Mixed_7c", max_pool=True)
    pool3 = keras.layers.GlobalAveragePooling2D(name="pool3")(x)
    logits = FIDInceptionLogits(use_bias_in_output=use_bias_in_output, name="fc")(pool3)
    return keras.Model(inputs, [pool3, logits], name="fid_inception")


class FIDInceptionFeatures(FeatureExtractor):
    """Pool3 features and 1008-way logits of the FID Inception network, as published FIDs use.

    The network is the 2015 TensorFlow Inception graph (`inception-2015-12-05`) on which FID
    (Heusel et al. 2017), IS and the paper's ImageNet tables are defined, rebuilt with Keras
    layers (every backend) with pytorch-fid's FID-specific blocks (`FIDInceptionA/C/E_1/E_2`:
    average pools that exclude padding, the max pool of the last block). Its weights are
    pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, converted once with
    `from_pytorch_fid` into a `.weights.h5` that later runs load. (clean-fid's
    `inception-2015-12-05.pt` holds the same graph as a TorchScript archive; this converter
    reads pytorch-fid's state dict only.)

    Input handling is pytorch-fid's: uint8 images in [0, 255] or floats in [-1, 1] (clipped
    to it), grayscale repeated to RGB, then each image is resized to 299x299 with bilinear
    interpolation as `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`
    computes it (no antialiasing), in float32, before the network. The resize is a fixed
    matrix product in numpy, so every backend resizes identically. As Parmar et al. (clean-fid)
    show, the resize and the uint8 quantization change FID by more than many reported gains:
    numbers agree with pytorch-fid's, not with clean-fid's (which resizes with PIL's
    antialiased bicubic filter), and papers' numbers are only comparable with the pipeline
    they used. Pass uint8 images (the PNGs you would save) to match a paper's protocol.

    Args:
        weights: path to a `.weights.h5` written by `from_pytorch_fid`; `"default"` for
            `DEFAULT_WEIGHTS_PATH` (`~/.keras/keras_mm/fid_inception.weights.h5`, where
            `from_pytorch_fid` writes by default); `None` for an unset network (zero kernels)
            that a converter fills.
        use_bias_in_logits: `False` (default) returns the logits without the classifier's
            bias, as the original Inception Score code, torch-fidelity and torchmetrics
            compute IS (softmax over all 1008 outputs); `True` returns the graph's logits.
        batch_size: images per forward pass.

    Example:

    ```python
    # Once, with torch installed and pytorch-fid's weights file downloaded:
    keras_mm.metrics.FIDInceptionFeatures.from_pytorch_fid(
        "pt_inception-2015-12-05-6726825d.pth"
    )  # writes ~/.keras/keras_mm/fid_inception.weights.h5
    # Every later run, on any backend:
    extractor = keras_mm.metrics.FIDInceptionFeatures()
    stats = keras_mm.metrics.FeatureStatistics.from_images(real_uint8_images, extractor)
    stats.save("imagenet64_fid_inception.npz")  # reference statistics, computed once
    score = keras_mm.metrics.InceptionScore(extractor)  # IS on the same network's logits
    ```

    References:
        Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision";
        Heusel et al. 2017 (FID); Salimans et al. 2016 (IS); Seitzer, pytorch-fid; Parmar
        et al. 2022, "On Aliased Resizing and Surprising Subtleties in GAN Evaluation".
    """

    def __init__(self, weights="default", use_bias_in_logits=False, batch_size=64):
        self.weights = weights
        self.use_bias_in_logits = use_bias_in_logits
        if weights == "default":
            weights = DEFAULT_WEIGHTS_PATH
        if weights is not None:
            weights = os.fspath(weights)
            if weights.endswith((".pth", ".pt")):
                raise ValueError(
                    f"{weights!r} is a PyTorch file; convert it once with "
                    "`FIDInceptionFeatures.from_pytorch_fid(path)` and pass the `.weights.h5` "
                    "it writes."
                )
            if not os.path.exists(weights):
                raise FileNotFoundError(missing_weights_message(weights))
        model = build_fid_inception(use_bias_in_output=use_bias_in_logits)
        if weights is not None:
            model.load_weights(weights)
        super().__init__(model, name=FID_INCEPTION_NAME, batch_size=batch_size)

    @classmethod
    def from_pytorch_fid(cls, path, save_path=DEFAULT_WEIGHTS_PATH, **kwargs):
        """Converts pytorch-fid's `.pth` state dict and returns the extractor.

        Reads the file with `torch.load` on CPU (so torch must be installed, once, where the
        conversion runs; without it this raises an `ImportError` saying so) and writes the
        Keras weights to `save_path`, which later runs load on any backend without torch.

        Args:
            path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (any state dict of
                pytorch-fid's `fid_inception_v3()` network).
            save_path: where to write the `.weights.h5`; `None` to not save.
            **kwargs: passed to the constructor (`use_bias_in_logits`, `batch_size`).

        Returns:
            A `FIDInceptionFeatures` holding the converted weights.
        """
        extractor = cls(weights=None, **kwargs)
        load_pytorch_fid_state_dict(extractor.model, read_pytorch_state_dict(path))
        if save_path is not None:
            save_path = os.fspath(save_path)
            os.makedirs(os.path.dirname(os.path.abspath(save_path)), exist_ok=True)
            extractor.model.save_weights(save_path)
            extractor.weights = save_path
        return extractor

    def save_weights(self, path):
        """Writes the network's weights to a `.weights.h5` file."""
        self.model.save_weights(path)

    def features_and_logits(self, images):
        """As `FeatureExtractor.features_and_logits`, with the last partial batch padded.

        Every batch then has one shape, so JAX and TensorFlow compile the network once.
        """
        images = self._check_images(images)
        count = len(images)
        padding = -count % self.batch_size if count > self.batch_size else 0
        if padding:
            images = np.concatenate([images, np.zeros_like(images[:padding])])
        features, logits = super().features_and_logits(images)
        return features[:count], logits[:count]

    def _check_images(self, images):
        images = ops.convert_to_numpy(images)
        if images.dtype == np.uint8:
            images = images.astype("float32") / 127.5 - 1.0
        return super()._check_images(images)

    def preprocess(self, images):
        images = self.rgb_in_range(images)
        size = FID_INCEPTION_IMAGE_SIZE
        if images.shape[1:3] != (size, size):
            images = resize_like_pytorch_fid(images, size)
        return images.astype("float32")


def read_pytorch_state_dict(path):
    """A `.pth` state dict as `{key: float32 numpy array}`, read with torch on CPU."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"Reading {os.fspath(path)!r} needs PyTorch (`pip install torch`, the CPU build is "
            "enough); convert once where torch is installed and copy the `.weights.h5` it "
            "writes."
        ) from None
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.detach().cpu().numpy() for key, value in state_dict.items()}


def load_pytorch_fid_state_dict(model, state_dict):
    """Sets `model` (from `build_fid_inception`) from pytorch-fid's Inception state dict.

    Module `Mixed_5b.branch1x1.conv` becomes layer `Mixed_5b_branch1x1_conv`: convolution
    kernels go from [out, in, h, w] to [h, w, in, out], batch norms take (weight, bias,
    running_mean, running_var) as (gamma, beta, moving_mean, moving_variance), and the
    classifier's [1008, 2048] weight is transposed. Every layer must be set exactly once.
    """
    modules = {}
    for key, value in state_dict.items():
        module, _, parameter = key.rpartition(".")
        if parameter == "num_batches_tracked" or module.startswith("AuxLogits"):
            continue
        modules.setdefault(module, {})[parameter] = np.asarray(value, "float32")
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    unknown = sorted({module.replace(".", "_") for module in modules} - set(layers))
    missing = sorted(set(layers) - {module.replace(".", "_") for module in modules})
    if unknown or missing:
        raise ValueError(
            f"The state dict is not pytorch-fid's FID Inception network: modules without a "
            f"Keras layer {unknown[:5]}, layers without weights in the file {missing[:5]}."
        )
    for module, parameters in modules.items():
        layer = layers[module.replace(".", "_")]
        if isinstance(layer, keras.layers.Conv2D):
            values = [parameters["weight"].transpose(2, 3, 1, 0)]
        elif isinstance(layer, keras.layers.BatchNormalization):
            values = [parameters[name] for name in
                      ("weight", "bias", "running_mean", "running_var")]
        else:
            values = [parameters["weight"].T, parameters["bias"]]
        expected = [tuple(weight.shape) for weight in layer.weights]
        if [value.shape for value in values] != expected:
            raise ValueError(
                f"Module {module!r} has shapes {[value.shape for value in values]}, but Keras "
                f"layer {layer.name!r} expects {expected}."
            )
        layer.set_weights(values)
