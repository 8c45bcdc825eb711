"""`keras-mm` text to image end to end at toy size: train-teacher -> distill -> evaluate ->
export -> sample on the captioned shapes (`--config text2image_toy`, data.name "shapes").

The text encoder is a local KerasHub T5 preset written here (a tiny random T5 and a
SentencePiece vocabulary trained on the captions), so nothing is downloaded. The chain runs
once per module, in-process through `main([...])`, with a tiny UViT and 4 training steps;
the tests then check each artifact and the one-line errors of bad text configs.

One backend (torch): what is text-specific here (caption configs, the encoder preset, the
caption cache, the token-id export and `sample --captions`) is the same code on every
backend. The backend-specific parts are tested on all three elsewhere: text-conditional
training, distillation and in-process export by tests/test_text.py, the CLI's own chain
(in-process export on JAX and TensorFlow) by tests/test_cli.py. Under torch, `export`
re-runs itself under TensorFlow, so this chain also covers that route with a text encoder.
"""

import json
import math
import os
import re

import keras
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("keras_hub")
pytest.importorskip("sentencepiece")

from keras_mm import configs, datasets, training
from keras_mm.cli import main
from keras_mm.configs import ConfigError
from keras_mm.distillation import MomentMatchingDistiller
from keras_mm.models.diffusion_model import DiffusionModel
from tests.helpers import (
    config_network,
    jax_compilation_cache,
    read_best_fid,
    read_csv,
    run_captured,
    write_tiny_t5_preset,
)

pytestmark = [pytest.mark.filterwarnings("ignore:.*does not support masking"),
              pytest.mark.one_backend("torch")]

TEXT_DIM = 16
SEQUENCE_LENGTH = 8
NUM_EXAMPLES = 256
NUM_STEPS = 2  # the student's k
TRAINING = ["--steps", "4", "--checkpoint-every", "2", "--batch-size", "16", "--verbose", "2"]
CAPTIONS = ["a red square on the left", "a blue circle on the right"]


