"""`keras-mm` on Stable Diffusion 3 teachers (model.network "sd3"): the sd3_tiny config's
random tiny backbone through distill (data-free: the teacher's own samples of prompts,
cached), sample and export, in-process through `main([...])`; sd3_medium's dry run, and its
real preset load failing with one line where nothing can be downloaded.

The commands' code is the same on every backend (the SD3 steps themselves run on all three
in tests/test_sd3.py): one pass, TensorFlow's, where export needs no subprocess.
"""

import os

import numpy as np
import pytest

from keras_mm.cli import main
from keras_mm.configs import ConfigError, get_config

pytest.importorskip("keras_hub")
pytestmark = pytest.mark.one_backend("tensorflow")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-step sd3_tiny distillation, its grid and SavedModel."""
    root = tmp_path_factory.mktemp("sd3_cli")
    run_dir = str(root / "run")
    prompts = root / "prompts.txt"
    prompts.write_text("a red cat\n\nthe blue dog\n")
    tiny = ["--config", "sd3_tiny", "--set", f"data.path={prompts}",
            "--set", "data.num_examples=4"]
    assert main(["distill", *tiny, "--run-dir", run_dir, "--verbose", "0", "--steps", "2",
                 "--checkpoint-every", "2"]) == 0
    grid = str(root / "grid.png")
    generator = os.path.join(run_dir, "generator.keras")
    assert main(["sample", "--model", generator, "--captions", "a red cat", "the dog",
                 "--seed", "1", "--out", grid]) == 0
    sampler = str(root / "sampler")
    assert main(["export", "--model", generator, "--out", sampler, "--output", "float",
                 "--quiet"]) == 0
    return {"run_dir": run_dir, "grid": grid, "sampler": sampler, "tiny": tiny,
            "prompts": str(prompts)}


def test_distill_caches_the_teachers_samples_of_the_prompts(run):
    from keras_mm.training import sd3

    files = set(os.listdir(run["run_dir"]))
    assert {"generator.keras", "distiller.keras", sd3.BACKBONE_DIR,
            sd3.TEACHER_SAMPLES} <= files
    with np.load(os.path.join(run["run_dir"], sd3.TEACHER_SAMPLES)) as archive:
        latents, index = archive["latents"], archive["prompt_index"]
        context = archive["context"]
    # data.num_examples samples cycling through the file's two prompts (blank line skipped).
    assert latents.shape == (4, 4, 4, 16) and np.isfinite(latents).all()
    np.testing.assert_array_equal(index, [0, 1, 0, 1])
    assert context.shape == (2, 16, 4096)
    # Guided samples of different prompts and noise differ.
    assert not np.allclose(latents[0], latents[2])


def test_cached_samples_are_reused_and_other_settings_refused(run):
    from keras_mm import configs
    from keras_mm.training import sd3

    config = configs.apply_overrides(get_config("sd3_tiny"), [
        f"data.path={run['prompts']}", "data.num_examples=4"])
    cached = sd3.TeacherSamples(config, None, None, run["run_dir"])  # reads, samples nothing
    batch = next(cached.stream(batch_size=3, seed=0))[0]
    assert sorted(batch) == ["context", "images", "pooled_projection"]
    assert batch["images"].shape == (3, 4, 4, 16) and batch["context"].shape == (3, 16, 4096)
    changed = configs.apply_overrides(config, ["distill.teacher_guidance_scale=3.0"])
    with pytest.raises(ConfigError, match="guidance_scale.*--overwrite"):
        sd3.TeacherSamples(changed, None, None, run["run_dir"])


def test_sample_decodes_the_students_latents_into_a_grid(run):
    from PIL import Image

    with Image.open(run["grid"]) as image:
        pixels = np.asarray(image)
    assert pixels.shape[0] >= 32 and pixels.std() > 0


def test_export_puts_the_vae_decoder_in_the_saved_model(run):
    import tensorflow as tf

    from keras_mm.training import sd3

    exported = tf.saved_model.load(run["sampler"])
    with np.load(os.path.join(run["run_dir"], sd3.TEACHER_SAMPLES)) as archive:
        condition = {key: archive[key][:2] for key in ("context", "pooled_projection")}
    images = exported.sample(**condition, seed=tf.constant([0, 1])).numpy()
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()


def test_sd3_medium_dry_run_prints_the_papers_plan_without_loading(capsys):
    assert main(["distill", "--config", "sd3_medium", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "'stable_diffusion_3_medium'" in out and "64x64x16 VAE latents" in out
    assert "8 sampling steps, alternating method" in out and "teacher guidance 6" in out
    assert "beta_1=0.0, beta_2=0.99, epsilon=1e-12, global_clipnorm=1.0" in out
    assert "50000 steps at batch 512" in out and "nothing was loaded" in out


def test_real_preset_fails_with_one_line_naming_the_download(tmp_path, capsys):
    """The real code path, KerasHub's from_preset: no network here, so it must fail."""
    code = main(["distill", "--config", "sd3_medium", "--run-dir", str(tmp_path / "run"),
                 "--set", "distill.steps=1", "--set", "distill.checkpoint_every=1"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1, error
    assert "model.sd3_preset='stable_diffusion_3_medium'" in error and "Kaggle" in error


def test_sd3_configs_refuse_what_they_cannot_do(run, tmp_path, capsys):
    cases = [
        (["distill", *run["tiny"], "--teacher", "t.keras", "--run-dir", str(tmp_path)],
         "drop --teacher"),
        (["distill", *run["tiny"], "--set", "distill.fid_every=2", "--run-dir",
          str(tmp_path)], "distill.fid_every=0"),
        (["distill", *run["tiny"], "--method", "instant", "--run-dir", str(tmp_path)],
         "preconditioner_steps"),
        (["distill", "--config", "sd3_tiny", "--set", "data.path=missing.txt",
          "--run-dir", str(tmp_path)], "no prompts file"),
        (["train-teacher", "--config", "sd3_tiny", "--run-dir", str(tmp_path)],
         "keras-mm distill"),
        (["sample", "--model", os.path.join(run["run_dir"], "generator.keras"),
          "--num-samples", "2", "--out", str(tmp_path / "x.png")], "--captions"),
        (["evaluate", "--model", os.path.join(run["run_dir"], "generator.keras")],
         "keras-mm sample --captions"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and expected in error, error


def test_example_distill_sd3_mirrors_the_sd3_medium_config():
    from tests.test_examples import constants

    values, config = constants("distill_sd3.py"), get_config("sd3_medium")
    distill = config["distill"]
    assert values["PRESET"] == config["model"]["sd3_preset"]
    assert list(values["IMAGE_SHAPE"]) == config["data"]["image_shape"]
    assert values["TEACHER_NUM_STEPS"] == config["eval"]["teacher_num_steps"]
    assert values["GUIDANCE_SCALE"] == distill["teacher_guidance_scale"]
    assert values["NUM_EXAMPLES"] == config["data"]["num_examples"]
    for name, key in (("NUM_STEPS", "num_steps"), ("METHOD", "method"),
                      ("BATCH_SIZE", "batch_size"), ("DISTILL_STEPS", "steps"),
                      ("WARMUP_STEPS", "warmup_steps"), ("CHECKPOINT_EVERY", "checkpoint_every")):
        assert values[name] == distill[key], name
    assert values["LEARNING_RATE"] == (distill["learning_rate"] or 1e-4)


def test_captioned_images_become_cached_vae_latents(run, tmp_path, capsys):
    """data.source "image_folder": a metadata.jsonl folder, encoded once by the run's VAE."""
    import json

    from PIL import Image

    from keras_mm import configs
    from keras_mm.models.sd3 import encode_images
    from keras_mm.training import sd3

    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    captions = ["a red cat", "the dog", "a red cat"]
    with open(folder / "metadata.jsonl", "w") as file:
        for number, (image, caption) in enumerate(zip(pixels, captions)):
            Image.fromarray(image).save(folder / f"{number}.png")
            file.write(json.dumps({"file_name": f"{number}.png", "text": caption}) + "\n")
    config = configs.apply_overrides(get_config("sd3_tiny"), [
        "data.source=image_folder", f"data.path={folder}"])
    sd3.check_sd3_config(config)
    backbone = sd3.load_backbone(config, run["run_dir"])  # the run's tiny backbone
    data = sd3.training_data(config, backbone, None, str(tmp_path))
    assert isinstance(data, sd3.ImageLatents)
    expected = np.asarray(encode_images(backbone, pixels / 127.5 - 1.0))
    np.testing.assert_allclose(data.arrays["latents"], expected, atol=1e-5)
    np.testing.assert_array_equal(data.arrays["prompt_index"], [0, 1, 0])  # sorted captions
    again = sd3.training_data(config, None, None, str(tmp_path))  # from the cache
    np.testing.assert_array_equal(again.arrays["latents"], data.arrays["latents"])
    assert main(["distill", "--config", "sd3_tiny", "--set", "data.source=image_folder",
                 "--set", f"data.path={folder}", "--dry-run"]) == 0
    assert f"captioned images of {folder}" in capsys.readouterr().out
