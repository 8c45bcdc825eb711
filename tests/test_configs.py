"""Typed configs: the dataclasses check every key with one line, fill defaults, round-trip
through dicts and JSON files, and are the one source of the help and the docs."""

import dataclasses
import json
import os

import pytest

from keras_mm import configs
from keras_mm.configs import ConfigError, reference

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                    "configs.md")


@pytest.mark.parametrize("override,message", [
    ("teacher.steps=abc", "teacher.steps must be an integer; got 'abc'."),
    ("distill.method=newton",
     "distill.method must be one of 'alternating', 'instant'; got 'newton'."),
    ("data.source=folder",
     "data.source must be one of 'digits', 'tfds', 'captions', 'image_folder', 'npz'"),
    ("data.image_shape=[8, 8]", "data.image_shape must be [height, width, channels]"),
    ("eval.num_samples=0", "eval.num_samples must be >= 1; got 0."),
    ("distill.conditional_sampling=1", "distill.conditional_sampling must be true or false"),
    ("grid.num_columns=null", "grid.num_columns must not be null"),
    ("model.uvit.num_classes=10",
     "model.uvit.num_classes is data.num_classes, stated once: drop model.uvit.num_classes"),
])
def test_a_bad_value_is_one_line_naming_the_key(override, message):
    config = configs.apply_overrides(configs.get_config("digits"), [override])
    with pytest.raises(ConfigError) as error:
        configs.check_config(config)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_typed_config_fills_defaults_and_round_trips(tmp_path):
    typed = configs.check_config(configs.get_config("cifar10"))
    assert isinstance(typed.distill, configs.DistillConfig)
    assert (typed.distill.num_steps, typed.data.image_shape) == (8, [32, 32, 3])
    assert typed.data.path is None  # not in the preset: the default
    assert configs.RunConfig.from_dict(typed.to_dict()) == typed
    # A run directory's config.json from before a key existed still loads, with its default.
    old = typed.to_dict()
    del old["data"]["path"], old["eval"]["class_accuracy"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    assert configs.get_config(str(path)) == typed.to_dict() | {
        "eval": {**typed.to_dict()["eval"], "class_accuracy": True}}
    floats = configs.apply_overrides(configs.get_config("digits"), ["distill.learning_rate=1"])
    assert configs.check_config(floats).distill.learning_rate == 1  # an int is a number


def test_help_and_docs_come_from_the_dataclasses():
    keys = configs.config_keys()
    assert keys == configs.CONFIG_KEYS and "data.path" in keys and "grid.num_columns" in keys
    fields = {f"{name}.{field.name}" for name, section in configs.SECTIONS.items()
              for field in dataclasses.fields(section)}
    assert set(keys) == {"description"} | fields
    with open(DOCS) as f:
        assert f.read() == reference.markdown(), (
            "docs/configs.md is out of date: python -m keras_mm.configs.reference > "
            "docs/configs.md")
