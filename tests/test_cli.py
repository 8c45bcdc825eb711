"""`keras-mm` end to end at toy size: train-teacher -> distill -> evaluate -> export -> sample.

The chain runs once per module, in-process through `main([...])` (export re-runs itself
under TensorFlow on the torch backend), with a 7k-parameter UViT, 4 training steps and 20
evaluation samples; the tests then check each artifact. The teacher run is interrupted after
its first checkpoint and resumed, as a user's run would be.
"""

import contextlib
import json
import math
import os
import re

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from keras_mm import cli, configs, training
from keras_mm.cli import main
from keras_mm.distillation import MomentMatchingDistiller
from keras_mm.models.diffusion_model import DiffusionModel
from keras_mm.models.uvit_presets import UVIT_PRESETS
from tests.helpers import (
    config_network,
    jax_compilation_cache,
    read_best_fid,
    read_csv,
    run_captured,
)

BACKEND = keras.backend.backend()
OTHER_BACKEND = "torch" if BACKEND != "torch" else "jax"
TINY = [
    "--set", "model.uvit_preset=uvit_tiny",
    "--set", "eval.teacher_num_steps=4",
    "--set", "eval.num_samples=20",
    "--set", "eval.batch_size=20",
    "--set", "grid.num_samples=20",
]  # fmt: skip
TRAINING = ["--steps", "4", "--checkpoint-every", "2", "--batch-size", "32", "--verbose", "2"]
NUM_STEPS = 2  # the student's k


class Interrupted(RuntimeError):
    pass


@contextlib.contextmanager
def unoptimized_jax_compiles():
    """The chain checks what the commands write, not what XLA's optimizations do (the rest of
    the JAX pass compiles with them): without most of them its compiles take about 30% less
    time on 2 CPU cores (measured: 253 s -> 180 s for the `run` fixture)."""
    if BACKEND != "jax":
        yield
        return
    import jax

    saved = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", saved)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Runs the whole chain; returns the paths and each command's exit code and output."""
    root = tmp_path_factory.mktemp("cli")
    paths = {
        "teacher_dir": str(root / "teacher"),
        "student_dir": str(root / "student"),
        "savedmodel": str(root / "sampler"),
        "grid": str(root / "grid.png"),
        "evaluation": str(root / "evaluation.json"),
    }
    results = {}

    # The teacher: interrupted at the end of its second checkpoint (after the CSV row, before
    # BackupAndRestore saves it), so the first checkpoint is what a re-run resumes from.
    original = keras.callbacks.CSVLogger.on_epoch_end

    def crash_in_second_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise Interrupted("simulated crash")

    teacher = ["train-teacher", *TINY, *TRAINING, "--run-dir", paths["teacher_dir"],
               "--set", "teacher.sample_every=4"]
    with jax_compilation_cache(root / "jax_cache"), unoptimized_jax_compiles():
        with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted):
            patch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", crash_in_second_epoch)
            main(teacher)
        results["teacher"] = run_captured(teacher)
        results.update(distill_evaluate_export_sample(paths))
    return paths, results


def distill_command(paths, *extra):
    teacher_path = os.path.join(paths["teacher_dir"], "teacher.keras")
    return [
        "distill", *TINY, *TRAINING, "--teacher", teacher_path,
        "--run-dir", paths["student_dir"], "--num-steps", str(NUM_STEPS),
        "--set", "distill.warmup_steps=1", "--set", "distill.fid_every=2",
        "--set", "distill.sample_every=2", *extra,
    ]  # fmt: skip


def distill_evaluate_export_sample(paths):
    results = {}
    results["distill"] = run_captured(distill_command(paths))
    generator_path = os.path.join(paths["student_dir"], "generator.keras")
    # No --config: evaluate takes the run's config.json, hence k = NUM_STEPS.
    results["evaluate"] = run_captured(["evaluate", "--model", generator_path,
                                        "--out", paths["evaluation"]])
    results["export"] = run_captured(["export", "--model", generator_path,
                                      "--out", paths["savedmodel"], "--quiet"])
    results["sample"] = run_captured(["sample", "--model", paths["savedmodel"], "--labels",
                                      "0,1,2,3,4,5", "--ncols", "3", "--out", paths["grid"]])
    return results


def test_every_command_succeeds(run):
    _, results = run
    for command, (code, output) in results.items():
        assert code == 0, f"{command} exited with {code}:\n{output}"


