"""FIDInceptionFeatures against pytorch-fid's own network, with random weights in a `.pth`.

pytorch-fid's weights cannot be downloaded here, so its network (built by the package's
`fid_inception_v3()`) gets random weights with batch-norm statistics calibrated on images,
saved to a temporary `.pth` that both pytorch-fid and keras_mm's converter read.

PyPI's torchvision wheel is a CUDA build whose C++ ops cannot load beside the CPU torch
pinned for CI. pytorch-fid uses only torchvision's pure-Python Inception modules, but
`import torchvision` registers fake kernels for the `nms`/`qnms` ops unconditionally and
fails when they were never declared; `_import_torchvision` declares those two schemas (no
kernels) so that the real torchvision and pytorch-fid code import and run unchanged.
"""

import importlib.util
import os
import sys

import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm.metrics import FeatureStatistics, InceptionScore, frechet_distance
from keras_mm.metrics.extractors.fid_inception import (
    FID_INCEPTION_NAME,
    FIDInceptionFeatures,
    bilinear_resize_matrix,
    build_fid_inception,
    load_pytorch_fid_state_dict,
    missing_weights_message,
    read_pytorch_state_dict,
)

torch = pytest.importorskip("torch")
_TORCHVISION_OPS = []  # keeps the library that declares the schemas alive


def _import_torchvision():
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OPS.append(library)
        import torchvision  # noqa: F401


if importlib.util.find_spec("torchvision") is None:
    pytest.skip("pytorch-fid needs torchvision", allow_module_level=True)
_import_torchvision()
pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
pytorch_fid_score = pytest.importorskip("pytorch_fid.fid_score")
from PIL import Image


def relative_error(actual, expected):
    """max |actual - expected| / max |expected|."""
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def uint8_images(count, size, seed):
    """Smooth random colour images (blobs, not pixel noise), as uint8 NHWC."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 4, 4, 3))
    rows = bilinear_resize_matrix(4, size)
    return np.einsum("ih,bhwc,jw->bijc", rows, coarse, rows).round().astype("uint8")


def to_torch(images_uint8):
    """pytorch-fid's input: NCHW float in [0, 1] (what its `ToTensor` gives)."""
    return torch.from_numpy(images_uint8.transpose(0, 3, 1, 2).astype("float32") / 255.0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, monkeypatch_module):
    """pytorch-fid's network with random weights, its `.pth` and the converted extractor."""
    directory = tmp_path_factory.mktemp("fid_inception")
    pth_path = str(directory / "pt_inception-random.pth")
    torch.manual_seed(0)
    plain = pytorch_fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    monkeypatch_module.setattr(pytorch_fid_inception, "load_state_dict_from_url",
                               lambda *args, **kwargs: plain.state_dict())
    network = pytorch_fid_inception.fid_inception_v3()  # the FID blocks, as the package builds
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.normal_(module.bias, 0.0, 0.2)
            module.momentum = 1.0  # running statistics := those of the calibration batch
    torch.nn.init.normal_(network.fc.bias, 0.0, 1.0)
    network.train()
    with torch.no_grad():
        network(2 * to_torch(uint8_images(4, 299, seed=100)) - 1)
    torch.save(network.state_dict(), pth_path)
    # From here on pytorch-fid reads the file that keras_mm converts.
    monkeypatch_module.setattr(pytorch_fid_inception, "load_state_dict_from_url",
                               lambda *args, **kwargs: torch.load(pth_path, weights_only=True))
    torch_model = pytorch_fid_inception.InceptionV3([3]).eval()
    weights_path = str(directory / "fid_inception.weights.h5")
    extractor = FIDInceptionFeatures.from_pytorch_fid(pth_path, save_path=weights_path,
                                                      batch_size=4)
    fc_weight, fc_bias = network.fc.weight.detach().numpy(), network.fc.bias.detach().numpy()
    return {"torch_model": torch_model, "extractor": extractor, "weights_path": weights_path,
            "fc_weight": fc_weight, "fc_bias": fc_bias}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def torch_pool3(reference, images_uint8):
    with torch.no_grad():
        return reference["torch_model"](to_torch(images_uint8))[0][:, :, 0, 0].double().numpy()


def test_pool3_and_logits_match_pytorch_fid(reference):
    images = uint8_images(4, 299, seed=1)
    expected_pool3 = torch_pool3(reference, images)
    features, logits = reference["extractor"].features_and_logits(images)
    assert features.shape == (4, 2048) and logits.shape == (4, 1008)
    assert np.std(expected_pool3) > 1e-2  # the random network is not degenerate
    assert relative_error(features, expected_pool3) < 1e-4
    # Without the bias, as IS code reads the 2015 graph; the bias is clearly nonzero here.
    unbiased = expected_pool3 @ reference["fc_weight"].T
    assert relative_error(logits, unbiased) < 1e-4
    assert relative_error(logits, unbiased + reference["fc_bias"]) > 1e-2
    # Inception Score on the same network's logits: softmax over all 1008 outputs.
    score = InceptionScore(reference["extractor"], num_splits=2)
    score.update_state(images)
    expected_score = np.mean([
        np.exp(np.sum(p * (np.log(p) - np.log(p.mean(0))), axis=1).mean())
        for p in np.split(_softmax(unbiased), 2)
    ])
    assert score.result()["inception_score"] == pytest.approx(expected_score, rel=1e-4)


