"""The exported SavedModel sampler, loaded by plain TensorFlow, against the in-process one.

The SavedModels are written once per module (on the torch backend through the `.keras` +
TensorFlow-subprocess route) and served once, by one fresh Python process that imports only
TensorFlow.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

import keras_mm
from keras_mm.cli import main as cli_main
from keras_mm.datasets import load_digits
from keras_mm.distillation import MomentMatchingDistiller
from keras_mm.export import export_sampler, sampler_noise
from keras_mm.images import image_grid, save_image_grid
from tests.helpers import TinyConvNet

BACKEND = keras.backend.backend()
DIRECT = BACKEND in ("jax", "tensorflow")
CONDITIONAL = {"num_steps": 3, "sampler": "ancestral", "guidance_scale": 0.5, "output": "float"}
UNCONDITIONAL = {"num_steps": 4, "sampler": "ddim", "output": "uint8", "clip": True}


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


@keras.saving.register_keras_serializable(package="keras_mm_tests")
class TinyUnconditionalNet(keras.Model):
    """An unconditional conv denoiser (v-prediction) with a logSNR bias."""

    def __init__(self, image_shape=(8, 8, 1), width=8, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.num_classes = None
        self.text_dim = None
        self.width = width
        self.time = keras.layers.Dense(width)
        self.conv1 = keras.layers.Conv2D(width, 3, padding="same", activation="silu")
        self.conv2 = keras.layers.Conv2D(image_shape[-1], 3, padding="same")

    def call(self, inputs, training=False):
        emb = self.time(ops.stack([ops.sin(inputs["logsnr"] / 4)] * 2, axis=-1))
        return self.conv2(self.conv1(inputs["noisy"]) + emb[:, None, None, :])

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape, "width": self.width}


class TextStubNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.image_shape, self.num_classes, self.text_dim = (8, 8, 1), None, 4

    def call(self, inputs):
        return inputs["noisy"] * 0.0


def export_quietly(model, path, **options):
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        export_sampler(model, path, **options)
    return log.getvalue()


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    """A TinyConvNet teacher trained for one epoch on this backend, exported."""
    keras.utils.set_random_seed(0)
    images, labels = load_digits()
    teacher = keras_mm.DiffusionModel(TinyConvNet(), seed=0)
    teacher.compile()
    teacher.fit(images[:256], labels[:256], batch_size=128, epochs=1, verbose=0)
    path = str(tmp_path_factory.mktemp("export") / "conditional")
    log = export_quietly(teacher, path, **CONDITIONAL)
    return {"model": teacher, "path": path, "log": log}


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = keras_mm.DiffusionModel(TinyUnconditionalNet(), seed=0)
    path = str(tmp_path_factory.mktemp("export") / "unconditional")
    return {"model": model, "path": path, "log": export_quietly(model, path, **UNCONDITIONAL)}


# Run by a fresh interpreter in which keras_mm cannot be imported.
SERVE_SCRIPT = r"""
import json, sys
sys.modules["keras_mm"] = None  # any import of keras_mm now fails
import numpy as np
import tensorflow as tf

spec = json.load(open(sys.argv[1]))
inputs = np.load(spec["inputs"])
out, errors = {}, {}

def attempt(name, fn):
    try:
        fn()
        errors[name] = None
    except tf.errors.InvalidArgumentError as error:
        errors[name] = error.message

c = tf.saved_model.load(spec["conditional"])
labels = tf.constant([0, 3, 9, 10, 4], tf.int32)
out["seed0"] = c.sample(labels=labels, seed=tf.constant([0, 0])).numpy()
out["seed1"] = c.sample(labels=labels, seed=tf.constant([1, 0])).numpy()
out["seed0_b2"] = c.sample(labels=labels[:2], seed=tf.constant([0, 0])).numpy()
out["from_noise"] = c.sample_from_noise(labels=labels, noise=inputs["noise"]).numpy()
out["denoise"] = c.denoise(noisy=inputs["noisy"], logsnr=inputs["logsnr"],
                           labels=labels).numpy()