def test_train_teacher_writes_a_loadable_teacher_and_resumes(run):
    paths, results = run
    teacher_dir = paths["teacher_dir"]
    assert "Resuming from the checkpoint at step 2." in results["teacher"][1]
    teacher = keras.saving.load_model(os.path.join(teacher_dir, "teacher.keras"))
    assert isinstance(teacher, DiffusionModel)
    assert teacher.image_shape == (8, 8, 1) and teacher.num_classes == 10
    # 2 steps before the crash's checkpoint + 2 after the resume, not 2 + 4.
    assert int(keras.ops.convert_to_numpy(teacher.optimizer.iterations)) == 4
    assert not os.path.exists(os.path.join(teacher_dir, "backup"))  # removed once finished
    with open(os.path.join(teacher_dir, "config.json")) as f:
        assert json.load(f)["model"]["uvit_preset"] == "uvit_tiny"
    rows = read_csv(os.path.join(teacher_dir, "log.csv"))
    assert [row["epoch"] for row in rows][-2:] == ["1", "1"]  # crashed epoch, then redone
    assert all(math.isfinite(float(row["loss"])) for row in rows)
    grid = Image.open(os.path.join(teacher_dir, "samples", "teacher_0000004.png"))
    assert grid.size == (10 * 64 + 11, 2 * 64 + 3)  # 20 samples, 10 columns, 8x upscaled


def test_distill_writes_distiller_generator_and_best_fid_weights(run):
    paths, _ = run
    student_dir = paths["student_dir"]
    distiller = keras.saving.load_model(os.path.join(student_dir, "distiller.keras"))
    assert isinstance(distiller, MomentMatchingDistiller)
    assert distiller.num_steps == NUM_STEPS
    generator = keras.saving.load_model(os.path.join(student_dir, "generator.keras"))
    assert isinstance(generator, DiffusionModel) and generator.name == "generator"
    assert os.path.getsize(os.path.join(student_dir, "best_fid.weights.h5")) > 0
    best_fid, best_step = read_best_fid(student_dir)
    assert math.isfinite(best_fid) and best_step in (2, 4)
    assert os.path.exists(os.path.join(student_dir, "reference_digits.npz"))
    assert not os.path.exists(os.path.join(student_dir, "best_fid.json"))  # one record only
    rows = read_csv(os.path.join(student_dir, "log.csv"))
    assert len(rows) == 2
    assert {"generator_loss", "auxiliary_loss", "moment_gap", "fid"} <= set(rows[0])
    assert min(float(row["fid"]) for row in rows) == pytest.approx(best_fid)
    for step in (2, 4):
        grid = Image.open(os.path.join(student_dir, "samples", f"distill_{step:07d}.png"))
        assert grid.size == (10 * 64 + 11, 2 * 64 + 3)


def test_evaluate_prints_a_table_of_numbers_and_writes_json(run):
    paths, results = run
    output = results["evaluate"][1]
    assert "| steps | FD (digits) | precision | recall | class accuracy | seconds |" in output
    row = re.search(rf"^\| {NUM_STEPS} \|(.*)\|$", output, re.MULTILINE)
    assert row is not None, output
    values = [float(cell) for cell in row.group(1).split("|")]
    assert len(values) == 5 and all(math.isfinite(v) for v in values)
    with open(paths["evaluation"]) as f:
        report = json.load(f)
    (row,) = report["rows"]
    assert row["num_steps"] == NUM_STEPS and report["num_samples"] == 20
    assert row["fid"] > 0
    assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    assert 0 <= row["class_accuracy"] <= 1


def test_export_and_sample_write_a_savedmodel_and_a_png(run):
    paths, results = run
    assert os.path.exists(os.path.join(paths["savedmodel"], "saved_model.pb"))
    assert "Wrote 6 images" in results["sample"][1]
    grid = Image.open(paths["grid"])
    assert grid.size == (3 * 64 + 4, 2 * 64 + 3) and grid.mode == "L"