def _softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("size", [32, 64])
def test_resize_path_matches_pytorch_fid(reference, size):
    images = uint8_images(4, size, seed=size)
    expected_pool3 = torch_pool3(reference, images)
    # Floats in [-1, 1] are the same images as uint8.
    features, logits = reference["extractor"].features_and_logits(
        images.astype("float32") / 127.5 - 1.0 if size == 64 else images
    )
    assert relative_error(features, expected_pool3) < 1e-4
    assert relative_error(logits, expected_pool3 @ reference["fc_weight"].T) < 1e-4


def test_saved_weights_load_and_biased_logits(reference):
    extractor = FIDInceptionFeatures(weights=reference["weights_path"], use_bias_in_logits=True)
    for loaded, converted in zip(extractor.model.weights, reference["extractor"].model.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(loaded), ops.convert_to_numpy(converted))
    pool3 = np.random.default_rng(0).uniform(0, 2, (3, 2048)).astype("float32")
    logits = ops.convert_to_numpy(extractor.model.get_layer("fc")(pool3))
    expected = pool3 @ reference["fc_weight"].T + reference["fc_bias"]
    assert relative_error(logits, expected) < 1e-5


def test_fid_end_to_end_equals_pytorch_fid(reference, tmp_path):
    # The features match pytorch-fid's on every backend (tests above) and the FID is numpy
    # from there on; pytorch-fid's scipy `sqrtm` of a 2048x2048 matrix alone takes 30 s to
    # minutes on a 2-core CPU, so the end-to-end comparison runs on one backend.
    if keras.backend.backend() != "jax":
        pytest.skip("FID end to end runs on the JAX backend only (features match on all).")
    directories = []
    for index, seed in enumerate([10, 11]):
        directory = tmp_path / f"set{index}"
        directory.mkdir()
        images = uint8_images(8, 32, seed=seed)
        if index == 1:  # a shifted distribution, so that the FID is not small
            images = np.clip(images.astype(int) + 40, 0, 255).astype("uint8")
        for number, image in enumerate(images):
            Image.fromarray(image).save(directory / f"{number}.png")
        directories.append(str(directory))
    expected = pytorch_fid_score.calculate_fid_given_paths(
        directories, batch_size=8, device="cpu", dims=2048, num_workers=0
    )
    statistics = []
    for directory in directories:
        files = sorted(os.listdir(directory))
        images = np.stack([np.asarray(Image.open(os.path.join(directory, f))) for f in files])
        stats = FeatureStatistics.from_images(images, reference["extractor"])
        path = str(tmp_path / f"{os.path.basename(directory)}.npz")
        stats.save(path)  # reference statistics, saved once with the extractor's name
        statistics.append(FeatureStatistics.load(path))
    assert statistics[0].feature_extractor_name == FID_INCEPTION_NAME
    first, second = statistics
    fid = frechet_distance(first.mean, first.covariance, second.mean, second.covariance)
    assert expected > 1.0
    assert fid == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("input_size,output_size", [(32, 299), (64, 299), (7, 3), (512, 299)])
def test_bilinear_resize_matrix_is_torch_interpolate(input_size, output_size):
    image = np.random.default_rng(0).normal(size=(input_size, 5)).astype("float32")
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(image.T[None]), size=output_size, mode="linear", align_corners=False
    )[0].numpy().T
    actual = bilinear_resize_matrix(input_size, output_size) @ image
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_missing_weights_is_one_line_naming_the_fix(tmp_path):
    path = str(tmp_path / "absent.weights.h5")
    with pytest.raises(FileNotFoundError) as error:
        FIDInceptionFeatures(weights=path)
    message = str(error.value)
    assert message == missing_weights_message(path) and "\n" not in message
    assert "from_pytorch_fid" in message and "pt_inception-2015-12-05" in message
    with pytest.raises(ValueError, match="from_pytorch_fid"):
        FIDInceptionFeatures(weights=str(tmp_path / "weights.pth"))
    # The registry builds the same extractor by name (what configs and FIDCallback use).
    with pytest.raises(FileNotFoundError) as error:
        keras_mm.metrics.get_feature_extractor("fid_inception", weights=path)
    assert str(error.value) == missing_weights_message(path)


def test_converter_refuses_other_networks_and_says_when_torch_is_missing(monkeypatch, tmp_path):
    model = build_fid_inception()
    not_inception = {"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), "float32"),
                     "encoder.proj.weight": np.zeros((4, 4), "float32")}
    with pytest.raises(ValueError, match=r"not pytorch-fid's FID Inception.*encoder_proj"):
        load_pytorch_fid_state_dict(model, not_inception)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ImportError, match=r"needs PyTorch .*copy the `.weights.h5`"):
        read_pytorch_state_dict(str(tmp_path / "pt_inception.pth"))