out["cond_meta_steps"] = c.metadata()["num_steps"].numpy()
seed = tf.constant([0, 0])
attempt("label_11", lambda: c.sample(labels=tf.constant([1, 11]), seed=seed))
attempt("label_negative", lambda: c.sample(labels=tf.constant([-1, 2]), seed=seed))
attempt("no_labels", lambda: c.sample(labels=tf.zeros([0], tf.int32), seed=seed))
attempt("noise_batch", lambda: c.sample_from_noise(labels=labels[:2], noise=inputs["noise"]))
attempt("denoise_label", lambda: c.denoise(noisy=inputs["noisy"], logsnr=inputs["logsnr"],
                                           labels=tf.constant([0, 1, 2, 3, 12])))

u = tf.saved_model.load(spec["unconditional"])
out["uncond_seed0"] = u.sample(batch_size=tf.constant(3), seed=tf.constant([0, 0])).numpy()
out["uncond_seed5"] = u.sample(batch_size=tf.constant(3), seed=tf.constant([5, 0])).numpy()
attempt("negative_batch", lambda: u.sample(batch_size=tf.constant(-2), seed=seed))
attempt("zero_batch", lambda: u.sample(batch_size=tf.constant(0), seed=seed))
out["uncond_output"] = u.metadata()["output"].numpy().decode()

np.savez(spec["outputs"], **out)
modules = sorted(m for m, v in sys.modules.items() if v is not None and m.startswith("keras"))
json.dump({"errors": errors, "modules": modules},
          open(spec["report"], "w"))
