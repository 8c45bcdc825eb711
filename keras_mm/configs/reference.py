"""The config reference page, docs/configs.md, from the dataclasses' help texts.

    python -m keras_mm.configs.reference > docs/configs.md
"""

import dataclasses
import json

from keras_mm.configs.presets import CONFIGS
from keras_mm.configs.sections import SECTIONS


def markdown():
    """docs/configs.md: every key with its default and help text, then the presets."""
    lines = [
        "# Config keys",
        "",
        ("Written by `python -m keras_mm.configs.reference > docs/configs.md` from the "
         "dataclasses in `keras_mm/configs/sections.py`; `keras-mm COMMAND --help` prints the "
         "same help. Set a key with `--set section.key=value` (JSON values) or in a JSON file "
         '(`{"base": "<preset>", "section": {"key": value}}`).'),
    ]
    for name, section in SECTIONS.items():
        lines += ["", f"## `{name}`", "", "| key | default | what |", "|---|---|---|"]
        for field in dataclasses.fields(section):
            default = (field.default_factory() if field.default is dataclasses.MISSING
                       else field.default)
            text = field.metadata["help"].replace("|", "\\|")
            lines.append(f"| `{name}.{field.name}` | `{json.dumps(default)}` | {text} |")
    lines += ["", "## Presets", "", "| name | what |", "|---|---|"]
    lines += [f"| `{name}` | {config['description']} |" for name, config in CONFIGS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