# One backend: the run directory's bookkeeping (clearing, the best-FID record and weights) is
# backend-independent code, and the `run` fixture's chain covers distill on every backend.
@pytest.mark.one_backend("torch")
def test_overwrite_starts_over_without_the_earlier_runs_best_fid(run):
    """`distill --overwrite` clears everything the earlier run wrote: an earlier best FID
    (here an unbeatable 0) must not stop the new run from saving its own best weights, and
    generator.keras holds them."""
    paths, _ = run
    student_dir = paths["student_dir"]
    record = os.path.join(student_dir, "best_fid.best.json")
    with open(record) as f:
        earlier = json.load(f)
    with open(record, "w") as f:
        json.dump({**earlier, "best_fid": 0.0}, f)
    code, output = run_captured(distill_command(paths, "--overwrite"))
    assert code == 0, output
    best_fid, _ = read_best_fid(student_dir)
    rows = read_csv(os.path.join(student_dir, "log.csv"))
    assert len(rows) == 2  # the new run's rows only
    assert best_fid > 0 and best_fid == pytest.approx(min(float(row["fid"]) for row in rows))
    assert f"(best FID {best_fid:.4f}" in output
    distiller = keras.saving.load_model(os.path.join(student_dir, "distiller.keras"))
    distiller.load_weights(os.path.join(student_dir, "best_fid.weights.h5"))
    generator = keras.saving.load_model(os.path.join(student_dir, "generator.keras"))
    for saved, best in zip(generator.network.weights, distiller.generator.network.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved),
                                      keras.ops.convert_to_numpy(best))


@pytest.mark.one_backend("torch")
def test_distill_with_lora_rank_writes_a_plain_merged_generator(run, tmp_path):
    """`--set distill.lora_rank=4 --set distill.remat=true`: the distiller holds low-rank
    deltas on the teacher's weights, trains at the LoRA default rate, and generator.keras is
    a plain network holding theta + delta of the best-FID weights (LoRA itself, the deltas'
    gradients and remat are tested on every backend in test_lora.py and test_remat.py)."""
    from keras_mm.distillation import LoRANetwork, merge_lora

    paths, _ = run
    student_dir = str(tmp_path / "lora_student")
    command = distill_command({**paths, "student_dir": student_dir},
                              "--set", "distill.lora_rank=4", "--set", "distill.remat=true")
    code, output = run_captured(command)
    assert code == 0, output
    assert "peak learning rate 0.0003" in output
    distiller = keras.saving.load_model(os.path.join(student_dir, "distiller.keras"))
    assert isinstance(distiller.generator.network, LoRANetwork)
    assert distiller.generator.network.rank == 4 and distiller.remat
    distiller.load_weights(os.path.join(student_dir, "best_fid.weights.h5"))
    expected = merge_lora(distiller.generator)
    generator = keras.saving.load_model(os.path.join(student_dir, "generator.keras"))
    assert not isinstance(generator.network, LoRANetwork)
    assert len(generator.network.weights) == len(expected.network.weights)
    for saved, merged in zip(generator.network.weights, expected.network.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(saved),
                                   keras.ops.convert_to_numpy(merged), rtol=0, atol=1e-6)
    # The deltas moved: the student is not the teacher.
    teacher = distiller.teacher.network
    assert any(not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
               for a, b in zip(generator.network.weights, teacher.weights))


def test_a_finished_run_is_not_overwritten(run, capsys):
    paths, _ = run
    code = main(["train-teacher", *TINY, *TRAINING, "--run-dir", paths["teacher_dir"]])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err


def test_resuming_with_another_config_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    config = configs.get_config("digits")
    (run_dir / "config.json").write_text(json.dumps(config))
    code = main(["train-teacher", "--run-dir", str(run_dir), "--steps", "200"])
    assert code == 2
    assert "teacher.steps" in capsys.readouterr().err


# ---------------------------------------------------------------------- configs and options
def test_help_explains_every_option_and_config_key(capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subparsers) == {"train-teacher", "distill", "evaluate", "sample", "export"}
    for name, subparser in subparsers.items():
        for action in subparser._actions:
            assert action.help, f"`keras-mm {name} {action.option_strings}` has no help"
    helps = ""
    for name in subparsers:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        helps += capsys.readouterr().out
    for key in configs.CONFIG_KEYS:
        assert key in helps, f"config key {key} is not explained by any --help"


@pytest.mark.parametrize("name", sorted(configs.CONFIGS))
def test_presets_are_complete_and_consistent(name):
    config = configs.get_config(name)
    typed = configs.check_config(config)
    assert typed.to_dict() == config  # every key, and back
    # Every network is a named preset, stated for the data the config trains on (SD3's is
    # KerasHub's backbone, at the data's image shape).
    if config["model"]["network"] == "sd3":
        assert config["model"]["uvit_preset"] is None and config["data"]["num_classes"] is None
    else:
        preset = UVIT_PRESETS[config["model"]["uvit_preset"]]
        assert list(preset["image_shape"]) == config["data"]["image_shape"]
        assert preset.get("num_classes") == config["data"]["num_classes"]
    assert config["model"]["uvit"] == {}
    distill = config["distill"]
    assert distill["steps"] % distill["checkpoint_every"] == 0
    assert distill["fid_every"] % distill["checkpoint_every"] == 0
    assert config["teacher"]["steps"] % config["teacher"]["checkpoint_every"] == 0