"""

SERVED_LABELS = np.array([0, 3, 9, 10, 4], "int32")  # 10: the null label


@pytest.fixture(scope="module")
def served(conditional, unconditional, tmp_path_factory):
    """Outputs and error messages of the SavedModels loaded by a plain-TensorFlow process."""
    folder = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    inputs = {
        "noise": rng.normal(size=(3, 5, 8, 8, 1)).astype("float32"),
        "noisy": rng.normal(size=(5, 8, 8, 1)).astype("float32"),
        "logsnr": np.array([-6.0, -1.0, 0.0, 2.0, 7.0], "float32"),
    }
    np.savez(folder / "inputs.npz", **inputs)
    spec = {
        "conditional": conditional["path"],
        "unconditional": unconditional["path"],
        "inputs": str(folder / "inputs.npz"),
        "outputs": str(folder / "outputs.npz"),
        "report": str(folder / "report.json"),
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "serve.py").write_text(SERVE_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run(
        [sys.executable, str(folder / "serve.py"), str(folder / "spec.json")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = dict(np.load(spec["outputs"]))
    report = json.loads((folder / "report.json").read_text())
    return {"inputs": inputs, "outputs": outputs, **report}


def test_served_sampler_matches_in_process_sampler(conditional, served):
    model, out = conditional["model"], served["outputs"]
    options = {"num_steps": 3, "guidance_scale": 0.5}
    for seed in (0, 1):
        noise = sampler_noise(seed, 5, model.image_shape, 3)
        expected = np_(model.sample(noise=noise, labels=SERVED_LABELS, **options))
        np.testing.assert_allclose(out[f"seed{seed}"], expected, atol=1e-4)
    assert np.abs(out["seed0"] - out["seed1"]).mean() > 0.1  # different seeds, images
    assert out["seed0"].dtype == np.float32 and out["seed0"].shape == (5, 8, 8, 1)
    # Dynamic batch: two labels draw their own [3, 2, 8, 8, 1] noise.
    noise = sampler_noise(0, 2, model.image_shape, 3)
    expected = np_(model.sample(noise=noise, labels=SERVED_LABELS[:2], **options))
    np.testing.assert_allclose(out["seed0_b2"], expected, atol=1e-4)
    expected = np_(model.sample(noise=served["inputs"]["noise"], labels=SERVED_LABELS, **options))
    np.testing.assert_allclose(out["from_noise"], expected, atol=1e-4)
    inputs = served["inputs"]
    expected = np_(model.denoise(inputs["noisy"], inputs["logsnr"], {"labels": SERVED_LABELS}))
    np.testing.assert_allclose(out["denoise"], expected, atol=1e-4)
    assert out["cond_meta_steps"] == 3
    assert not [m for m in served["modules"] if m.startswith("keras_mm")]


def test_served_unconditional_uint8_sampler(unconditional, served):
    model, out = unconditional["model"], served["outputs"]
    noise = sampler_noise(0, 3, model.image_shape, 4, "ddim")
    x = np_(model.sample(noise=noise, num_steps=4, sampler="ddim", clip=True))
    expected = np.clip(np.round((x + 1.0) * 127.5), 0, 255)
    images = out["uncond_seed0"]
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 1)
    # Equal but for float rounding exactly at a .5 boundary.
    assert np.abs(images.astype(int) - expected).max() <= 1
    assert np.mean(images.astype(int) == expected) > 0.99
    assert np.any(out["uncond_seed5"] != images)
    assert out["uncond_output"] == "uint8"


def test_graph_rejects_bad_inputs_with_readable_errors(served):
    errors = served["errors"]
    assert "labels must be in [0, 10)" in errors["label_11"]
    assert "above 10" in errors["label_11"]
    assert "negative label" in errors["label_negative"]
    assert "at least one label" in errors["no_labels"]
    assert "noise must have the batch size of the labels" in errors["noise_batch"]
    assert "labels must be in [0, 10)" in errors["denoise_label"]
    assert "batch_size must be >= 1" in errors["negative_batch"]
    assert "batch_size must be >= 1" in errors["zero_batch"]


@pytest.mark.skipif(not DIRECT, reason="the torch backend exports through a subprocess")
def test_direct_route_exports_in_process(conditional, unconditional):
    for exported in (conditional, unconditional):
        assert "subprocess" not in exported["log"]
        assert "Saved a" in exported["log"]
    assert os.path.exists(os.path.join(conditional["path"], "saved_model.pb"))


@pytest.mark.skipif(DIRECT, reason=f"the torch route applies to the torch backend; {BACKEND} exports directly")
def test_torch_route_exports_a_torch_trained_model_through_tensorflow(conditional):
    # The fixture trained the teacher on torch; the served tests above check the SavedModel.
    assert int(np_(conditional["model"].optimizer.iterations)) == 2
    assert "torch_xla" in conditional["log"] and "subprocess" in conditional["log"]
    assert os.path.exists(os.path.join(conditional["path"], "saved_model.pb"))
    with pytest.raises(ValueError, match="export_backend"):
        export_sampler(conditional["model"], "unused", num_steps=2, export_backend="torch")


def test_cli_sample_gives_the_same_grid_from_savedmodel_and_keras(conditional, tmp_path,
                                                                  capsys):
    keras_path = str(tmp_path / "teacher.keras")
    conditional["model"].save(keras_path)
    common = ["sample", "--labels", "1,2,3,4", "--seed", "3", "--ncols", "2"]
    assert cli_main(common + ["--model", conditional["path"], "--out",
                              str(tmp_path / "a.png")]) == 0
    assert cli_main(common + ["--model", keras_path, "--num-steps", "3", "--guidance-scale",
                              "0.5", "--custom-module", "tests.helpers", "--out",
                              str(tmp_path / "b.png")]) == 0
    grid_a = np.asarray(Image.open(tmp_path / "a.png"), int)
    grid_b = np.asarray(Image.open(tmp_path / "b.png"), int)
    assert grid_a.shape == (2 * 64 + 3, 2 * 64 + 3)  # 8x8 tiles upscaled 8x, 1 px padding
    assert np.abs(grid_a - grid_b).max() <= 1
    assert "Wrote 4 images" in capsys.readouterr().out


def test_cli_errors_are_readable(conditional, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert cli_main(["sample", "--model", conditional["path"], "--labels", "1,12",
                     "--out", out]) == 2
    assert "labels must be in [0, 10)" in capsys.readouterr().err
    assert cli_main(["sample", "--model", conditional["path"], "--num-samples", "2",
                     "--out", out]) == 2
    assert "class-conditional" in capsys.readouterr().err
    assert cli_main(["sample", "--model", conditional["path"], "--labels", "1",
                     "--num-steps", "8", "--out", out]) == 2
    assert "samples in 3 steps" in capsys.readouterr().err
    assert cli_main(["sample", "--model", "missing.keras", "--labels", "1", "--num-steps",
                     "2", "--out", out]) == 2
    assert "No .keras file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["sample", "--model", "m.keras", "--labels", "1,a", "--out", out])
    assert "comma-separated integers" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_export_argument_errors(conditional, unconditional, tmp_path):
    teacher = conditional["model"]
    unused = str(tmp_path / "unused")
    with pytest.raises(TypeError, match="DiffusionModel"):
        export_sampler(teacher.network, unused, num_steps=2)
    with pytest.raises(ValueError, match="output"):
        export_sampler(teacher, unused, num_steps=2, output="png")
    with pytest.raises(ValueError, match="num_steps"):
        export_sampler(teacher, unused, num_steps=0)
    with pytest.raises(ValueError, match="sampler"):
        export_sampler(teacher, unused, num_steps=2, sampler="euler")
    with pytest.raises(ValueError, match="class-conditional"):
        export_sampler(unconditional["model"], unused, num_steps=2, guidance_scale=1.0)
    distiller = MomentMatchingDistiller(teacher, num_steps=2)
    with pytest.raises(TypeError, match=r"Pass its `\.generator`"):
        export_sampler(distiller, unused, num_steps=2)
    with pytest.raises(ValueError, match="not text-conditional"):
        export_sampler(teacher, unused, num_steps=2, text_encoder="t5")
    text_model = keras_mm.DiffusionModel(TextStubNet())
    with pytest.raises(TypeError, match="keras_mm.TextEncoder"):
        export_sampler(text_model, unused, num_steps=2, text_encoder="t5")
    assert not os.path.exists(unused)


def test_export_after_in_process_sampling(conditional, tmp_path):
    """`sample` compiles and caches samplers on the model; export must not try to save them."""
    teacher = conditional["model"]
    images = teacher.sample(labels=np.array([0, 1], "int32"), num_steps=2)
    assert not getattr(images, "requires_grad", False)  # torch: no autograd graph is kept
    images = np_(images)
    assert images.shape == (2, 8, 8, 1) and np.all(np.isfinite(images))
    path = tmp_path / "after_sampling"
    export_quietly(teacher, str(path), num_steps=2)
    assert (path / "saved_model.pb").exists()


def test_image_grid_layout_and_png(tmp_path):
    images = np.linspace(-1.0, 1.0, 5 * 4 * 3 * 3).reshape(5, 4, 3, 3).astype("float32")
    grid = image_grid(images, ncols=2, padding=1)
    assert grid.shape == (3 * 5 + 1, 2 * 4 + 1, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[1:5, 5:8], np.round((images[1] + 1) * 127.5))
    assert grid[0].max() == 0 and grid[11:, 5:].max() == 0  # padding and the empty tile
    as_uint8 = np.round((images + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(image_grid(as_uint8, ncols=2), grid)
    assert image_grid(images[..., :1], scale=2).shape == (2 * 9 + 1, 3 * 7 + 1)
    path = save_image_grid(images, str(tmp_path / "grids" / "grid.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image_grid(images))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        image_grid(np.zeros((2, 4, 4, 2)))
