"""The user's own images: `load_image_folder` and `load_npz`."""

import numpy as np
import pytest

from keras_mm.datasets import (
    DatasetNotAvailableError,
    load_digits,
    load_image_folder,
    load_npz,
)
from tests.helpers import write_image_file, write_image_folder


def constant(height, width, color):
    return np.broadcast_to(np.asarray(color, np.uint8), (height, width, len(color)))


def test_class_subfolders_become_sorted_labels_of_every_size_and_mode(tmp_path):
    # Written out of order, in several sizes, formats and Pillow modes.
    write_image_file(tmp_path / "zebra" / "a.png", constant(12, 20, (255, 0, 51)))
    write_image_file(tmp_path / "zebra" / "nested" / "b.png", constant(5, 5, (255, 0, 51)))
    write_image_file(tmp_path / "ant" / "gray.png", constant(9, 7, (51,)))
    write_image_file(tmp_path / "ant" / "rgba.png", constant(8, 8, (0, 255, 0, 128)))
    write_image_file(tmp_path / "ant" / "photo.JPG", constant(16, 10, (255, 255, 255)))
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()

    images, labels, class_names = load_image_folder(str(tmp_path), (4, 4, 3))
    assert class_names == ["ant", "zebra"]
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1])
    assert images.shape == (5, 4, 4, 3) and images.dtype == np.float32 and labels.dtype == np.int32
    # Files in sorted order: gray.png, photo.JPG, rgba.png, then zebra's a.png, nested/b.png.
    expected = [(51, 51, 51), (255, 255, 255), (0, 255, 0), (255, 0, 51), (255, 0, 51)]
    for image, color in zip(images, expected):
        # p / 127.5 - 1; JPEG is lossy, so allow it two levels of error.
        np.testing.assert_allclose(
            image, np.broadcast_to(np.asarray(color) / 127.5 - 1.0, image.shape), atol=2 / 127.5
        )
    np.testing.assert_allclose(images[-1, 0, 0], [1.0, -1.0, -0.6], atol=1e-6)


def test_digits_round_trip_through_png_files(tmp_path):
    images, labels = load_digits()
    images, labels = images[:30], labels[:30]
    write_image_folder(tmp_path, images, labels)
    loaded, loaded_labels, class_names = load_image_folder(str(tmp_path), (8, 8, 1))
    assert class_names == sorted({f"{label:03d}" for label in labels})
    order = np.argsort(labels, kind="stable")  # files are read class by class
    np.testing.assert_array_equal(loaded_labels, np.searchsorted(np.unique(labels), labels[order]))
    np.testing.assert_allclose(loaded, images[order], atol=0.5 / 127.5 + 1e-6)


def test_images_directly_in_the_folder_have_no_labels_and_convert_channels(tmp_path):
    write_image_file(tmp_path / "b.webp", constant(6, 6, (255, 0, 0)))
    write_image_file(tmp_path / "a.bmp", constant(10, 8, (0, 0, 255)))
    write_image_file(tmp_path / "c.gif", constant(9, 9, (0, 255, 0)))
    images, labels, class_names = load_image_folder(str(tmp_path), (8, 8, 1))
    assert labels is None and class_names is None
    assert images.shape == (3, 8, 8, 1)
    # Pillow's grayscale: L = (299 R + 587 G + 114 B) / 1000 (WebP is lossy: two levels).
    np.testing.assert_allclose(images[:, 0, 0, 0], np.array([29.07, 76.245, 149.685]) / 127.5 - 1,
                               atol=2 / 127.5)
    rgba, _, _ = load_image_folder(str(tmp_path), (8, 8, 4))
    np.testing.assert_allclose(rgba[..., 3], 1.0)  # opaque


def test_center_crop_keeps_the_middle_of_a_wide_image(tmp_path):
    # 32 wide, 8 high: black | white halves. The 8 x 8 crop is columns 12..20, half each.
    pixels = np.zeros((8, 32, 3), np.uint8)
    pixels[:, 16:] = 255
    write_image_file(tmp_path / "wide.png", pixels)
    # And a tall one: black on top, white below; the crop is rows 12..20.
    write_image_file(tmp_path / "tall.png", pixels.transpose(1, 0, 2))
    images, _, _ = load_image_folder(str(tmp_path), (4, 4, 3))
    tall, wide = images  # sorted names
    np.testing.assert_allclose(wide[:, 0], -1.0, atol=0.05)
    np.testing.assert_allclose(wide[:, -1], 1.0, atol=0.05)
    np.testing.assert_allclose(tall[0], -1.0, atol=0.05)
    np.testing.assert_allclose(tall[-1], 1.0, atol=0.05)
    # A non-square target crops the other way: 8 x 32 wide -> 2 x 8 keeps the whole image.
    strip, _, _ = load_image_folder(str(tmp_path), (2, 8, 3))
    np.testing.assert_allclose(strip[1][:, :3], -1.0, atol=0.05)
    np.testing.assert_allclose(strip[1][:, -3:], 1.0, atol=0.05)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: p / "missing", DatasetNotAvailableError, "No such folder: .*missing"),
        (lambda p: write_image_file(p / "one.png", constant(4, 4, (0, 0, 0))), ValueError,
         "one.png is not a folder"),
        (lambda p: p, ValueError, "No images in .*; put image files in it"),
        (lambda p: (p / "cats").mkdir() or write_image_file(p / "dogs" / "d.png", constant(4, 4, (1,)))
         and p, ValueError, "class folder .*cats holds no images; add images to it or remove it"),
        (lambda p: write_image_file(p / "cats" / "c.png", constant(4, 4, (1, 2, 3)))
         and write_image_file(p / "loose.png", constant(4, 4, (1, 2, 3))) and p, ValueError,
         "holds both images .*loose.png.* and class folders .*cats.*move the images"),
        (lambda p: (p / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really") and p,
         ValueError, "Could not read the image .*broken.png .*replace or remove the file"),
    ],
)  # fmt: skip
def test_image_folder_errors_are_one_clear_line(tmp_path, make, error, message):
    path = make(tmp_path)
    with pytest.raises(error, match=message) as info:
        load_image_folder(str(path), (4, 4, 3))
    assert "\n" not in str(info.value)