def test_presets_carry_the_papers_distillation_settings():
    for name in ("cifar10", "imagenet64", "imagenet128"):
        distill = configs.get_config(name)["distill"]
        assert (distill["batch_size"], distill["steps"], distill["fid_every"]) == (
            2048, 200_000, 5000)
        assert distill["adam"] == {"beta_1": 0.0, "beta_2": 0.99, "epsilon": 1e-12,
                                   "global_clipnorm": 1.0}
        assert distill["warmup_steps"] == 1000 and distill["decay_to_zero"]
        assert configs.get_config(name)["eval"]["feature_extractor"] == "fid_inception"  # papers' FID network
    text = configs.get_config("text2image")["distill"]
    assert (text["batch_size"], text["steps"]) == (512, 50_000)
    assert configs.get_config("imagenet64")["model"]["uvit_preset"] == "imagenet64_small"
    assert configs.get_config("imagenet128")["model"]["uvit_preset"] == "imagenet128_small"


def test_config_files_and_overrides(tmp_path, capsys):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"base": "cifar10", "distill": {"steps": 1000},
                                "model": {"uvit": {"base_channels": 64}}}))
    config = configs.apply_overrides(configs.get_config(str(path)),
                                     ["distill.adam.beta_2=0.9", "eval.inception_weights=null",
                                      "data.image_shape=[16, 16, 3]"])
    assert config["distill"]["steps"] == 1000 and config["distill"]["batch_size"] == 2048
    assert config["model"]["uvit"]["base_channels"] == 64
    assert config_network(config)["transformer_depth"] == 8  # the rest of the preset's
    assert config["distill"]["adam"]["beta_2"] == 0.9
    assert config["eval"]["inception_weights"] is None
    assert config["data"]["image_shape"] == [16, 16, 3]
    assert main(["distill", "--config", str(path), "--steps", "3000", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["distill"]["steps"] == 3000 and printed["distill"]["batch_size"] == 2048

    assert main(["distill", "--set", "distill.step=100", "--print-config"]) == 2
    assert "Unknown config key 'distill.step'" in capsys.readouterr().err
    assert main(["train-teacher", "--config", "nope", "--print-config"]) == 2
    assert "not a preset" in capsys.readouterr().err
    assert main(["train-teacher", "--run-dir", str(tmp_path / "r"), "--steps", "5",
                 "--checkpoint-every", "2"]) == 2
    assert "multiple of teacher.checkpoint_every" in capsys.readouterr().err


def test_text2image_preset_needs_its_text_encoder(tmp_path, capsys):
    for command in (["train-teacher", "--run-dir", str(tmp_path)],
                    ["distill", "--teacher", "t.keras", "--run-dir", str(tmp_path)]):
        code = main([*command, "--config", "text2image",
                     "--set", f"data.text_encoder={tmp_path / 'no_t5'}"])
        assert code == 2
        err = capsys.readouterr().err
        assert err.strip().endswith("no text encoder preset directory at "
                                    f"'{tmp_path / 'no_t5'}'.")
        assert len(err.strip().splitlines()) == 1


def test_backend_option(monkeypatch):
    assert cli.requested_backend(["distill", "--backend", "jax"]) == "jax"
    assert cli.requested_backend(["--backend=torch", "sample"]) == "torch"
    assert cli.requested_backend(["distill", "--backend", "theano"]) is None
    assert cli.requested_backend(["distill"]) is None
    # The running backend: handled in this process.
    assert main(["--backend", BACKEND, "train-teacher", "--print-config"]) == 0
    # Another one: Keras is imported already, so the command re-runs in a fresh process.
    calls = []
    monkeypatch.setattr(cli.backend.subprocess, "call",
                        lambda command, env: calls.append((command, env)) or 0)
    argv = ["distill", "--backend", OTHER_BACKEND, "--print-config"]
    assert main(argv) == 0
    (command, env), = calls
    assert command[1:] == ["-m", "keras_mm.cli", *argv]
    assert env["KERAS_BACKEND"] == OTHER_BACKEND


# One backend: the data loading and its error message are the same code on every backend.
@pytest.mark.one_backend("torch")
def test_missing_dataset_is_one_clear_line(tmp_path, capsys, monkeypatch):
    """An unknown TFDS name, and CIFAR-10 not downloaded on a machine without internet
    access (simulated: TFDS's download fails to resolve the host): exit code 2 and one line
    saying what to do, no traceback."""

    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    for name, patch in (("no_such_dataset", False), ("cifar10", True)):
        with monkeypatch.context() as context:
            if patch:
                context.setattr(tfds, "load", no_network)
            code = main(["train-teacher", "--config", "cifar10", "--set", f"data.name={name}",
                         "--steps", "2", "--checkpoint-every", "1", "--batch-size", "4",
                         "--run-dir", str(tmp_path / name)])
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"Could not load the TFDS dataset {name!r}" in err and "data.data_dir" in err
    assert "ConnectionError" in err and "tfds build cifar10" in err


@pytest.mark.parametrize("name", ["cifar10", "imagenet64", "imagenet128"])
def test_tfds_configs_stream_their_data(name):
    config = configs.apply_overrides(configs.get_config(name), [
        "eval.num_reference=6", "eval.batch_size=4", "data.shuffle_buffer=8"])
    height, width, channels = config["data"]["image_shape"]
    with tfds.testing.mock_data(num_examples=8):
        images, labels = next(iter(training.training_stream(config, batch_size=4, seed=0)))
        reference = [batch[0] for batch in training.reference_images(config)]
    assert tuple(images.shape) == (4, height, width, channels)
    assert -1.0 <= float(np.min(images)) and float(np.max(images)) <= 1.0
    assert 0 <= int(np.min(labels)) and int(np.max(labels)) < config["data"]["num_classes"]
    assert [len(batch) for batch in reference] == [4, 2]


# ---------------------------------------------------------------------- the user's own images
OWN_IMAGES = [
    "--set", "model.uvit_preset=uvit_tiny", "--set", "eval.teacher_num_steps=2",
    "--set", "teacher.sample_every=0", "--set", "distill.sample_every=0",
    "--set", "distill.fid_every=0", "--set", "distill.warmup_steps=1",
    "--steps", "2", "--checkpoint-every", "2", "--batch-size", "8", "--verbose", "0",
]  # fmt: skip


# One backend: what this adds to the `run` chain (which trains and distills on every backend)
# is the image-folder and .npz data sources, which are the same code on every backend.
@pytest.mark.one_backend("torch")
def test_train_and_distill_on_an_image_folder_and_an_npz_file(tmp_path):
    """PNGs in one subfolder per class (labels from the folder names, resized from 12x12),
    and an unlabelled uint8 .npz: each trains a teacher and distills it through the CLI."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    for name in ("circles", "squares"):
        (folder / name).mkdir(parents=True)
        for index in range(8):
            pixels = rng.integers(0, 256, (12, 12), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / name / f"{index}.png")
    npz = tmp_path / "images.npz"
    np.savez(npz, images=rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8))
    sources = {
        "image_folder": [f"data.path={folder}", "data.num_classes=2"],
        "npz": [f"data.path={npz}", "data.num_classes=null",
                "eval.class_accuracy=false"],
    }
    for source, settings in sources.items():
        options = [*OWN_IMAGES, "--set", f"data.source={source}"]
        for setting in settings:
            options += ["--set", setting]
        teacher_dir, student_dir = tmp_path / f"{source}_teacher", tmp_path / f"{source}_student"
        code, output = run_captured(["train-teacher", *options, "--run-dir", str(teacher_dir)])
        assert code == 0, output
        code, output = run_captured([
            "distill", *options, "--teacher", str(teacher_dir / "teacher.keras"),
            "--run-dir", str(student_dir), "--num-steps", "2"])  # fmt: skip
        assert code == 0, output
        teacher = keras.saving.load_model(teacher_dir / "teacher.keras")
        assert teacher.num_classes == (2 if source == "image_folder" else None)
        generator = keras.saving.load_model(student_dir / "generator.keras")
        assert generator.image_shape == (8, 8, 1)
        rows = read_csv(student_dir / "log.csv")
        assert len(rows) == 1 and math.isfinite(float(rows[0]["generator_loss"]))


def test_own_images_with_the_wrong_class_count_or_no_path_are_one_line(tmp_path, capsys):
    folder = tmp_path / "images"
    for name in ("a", "b", "c"):
        (folder / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(folder / name / "0.png")
    for settings, message in (
        ([f"data.path={folder}"], "holds 3 class folders (a, b, c) but data.num_classes is 10"),
        ([], "data.source 'image_folder' reads data.path"),
    ):
        options = ["--set", "data.source=image_folder"]
        for setting in settings:
            options += ["--set", setting]
        code = main(["train-teacher", *options, *OWN_IMAGES, "--run-dir", str(tmp_path / "r"),
                     "--overwrite"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert message in err