def tiny(preset_dir):
    return [
        "--config", "text2image_toy",
        "--set", f"data.text_encoder={preset_dir}",
        "--set", f"data.sequence_length={SEQUENCE_LENGTH}",
        "--set", f"data.num_examples={NUM_EXAMPLES}",
        "--set", "model.uvit.base_channels=4",
        "--set", "model.uvit.transformer_depth=1",
        "--set", "model.uvit.embedding_dim=8",
        "--set", "model.uvit.norm_groups=2",
        "--set", f"model.uvit.text_dim={TEXT_DIM}",
        "--set", "eval.teacher_num_steps=4",
        "--set", "eval.num_samples=24",
        "--set", "eval.num_reference=24",
        "--set", "eval.batch_size=24",
        "--set", "grid.num_samples=6",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    _, captions = datasets.make_captioned_shapes(400, seed=0)
    return write_tiny_t5_preset(tmp_path_factory.mktemp("t5_tiny"), captions,
                                hidden_dim=TEXT_DIM)


@pytest.fixture(scope="module")
def run(tmp_path_factory, preset_dir):
    """Runs the whole text chain; returns the paths and each command's exit code and output."""
    root = tmp_path_factory.mktemp("cli_text")
    paths = {
        "teacher_dir": str(root / "teacher"),
        "student_dir": str(root / "student"),
        "savedmodel": str(root / "sampler"),
        "evaluation": str(root / "evaluation.json"),
        "grid_savedmodel": str(root / "grid_savedmodel.png"),
        "grid_keras": str(root / "grid_keras.png"),
        "grid_same_captions": str(root / "grid_same_captions.png"),
        "captions_file": str(root / "captions.txt"),
    }
    with open(paths["captions_file"], "w") as f:
        f.write(f"{CAPTIONS[0]}\n\n{CAPTIONS[0]}\n")
    options = tiny(preset_dir)
    teacher_path = os.path.join(paths["teacher_dir"], "teacher.keras")
    generator_path = os.path.join(paths["student_dir"], "generator.keras")
    results = {}
    with jax_compilation_cache(root / "jax_cache"):
        results["teacher"] = run_captured([
            "train-teacher", *options, *TRAINING, "--run-dir", paths["teacher_dir"],
            "--set", "teacher.sample_every=4"])  # fmt: skip
        results["distill"] = run_captured([
            "distill", *options, *TRAINING, "--teacher", teacher_path,
            "--run-dir", paths["student_dir"], "--num-steps", str(NUM_STEPS),
            "--set", "distill.warmup_steps=1", "--set", "distill.fid_every=2",
            "--set", "distill.sample_every=2",
        ])  # fmt: skip
        # No --config from here on: the commands take the run's config.json.
        results["evaluate"] = run_captured(["evaluate", "--model", generator_path,
                                            "--out", paths["evaluation"]])
        results["export"] = run_captured(["export", "--model", generator_path,
                                          "--out", paths["savedmodel"]])
        results["sample"] = run_captured([
            "sample", "--model", paths["savedmodel"], "--captions", *CAPTIONS,
            "--out", paths["grid_savedmodel"], "--scale", "1"])  # fmt: skip
        results["sample_same_captions"] = run_captured([
            "sample", "--model", paths["savedmodel"], "--captions-file",
            paths["captions_file"], "--out", paths["grid_same_captions"], "--scale", "1"])
        results["sample_keras"] = run_captured([
            "sample", "--model", generator_path, "--captions", *CAPTIONS,
            "--out", paths["grid_keras"], "--scale", "1"])  # fmt: skip
    return paths, results


def grid_tiles(path, count, size=8, padding=1):
    """The `count` tiles of a one-row PNG grid, as uint8 arrays."""
    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return [grid[padding:padding + size,
                 padding + i * (size + padding):padding + i * (size + padding) + size]
            for i in range(count)]


def test_every_command_succeeds(run):
    _, results = run
    for command, (code, output) in results.items():
        assert code == 0, f"{command} exited with {code}:\n{output}"


def test_teacher_is_text_conditional_and_the_captions_are_cached(run):
    paths, results = run
    teacher_dir = paths["teacher_dir"]
    assert f"{NUM_EXAMPLES} captioned images" in results["teacher"][1]
    teacher = keras.saving.load_model(os.path.join(teacher_dir, "teacher.keras"))
    assert isinstance(teacher, DiffusionModel)
    assert teacher.image_shape == (8, 8, 3) and teacher.num_classes is None
    assert teacher.text_dim == TEXT_DIM
    assert int(keras.ops.convert_to_numpy(teacher.optimizer.iterations)) == 4
    rows = read_csv(os.path.join(teacher_dir, "log.csv"))
    assert len(rows) == 2 and all(math.isfinite(float(row["loss"])) for row in rows)
    # One embedding per distinct caption: those of the training draw and of the grid's
    # evaluation captions (a held-out draw), all encoded at the encoder's width.
    with np.load(os.path.join(teacher_dir, "caption_embeddings.npz")) as cache:
        cached = set(cache["captions"].tolist())
        assert cache["text_embeddings"].shape == (len(cached), SEQUENCE_LENGTH, TEXT_DIM)
    _, train_captions = datasets.make_captioned_shapes(NUM_EXAMPLES, seed=0)
    assert set(train_captions) <= cached
    assert len(cached) == len(set(cached))
    grid = Image.open(os.path.join(teacher_dir, "samples", "teacher_0000004.png"))
    assert grid.size == (6 * 64 + 7, 64 + 2) and grid.mode == "RGB"  # 6 samples, 6 columns


def test_distill_tracks_fd_in_colour_layout_features(run):
    paths, _ = run
    student_dir = paths["student_dir"]
    distiller = keras.saving.load_model(os.path.join(student_dir, "distiller.keras"))
    assert isinstance(distiller, MomentMatchingDistiller) and distiller.num_steps == NUM_STEPS
    generator = keras.saving.load_model(os.path.join(student_dir, "generator.keras"))
    assert generator.text_dim == TEXT_DIM and generator.name == "generator"
    best_fid, best_step = read_best_fid(student_dir)
    assert math.isfinite(best_fid) and best_step in (2, 4)
    rows = read_csv(os.path.join(student_dir, "log.csv"))
    assert min(float(row["fid"]) for row in rows) == pytest.approx(best_fid)
    assert os.path.exists(os.path.join(student_dir, "reference_color_layout.npz"))
    for step in (2, 4):
        grid = Image.open(os.path.join(student_dir, "samples", f"distill_{step:07d}.png"))
        assert grid.size == (6 * 64 + 7, 64 + 2) and grid.mode == "RGB"


def test_evaluate_reports_fd_precision_and_recall(run):
    paths, results = run
    output = results["evaluate"][1]
    assert "| steps | FD (color_layout) | precision | recall | seconds |" in output
    assert "class accuracy" not in output  # captions have no classes
    row = re.search(rf"^\| {NUM_STEPS} \|(.*)\|$", output, re.MULTILINE)
    assert row is not None, output
    with open(paths["evaluation"]) as f:
        report = json.load(f)
    (row,) = report["rows"]
    assert report["feature_extractor"] == "color_layout" and report["num_samples"] == 24
    assert row["num_steps"] == NUM_STEPS and math.isfinite(row["fid"]) and row["fid"] > 0
    assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    assert "class_accuracy" not in row


def test_export_writes_a_token_id_sampler_with_its_vocabulary(run):
    import tensorflow as tf

    paths, results = run
    assert "sample_from_tokens" in results["export"][1]
    assert os.path.getsize(os.path.join(paths["savedmodel"], "assets.extra",
                                        "t5_vocabulary.spm")) > 0
    sampler = tf.saved_model.load(paths["savedmodel"])
    assert hasattr(sampler, "sample_from_tokens") and hasattr(sampler, "encode_text")
    metadata = {key: int(value.numpy()) for key, value in sampler.metadata().items()
                if value.dtype.is_integer and value.shape.rank == 0}
    assert metadata["num_steps"] == NUM_STEPS
    assert metadata["text_dim"] == TEXT_DIM and metadata["sequence_length"] == SEQUENCE_LENGTH
    assert metadata["num_classes"] == -1


def test_sample_follows_the_captions_and_matches_the_keras_model(run):
    paths, results = run
    assert "Wrote 2 images" in results["sample"][1]
    from_savedmodel = grid_tiles(paths["grid_savedmodel"], 2)
    from_keras = grid_tiles(paths["grid_keras"], 2)
    same_captions = grid_tiles(paths["grid_same_captions"], 2)
    # The same seed and captions: the SavedModel and the .keras generator agree.
    for exported, direct in zip(from_savedmodel, from_keras):
        assert np.abs(exported - direct).max() <= 3
    # The same noise (seed, position) and caption from --captions-file: the same image.
    assert np.abs(same_captions[0] - from_savedmodel[0]).max() <= 1


def test_exported_vocabulary_tokenizes_like_the_encoder_and_captions_reach_the_network(
        run, preset_dir):
    import keras_hub
    import tensorflow as tf

    from keras_mm.models.text_encoder import TextEncoder

    paths, _ = run
    vocabulary = os.path.join(paths["savedmodel"], "assets.extra", "t5_vocabulary.spm")
    tokenizer = keras_hub.models.T5Tokenizer(proto=vocabulary)
    packed = keras_hub.models.T5Preprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH)(CAPTIONS)
    expected = TextEncoder.from_preset(preset_dir, sequence_length=SEQUENCE_LENGTH).tokenize(
        CAPTIONS)
    token_ids = np.asarray(packed["token_ids"]).astype("int32")
    padding_mask = np.asarray(packed["padding_mask"]).astype(bool)
    np.testing.assert_array_equal(token_ids, expected["token_ids"])
    np.testing.assert_array_equal(padding_mask, expected["padding_mask"])
    # One network evaluation of the exported generator on the same noisy image: the two
    # captions give different x-hat, the same caption twice the same one.
    sampler = tf.saved_model.load(paths["savedmodel"])
    text = sampler.encode_text(token_ids=tf.constant(token_ids),
                               padding_mask=tf.constant(padding_mask))
    noisy = tf.constant(np.random.default_rng(0).normal(size=(1, 8, 8, 3)), tf.float32)
    x_hat = [sampler.denoise(noisy=noisy, logsnr=tf.constant([0.0]),
                             text_embeddings=text["text_embeddings"][i:i + 1],
                             text_mask=text["text_mask"][i:i + 1]).numpy()
             for i in (0, 1, 0)]
    assert np.abs(x_hat[0] - x_hat[1]).max() > 1e-5
    np.testing.assert_allclose(x_hat[0], x_hat[2], atol=1e-6)


