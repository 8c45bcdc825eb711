"""keras_mm.training from Python: the run directory and the distiller's optimizers."""

import hashlib
import json

import keras
import numpy as np
import pytest

import keras_mm
from keras_mm import configs, training
from keras_mm.configs import ConfigError
from keras_mm.distillation import AdamWithoutMomentum
from tests.helpers import TinyConvNet


# ---------------------------------------------------------------------- run directory
def touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_fresh_run_writes_its_config_and_a_finished_one_is_refused(tmp_path):
    config = configs.get_config("digits")
    run_dir = tmp_path / "run"
    assert training.prepare_run_dir(str(run_dir), ["teacher.keras"], config) == 0
    assert json.loads((run_dir / "config.json").read_text()) == config
    touch(run_dir / "teacher.keras")
    with pytest.raises(ConfigError, match="teacher.keras from a finished run.*--overwrite"):
        training.prepare_run_dir(str(run_dir), ["teacher.keras"], config)


def test_an_interrupted_run_resumes_only_with_its_config(tmp_path):
    config = configs.get_config("digits")
    run_dir = tmp_path / "run"
    training.prepare_run_dir(str(run_dir), ["teacher.keras"], config)
    touch(run_dir / "backup" / "ckpt-000003.weights.h5", "weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    touch(run_dir / "backup" / "ckpt-000003.json", json.dumps({"weights_sha256": digest}))
    assert training.prepare_run_dir(str(run_dir), ["teacher.keras"], config) == 3
    changed = configs.set_value(config, "teacher.steps", 200)
    with pytest.raises(ConfigError, match=r"another config \(changed: teacher.steps\)"):
        training.prepare_run_dir(str(run_dir), ["teacher.keras"], changed)


def test_overwrite_and_a_fresh_start_clear_what_the_earlier_run_wrote(tmp_path):
    config = configs.get_config("digits")
    run_dir = tmp_path / "run"
    written = ["distiller.keras", "generator.keras", "best_fid.weights.h5", "best_fid.best.json",
               "log.csv", "samples/distill_0000004.png", "tensorboard/train/events",
               "backup/training_metadata.json", "reference_digits.npz"]
    kept = ["caption_embeddings.npz", "notes.txt"]  # a cache keyed by caption, the user's
    for name in written + kept:
        touch(run_dir / name, '{"epoch": 1}')
    (run_dir / "config.json").write_text(json.dumps(config))
    outputs = ["best_fid.weights.h5", "best_fid.*json"]
    artifacts = ["distiller.keras", "generator.keras"]
    changed = configs.set_value(config, "distill.steps", 10)
    assert training.prepare_run_dir(str(run_dir), artifacts, changed, overwrite=True,
                                    outputs=outputs) == 0
    left = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert left == sorted(["config.json", *kept])
    assert json.loads((run_dir / "config.json").read_text()) == changed
    # A run that ended before its first checkpoint left a best record: a fresh start drops it.
    touch(run_dir / "best_fid.best.json", '{"best_fid": 0.0}')
    training.prepare_run_dir(str(run_dir), artifacts, changed, outputs=outputs)
    assert not (run_dir / "best_fid.best.json").exists()


def test_training_plan_counts_checkpoints():
    assert training.training_plan({"steps": 1000, "checkpoint_every": 50}, "distill") == (50, 20)
    assert training.training_plan({"steps": 30, "checkpoint_every": 50}, "distill") == (30, 1)
    with pytest.raises(ConfigError, match="multiple of distill.checkpoint_every"):
        training.training_plan({"steps": 1000, "checkpoint_every": 300}, "distill")


# ---------------------------------------------------------------------- optimizers
@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(0)
    model = keras_mm.DiffusionModel(TinyConvNet(), seed=0)
    model.compile()
    images = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    model.fit(images, np.arange(8) % 10, batch_size=8, epochs=1, verbose=0)
    return model


@pytest.mark.parametrize("method", ["alternating", "instant"])
def test_each_network_gets_its_own_optimizer_through_public_keras_apis(teacher, method):
    """`keras.optimizers.MultiOptimizer` over an `OptimizerMap` that selects by variable
    identity: [generator, auxiliary] from the start, also for the instant method (no
    auxiliary network), so the optimizer state layout and saved files do not depend on it.
    Fails loudly if a Keras release changes how MultiOptimizer orders its optimizers."""
    config = configs.apply_overrides(configs.get_config("digits"), [
        f"distill.method={method}", "distill.steps=10", "distill.warmup_steps=2"])
    distiller = training.build_distiller(config, teacher)
    generator_optimizer, auxiliary_optimizer = distiller.optimizer.optimizers
    assert isinstance(generator_optimizer, AdamWithoutMomentum)
    assert generator_optimizer is not auxiliary_optimizer
    schedule = generator_optimizer.get_config()["learning_rate"]["config"]
    assert schedule == {"learning_rate": 3e-4, "warmup_steps": 2, "total_steps": 10}
    # Each optimizer holds second moments of its own network's weights only.
    networks = [distiller.generator, distiller.auxiliary]
    for optimizer, network in zip((generator_optimizer, auxiliary_optimizer), networks):
        moments = [tuple(v.shape) for v in optimizer.variables if "velocity" in v.name]
        weights = [] if network is None else network.network.trainable_variables
        assert moments == [tuple(v.shape) for v in weights]


@pytest.mark.parametrize("preset", ["cifar10", "imagenet64"])
def test_paper_scale_presets_score_with_fid_inception_and_say_how_to_get_it(preset, tmp_path):
    config = configs.get_config(preset)
    assert config["eval"]["feature_extractor"] == "fid_inception"
    missing = str(tmp_path / "absent.weights.h5")
    config = configs.apply_overrides(config, [f'eval.fid_inception_weights="{missing}"'])
    with pytest.raises(ConfigError) as error:
        training.callbacks.feature_extractor(config)
    message = str(error.value)
    assert "\n" not in message and missing in message
    assert "eval.fid_inception_weights" in message and "from_pytorch_fid" in message
