"""Run configurations of `keras-mm`: data, network, teacher training, distillation,
evaluation and sample grids.

A config is a nested dict (what JSON files, `--print-config` and RUN_DIR/config.json hold)
whose sections are the dataclasses of `keras_mm.configs.sections`: each key's default, help
text and checks live there. `get_config` gives a preset (`keras_mm.configs.presets`) or a
file with every key filled in; `check_config` checks it and returns the typed `RunConfig`.

    config = keras_mm.configs.get_config("cifar10")
    config = keras_mm.configs.apply_overrides(config, ["distill.steps=1000"])
    typed = keras_mm.configs.check_config(config)  # typed.distill.steps == 1000

A config file is JSON holding a full config, or `{"base": "<preset or file>", ...}` with
only the keys that differ from its base.
"""

import copy
import json
import os
import textwrap

from keras_mm.configs.errors import ConfigError
from keras_mm.configs.presets import CONFIGS, PAPER_DISTILL, PAPER_EVAL, PAPER_TEACHER  # noqa: F401
from keras_mm.configs.sections import (  # noqa: F401
    PAPER_ADAM,
    SECTIONS,
    DataConfig,
    DistillConfig,
    EvalConfig,
    GridConfig,
    ModelConfig,
    RunConfig,
    TeacherConfig,
    config_keys,
)

# Every key with its help text, from the dataclasses' fields.
CONFIG_KEYS = config_keys()
# Free-form dicts: any constructor argument may be added.
OPEN_SECTIONS = ("model.uvit", "distill.adam")


def get_config(name_or_path):
    """Preset `name_or_path`, or the config in that JSON file, with every key (missing ones
    take their defaults; see `CONFIG_KEYS`).

    A file may hold `"base": "<preset or file>"` and only the keys that differ from it
    (merged recursively); relative base paths are relative to the file.
    """
    return merge(RunConfig().to_dict(), _read(name_or_path))


def _read(name_or_path):
    if name_or_path in CONFIGS:
        return copy.deepcopy(CONFIGS[name_or_path])
    if not os.path.isfile(name_or_path):
        raise ConfigError(
            f"Unknown config {name_or_path!r}: not a preset ({', '.join(CONFIGS)}) nor a JSON "
            "file."
        )
    with open(name_or_path) as f:
        try:
            config = json.load(f)
        except ValueError as error:
            raise ConfigError(f"Config file {name_or_path!r} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"Config file {name_or_path!r} must hold a JSON object, not "
                          f"{type(config).__name__}.")
    base = config.pop("base", None)
    if base is None:
        return config
    if base not in CONFIGS and not os.path.isabs(base):
        base = os.path.join(os.path.dirname(os.path.abspath(name_or_path)), base)
    return merge(get_config(base), config)
def merge(base, changes, prefix=""):
    """`base` updated recursively by `changes`; keys must exist in `base` (typo guard)."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        path = f"{prefix}{key}"
        if key not in merged:
            raise ConfigError(_unknown_key_message(path, merged))
        both_dicts = isinstance(value, dict) and isinstance(merged[key], dict)
        if both_dicts and path in OPEN_SECTIONS:
            merged[key] = {**merged[key], **value}  # any constructor argument may be added
        elif both_dicts:
            merged[key] = merge(merged[key], value, prefix=f"{path}.")
        else:
            merged[key] = value
    return merged


def apply_overrides(config, overrides):
    """`config` with `"section.key=value"` overrides; values are JSON (`8`, `null`,
    `[1, 2]`, `true`), anything else a string."""
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key:
            raise ConfigError(
                f"Override {override!r} is not KEY=VALUE, e.g. distill.steps=100 or "
                "model.uvit.base_channels=64."
            )
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        config = set_value(config, key.strip(), value)
    return config


def set_value(config, key, value):
    """`config` with the dotted `key` set to `value` (a copy)."""
    changes = value
    for part in reversed(key.split(".")):
        changes = {part: changes}
    return merge(config, changes)


def _unknown_key_message(path, section):
    parent = path.rpartition(".")[0]
    where = f"'{parent}'" if parent else "the top level"
    return (
        f"Unknown config key {path!r}; the keys of {where} are {sorted(section)}. See "
        "`keras-mm train-teacher --help` for what each one means."
    )


def check_config(config):
    """The checked, typed `RunConfig` of the nested dict `config`; a `ConfigError` naming
    the key and the fix otherwise."""
    if not isinstance(config, dict):
        raise ConfigError(f"A config is a JSON object of sections; got {config!r}.")
    return RunConfig.from_dict(config)


def describe_keys(sections=None):
    """Lines documenting the config keys (of `sections` only, when given) for `--help`."""
    lines = []
    for key, text in CONFIG_KEYS.items():
        if sections is None or key.split(".")[0] in sections:
            lines.append(textwrap.fill(text, width=92, initial_indent=f"  {key:<31} ",
                                       subsequent_indent=" " * 34))
    return "\n".join(lines)
