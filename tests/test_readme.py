"""The README's Python examples run as written (issue 12, item 8), at toy size.

The ```python blocks of README.md are executed in order in one namespace (as a user would
run them in one session), in a temporary working directory, with only its sizes shrunk by monkeypatching (fit runs one step of one epoch,
FID uses 20 samples, presets are the tiny UViT with the preset's data shape); the code
itself is the README's. Blocks that need a download are listed in `NEEDS_DOWNLOAD`; any
other block that is not run fails the test, so a new example cannot go untested. The
examples are backend-independent script code: one backend's pass runs them.
"""

import os
import re

import keras
import pytest

import keras_mm
from keras_mm.models.uvit import UViT
from keras_mm.models.uvit_presets import UVIT_PRESETS

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
# pytorch-fid's Inception weights; KerasHub's SD3 weights and tokenizer (tests/test_sd3.py runs
# the same steps on a tiny random backbone).
NEEDS_DOWNLOAD = ("from_pytorch_fid(", "StableDiffusion3Backbone.from_preset(")

pytestmark = pytest.mark.one_backend("tensorflow")  # exports in-process


def python_blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.DOTALL)


def tiny(monkeypatch):
    """Shrink what the README's examples ask for, without changing their code."""
    from_preset = UViT.from_preset.__func__

    def tiny_preset(cls, name, **overrides):
        shape = {key: UVIT_PRESETS[name][key] for key in ("image_shape", "num_classes")
                 if key in UVIT_PRESETS[name]}
        return from_preset(cls, "uvit_tiny", **{**shape, **overrides})

    monkeypatch.setattr(UViT, "from_preset", classmethod(tiny_preset))
    for model in (keras_mm.DiffusionModel, keras_mm.MomentMatchingDistiller):
        fit = model.fit

        def one_step(self, *args, _fit=fit, **kwargs):
            kwargs.update(steps_per_epoch=1, epochs=1, verbose=0)
            return _fit(self, *args, **kwargs)

        monkeypatch.setattr(model, "fit", one_step)
    evaluator_init = keras_mm.metrics.Evaluator.__init__

    def few_samples(self, *args, **kwargs):
        kwargs.update(num_samples=20)
        evaluator_init(self, *args, **kwargs)

    monkeypatch.setattr(keras_mm.metrics.Evaluator, "__init__", few_samples)
    get_config = keras_mm.configs.get_config

    def tiny_config(name):
        config = get_config(name)
        config = keras_mm.configs.apply_overrides(config, [
            "model.uvit_preset=uvit_tiny", "teacher.steps=2", "teacher.checkpoint_every=2",
            "teacher.sample_every=2", "distill.steps=2", "distill.checkpoint_every=2",
            "distill.sample_every=2", "distill.fid_every=2", "distill.warmup_steps=1",
            "eval.num_samples=20",
            "eval.batch_size=20", "grid.num_samples=20", "eval.teacher_num_steps=2"])
        return config

    monkeypatch.setattr(keras_mm.configs, "get_config", tiny_config)


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) >= 3
    tiny(monkeypatch)
    monkeypatch.chdir(tmp_path)
    ran = 0
    namespace = {"__name__": "readme_example"}
    for block in blocks:
        if any(marker in block for marker in NEEDS_DOWNLOAD):
            continue
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
        ran += 1
        if "distiller.fit(" in block:  # the user's path: FID on the class-conditional model
            history = namespace["distiller"].history.history
            assert "fid" in history and history["fid"][0] > 0
            assert os.path.isdir("student_savedmodel")
            assert keras.ops.convert_to_numpy(namespace["samples"]).shape == (3, 8, 8, 1)
        if "train_teacher(config" in block:
            assert os.path.isfile(namespace["generator_path"])
    assert ran == len(blocks) - sum(any(m in b for m in NEEDS_DOWNLOAD) for b in blocks)
