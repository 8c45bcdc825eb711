"""`keras-mm` refuses bad input with one line naming the problem and the fix, before any work
(issue 12, item 7; rows of docs/reliability.md's "Bad inputs" table). In-process through
`main([...])`; the subject is the command line, so one backend's pass runs it."""

import zipfile

import numpy as np
import pytest

import keras_mm
from keras_mm.cli import main
from keras_mm.models.uvit import UViT

pytestmark = pytest.mark.one_backend("torch")

TINY = ["--config", "digits", "--set", "model.uvit_preset=uvit_tiny", "--set",
        "eval.num_samples=20", "--set", "eval.batch_size=20", "--set", "grid.num_samples=20"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny teacher trained one step (with Adam state), one never compiled, a copy of the
    first whose weights file is cut in half, and a plain file."""
    root = tmp_path_factory.mktemp("cli_errors")
    network = UViT.from_preset("uvit_tiny", image_shape=(8, 8, 1), num_classes=10)
    teacher = keras_mm.DiffusionModel(network, seed=0)
    teacher.compile()
    images = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype("float32")
    teacher.fit(images, np.arange(4), batch_size=4, epochs=1, verbose=0)
    paths = {"teacher": str(root / "teacher.keras"), "uncompiled": str(root / "bare.keras"),
             "truncated": str(root / "truncated.keras"), "file": str(root / "a_file")}
    teacher.save(paths["teacher"])
    keras_mm.DiffusionModel(UViT.from_preset("uvit_tiny", image_shape=(8, 8, 1),
                                             num_classes=10)).save(paths["uncompiled"])
    with zipfile.ZipFile(paths["teacher"]) as source, \
            zipfile.ZipFile(paths["truncated"], "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith(".h5"):
                data = data[: len(data) // 2]
            target.writestr(item, data)
    (root / "a_file").write_text("not a directory")
    return {**paths, "root": root}


def one_error_line(capsys, command):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"keras-mm {command}: error: "), lines
    return lines[0]


def test_sample_num_steps_zero(files, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--model", files["teacher"], "--num-steps", "0", "--labels", "1",
              "--out", str(files["root"] / "g.png")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --num-steps: expected an integer >= 1; got '0'." in err
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["under a file", "a directory"])
def test_sample_out_not_writable(files, capsys, where):
    out = files["file"] + "/g.png" if where == "under a file" else str(files["root"])
    code = main(["sample", "--model", files["teacher"], "--num-steps", "1", "--labels", "1",
                 "--out", out])
    line = one_error_line(capsys, "sample")
    assert code == 2
    assert ("is a file. Pass a path in a directory" if where == "under a file"
            else "is a directory: pass a file path") in line


def test_truncated_keras_file(files, capsys):
    code = main(["sample", "--model", files["truncated"], "--num-steps", "1", "--labels", "1",
                 "--out", str(files["root"] / "g.png")])
    line = one_error_line(capsys, "sample")
    assert code == 2 and "is damaged (" in line and "write it again" in line
    code = main(["distill", *TINY, "--teacher", files["truncated"], "--steps", "1",
                 "--run-dir", str(files["root"] / "d_truncated")])
    assert code == 2 and "--teacher" in one_error_line(capsys, "distill")


@pytest.mark.parametrize("run_dir", ["a file", "under a file"])
def test_run_dir_occupied_by_a_file(files, capsys, run_dir):
    path = files["file"] if run_dir == "a file" else files["file"] + "/run"
    code = main(["train-teacher", *TINY, "--steps", "1", "--run-dir", path])
    line = one_error_line(capsys, "train-teacher")
    assert code == 2 and "--run-dir" in line and "is a file" in line


def test_set_with_a_value_of_the_wrong_type(files, capsys):
    code = main(["train-teacher", *TINY, "--set", "model.uvit.base_channels=abc", "--steps",
                 "1", "--run-dir", str(files["root"] / "t_abc")])
    line = one_error_line(capsys, "train-teacher")
    assert code == 2
    assert "model.uvit.base_channels must be an integer (e.g. --set " in line
    assert "got 'abc'" in line
    code = main(["distill", *TINY, "--teacher", files["teacher"], "--set",
                 "distill.teacher_guidance_scale=nan", "--run-dir", str(files["root"] / "d_nan")])
    assert code == 2
    assert "distill.teacher_guidance_scale must be a number; got 'nan'" in one_error_line(
        capsys, "distill")


def test_export_to_a_file(files, capsys):
    code = main(["export", "--model", files["teacher"], "--num-steps", "1", "--out",
                 files["file"]])
    line = one_error_line(capsys, "export")
    assert code == 2 and "--out" in line and "is a file, not a directory" in line


def test_instant_method_error_names_the_config_key(files, capsys):
    code = main(["distill", *TINY, "--teacher", files["uncompiled"], "--method", "instant",
                 "--steps", "1", "--run-dir", str(files["root"] / "d_instant")])
    line = one_error_line(capsys, "distill")
    assert code == 2
    assert "--set distill.preconditioner_steps=N" in line and "preconditioner=" not in line
