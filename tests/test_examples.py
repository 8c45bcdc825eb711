"""The examples parse and run, so that they cannot rot silently.

Every backend: each example's `--help` runs in-process (its imports and hyperparameter
block execute), and its hyperparameters match the `keras-mm` config it mirrors. One
backend: each `--dry-run` runs in a fresh process (TFDS mock data, a toy network, one step
of every stage; under a minute each on 2 CPU cores), which exercises every line.
"""

import ast
import os
import runpy
import subprocess
import sys

import pytest

from keras_mm import configs
from tests.helpers import config_network

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "examples")
EXAMPLES = ["digits_quickstart.py", "cifar10.py", "imagenet64.py", "text_to_image.py",
            "distill_sd3.py"]
# The dry runs check the scripts' own code, which is the same on every backend (the library
# calls it makes are tested on all three by the library's tests), so once per CI run is
# enough. Under tensorflow: measured at 4-8x CI's load, torch was faster for the digits and
# CIFAR-10 dry runs but slower for imagenet64 and text_to_image (whose export re-runs under
# TensorFlow in a subprocess from torch), about 420 s in all against tensorflow's 313 s.
DRY_RUN_BACKEND = "tensorflow"


def constants(name):
    """The example's top-level UPPER_CASE assignments of literals (which may name earlier
    ones), read without running the script."""
    with open(os.path.join(EXAMPLES_DIR, name)) as f:
        tree = ast.parse(f.read())
    values = {}

    class EarlierConstants(ast.NodeTransformer):
        def visit_Name(self, node):
            return ast.Constant(values[node.id]) if node.id in values else node

    for node in tree.body:
        if isinstance(node, ast.Assign) and all(
            isinstance(target, ast.Name) and target.id.isupper() for target in node.targets
        ):
            value = ast.literal_eval(EarlierConstants().visit(node.value))
            values.update({target.id: value for target in node.targets})
    return values


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_help(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(EXAMPLES_DIR, name), run_name="__main__")
    assert exit_info.value.code == 0
    assert "--dry-run" in capsys.readouterr().out


@pytest.mark.parametrize("name,config_name", [("cifar10.py", "cifar10"),
                                              ("imagenet64.py", "imagenet64")])
def test_example_hyperparameters_match_the_config(name, config_name):
    values = constants(name)
    config = configs.get_config(config_name)
    teacher, distill, evaluation = config["teacher"], config["distill"], config["eval"]
    assert values["DATASET"] == config["data"]["name"]
    assert values["NUM_CLASSES"] == config["data"]["num_classes"]
    assert values["TEACHER_BATCH_SIZE"] == teacher["batch_size"]
    assert values["TEACHER_STEPS"] == teacher["steps"]
    assert values["TEACHER_LEARNING_RATE"] == teacher["learning_rate"]
    assert values["TEACHER_WARMUP_STEPS"] == teacher["warmup_steps"]
    assert values["NUM_STEPS"] == distill["num_steps"]
    assert values["METHOD"] == distill["method"]
    assert values["BATCH_SIZE"] == distill["batch_size"]
    assert values["DISTILL_STEPS"] == distill["steps"]
    assert values["WARMUP_STEPS"] == distill["warmup_steps"]
    assert values["LEARNING_RATE"] == (distill["learning_rate"] or 1e-4)
    assert values["FID_EVERY"] == distill["fid_every"]
    assert values["CHECKPOINT_EVERY"] == distill["checkpoint_every"]
    assert values["FID_SAMPLES"] == evaluation["num_samples"]
    assert values["NUM_REFERENCE"] == evaluation["num_reference"]
    if "UVIT_PRESET" in values:
        assert values["UVIT_PRESET"] == config["model"]["uvit_preset"]
        assert values["UVIT"] == config["model"]["uvit"]
    else:
        as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in values["UVIT"].items()}
        assert as_lists == config_network(config)


@pytest.mark.slow
@pytest.mark.one_backend(DRY_RUN_BACKEND)
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_dry_run(name, tmp_path):
    env = dict(os.environ, KERAS_BACKEND=DRY_RUN_BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES_DIR, name), "--dry-run", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = os.listdir(tmp_path)
    assert any(path.endswith(".png") for path in written), written
    # A saved model: `.keras` files, or the text example's best weights and SavedModel.
    assert any(path.endswith((".keras", ".weights.h5")) for path in written), written
    if name == "text_to_image.py":
        assert os.path.exists(tmp_path / "student_savedmodel" / "saved_model.pb")