def test_truncated_image_names_the_file(tmp_path):
    write_image_file(tmp_path / "cats" / "cut.jpg", np.full((32, 32, 3), 90, np.uint8))
    data = (tmp_path / "cats" / "cut.jpg").read_bytes()
    (tmp_path / "cats" / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="Could not read the image .*cut.jpg"):
        load_image_folder(str(tmp_path), (8, 8, 3))


def test_bad_image_shape_is_refused(tmp_path):
    write_image_file(tmp_path / "a.png", constant(4, 4, (0, 0, 0)))
    for shape in [(4, 4), (4, 4, 2), (0, 4, 3), "8x8"]:
        with pytest.raises(ValueError, match="image_shape must be .height, width, channels."):
            load_image_folder(str(tmp_path), shape)


def save_npz(tmp_path, **arrays):
    path = str(tmp_path / "data.npz")
    np.savez(path, **arrays)
    return path


def test_npz_scales_uint8_and_float_pixels_and_keeps_minus_one_to_one(tmp_path):
    pixels = np.array([0, 51, 255], np.uint8).reshape(3, 1, 1, 1) * np.ones((1, 2, 2, 1), np.uint8)
    expected = np.array([-1.0, -0.6, 1.0]).reshape(3, 1, 1, 1) * np.ones((1, 2, 2, 1))
    labels = np.array([2, 0, 1], np.int64)
    for array in (pixels, pixels.astype("float64"), pixels.astype("int64")):
        images, loaded_labels = load_npz(save_npz(tmp_path, images=array, labels=labels))
        assert images.dtype == np.float32 and loaded_labels.dtype == np.int32
        np.testing.assert_allclose(images, expected, atol=1e-6)
        np.testing.assert_array_equal(loaded_labels, labels)
    signed = np.linspace(-1, 1, 3 * 4).reshape(3, 2, 2, 1).astype("float32")
    images, no_labels = load_npz(save_npz(tmp_path, images=signed), image_shape=(2, 2, 1))
    assert no_labels is None
    np.testing.assert_array_equal(images, signed)


IMAGES = np.zeros((3, 2, 2, 1), np.uint8)


@pytest.mark.parametrize(
    "arrays, image_shape, message",
    [
        ({"pixels": IMAGES}, None, r"has no `images` array \(it holds \['pixels'\]\)"),
        ({"images": IMAGES[..., 0]}, None, r"shape \(3, 2, 2\); expected .* \(add a channel axis"),
        ({"images": IMAGES}, (4, 4, 1), r"are \(2, 2, 1\), but image_shape is \(4, 4, 1\)"),
        ({"images": np.full((3, 2, 2, 1), np.nan)}, None, "holds 12 NaN or infinite values"),
        ({"images": np.full((3, 2, 2, 1), -3.0)}, None, r"range over \[-3.0, -3.0\]"),
        ({"images": np.full((3, 2, 2, 1), 300, np.int32)}, None, r"range over \[300, 300\]"),
        ({"images": IMAGES.astype(bool)}, None, "has dtype bool; expected uint8"),
        ({"images": IMAGES, "labels": np.array([0.0, 1.0, 2.0])}, None,
         "`labels` .* has dtype float64; expected integers"),
        ({"images": IMAGES, "labels": np.array([0, 1])}, None,
         r"`labels` .* has shape \(2,\) but there are 3 images"),
        ({"images": IMAGES, "labels": np.array([0, -1, 2])}, None, "negative values"),
    ],
)  # fmt: skip
def test_npz_errors_are_one_clear_line(tmp_path, arrays, image_shape, message):
    with pytest.raises(ValueError, match=message) as info:
        load_npz(save_npz(tmp_path, **arrays), image_shape=image_shape)
    assert "\n" not in str(info.value) and "data.npz" in str(info.value)


def test_npz_missing_or_unreadable_file(tmp_path):
    with pytest.raises(DatasetNotAvailableError, match="No such file: .*nothing.npz"):
        load_npz(str(tmp_path / "nothing.npz"))
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="Could not read .*text.npz as an .npz file"):
        load_npz(str(tmp_path / "text.npz"))