def test_sample_refuses_labels_and_missing_captions_for_text_models(run, capsys):
    paths, _ = run
    out = paths["grid_savedmodel"] + ".unused.png"
    assert main(["sample", "--model", paths["savedmodel"], "--labels", "1", "--out", out]) == 2
    assert "text-to-image: pass --captions" in capsys.readouterr().err
    assert main(["sample", "--model", paths["savedmodel"], "--labels", "1", "--captions", "x",
                 "--out", out]) == 2
    assert "Pass one of --labels, --num-samples and --captions" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_bad_text_configs_fail_with_one_line(preset_dir, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    base = ["train-teacher", *tiny(preset_dir), *TRAINING, "--run-dir", run_dir]
    cases = {
        "data.name=no_such_dataset_xyz": "Unknown data.name 'no_such_dataset_xyz'",
        f"data.text_encoder={tmp_path / 'missing'}": "no text encoder preset directory",
        f"data.text_encoder={tmp_path}": "is not a KerasHub preset directory",
        "model.uvit.text_dim=24": "model.uvit.text_dim is 24 but the text encoder",
        "model.uvit.text_dim=null": "the network has no text_dim",
    }
    for override, message in cases.items():
        assert main([*base, "--set", override]) == 2, override
        err = capsys.readouterr().err
        assert message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not os.path.exists(os.path.join(run_dir, "teacher.keras"))


def test_text2image_toy_preset_is_documented_and_paper_preset_kept():
    toy = configs.get_config("text2image_toy")
    assert toy["data"]["name"] == "shapes" and toy["data"]["image_shape"] == [8, 8, 3]
    assert toy["eval"]["feature_extractor"] == "color_layout"
    paper = configs.get_config("text2image")
    assert paper["data"]["text_encoder"] == "t5_1.1_xxl"
    assert paper["data"]["image_shape"] == [512, 512, 3]
    assert config_network(paper)["text_dim"] == 4096
    assert "color_layout" in configs.CONFIG_KEYS["eval.feature_extractor"]
    assert "shapes" in configs.CONFIG_KEYS["data.name"]


def test_tfds_caption_datasets_load_images_and_first_captions():
    import tensorflow_datasets as tfds

    config = configs.apply_overrides(configs.get_config("text2image"), [
        "data.image_shape=[16, 16, 3]", "eval.num_reference=3", "eval.num_samples=3"])
    data = training.CaptionData(config, encoder=None)
    with tfds.testing.mock_data(num_examples=6):
        training.captions.check_caption_config(config)  # coco_captions has image and captions features
        images, captions = data.examples("train", 5)
        reference_images, reference_captions = data.reference()
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
    assert reference_images.shape == (3, 16, 16, 3) and len(reference_captions) == 3
    bad = configs.set_value(config, "data.caption_feature", "caption")
    with pytest.raises(ConfigError, match="no feature 'caption'"):
        training.captions.check_caption_config(bad)


def test_text2image_toy_matches_examples_text_to_image():
    from tests.test_examples import constants

    values = constants("text_to_image.py")
    config = configs.get_config("text2image_toy")
    data, teacher, distill, evaluation = (config[k] for k in ("data", "teacher", "distill",
                                                               "eval"))
    assert values["NUM_EXAMPLES"] == data["num_examples"]
    assert values["SEQUENCE_LENGTH"] == data["sequence_length"]
    assert values["BACKGROUND_TINT"] == training.captions.SHAPES_BACKGROUND_TINT
    uvit = {k: list(v) if isinstance(v, tuple) else v for k, v in values["UVIT"].items()}
    network = config_network(config)
    assert uvit == {k: v for k, v in network.items() if k != "text_dim"}
    assert values["CAPTION_DROPOUT"] == config["model"]["condition_dropout"]
    assert (values["BATCH_SIZE"], values["TEACHER_STEPS"], values["TEACHER_LEARNING_RATE"]) == (
        teacher["batch_size"], teacher["steps"], teacher["learning_rate"])
    assert (values["NUM_STEPS"], values["DISTILL_STEPS"], values["LEARNING_RATE"],
            values["WARMUP_STEPS"], values["EVAL_EVERY"]) == (
        distill["num_steps"], distill["steps"], distill["learning_rate"],
        distill["warmup_steps"], distill["fid_every"])
    assert distill["weighting"] == "auto" and distill["method"] == "alternating"
    assert values["NUM_SAMPLES"] == evaluation["num_samples"] == evaluation["num_reference"]
    assert values["GUIDANCE_SCALE"] == evaluation["guidance_scale"]
