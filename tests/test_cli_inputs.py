"""predict / evaluate / export / convert under a newcomer's hands: a SavedModel folder or a step folder passed as
--checkpoint, --step, a missing image before the model loads, the --overwrite flag named, and no third-party noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from efficientnetv2_jax import evaluate, export, inference, predict
from efficientnetv2_jax.convert import __main__ as convert_cli
from inference_checkpoint import tiny_config, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny digits training workdir with one checkpoint, at step 1."""
    directory = tmp_path_factory.mktemp("ckpt")
    write_tiny_checkpoint(str(directory), tiny_config(eval_image_size=32))
    return directory


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_saved_model_folder_as_checkpoint_says_what_it_is(tmp_path, capsys):
    exported = tmp_path / "exported"  # What export writes: saved_model.pb beside variables/ (which fooled the
    (exported / "variables").mkdir(parents=True)  # variables-folder check into Orbax's "_METADATA" message).
    (exported / "saved_model.pb").write_bytes(b"")
    for run in (lambda: predict.main(["--checkpoint", str(exported), __file__]),
                lambda: evaluate.main(["--checkpoint", str(exported)]),
                lambda: export.main(["--checkpoint", str(exported), "--output", str(tmp_path / "out")])):
        assert run() == 2
        assert "is a TensorFlow SavedModel (what export writes), not a checkpoint" in _one_error_line(capsys)


def test_a_step_folder_and_the_step_flag_pick_that_checkpoint(workdir, photo_jpegs, capsys):
    photo = str(photo_jpegs["small"])
    assert predict.main(["--checkpoint", str(workdir), photo]) == 0
    newest = capsys.readouterr().out
    assert predict.main(["--checkpoint", str(workdir / "checkpoints" / "1"), photo]) == 0
    assert capsys.readouterr().out == newest
    assert predict.main(["--checkpoint", str(workdir), "--step", "1", photo]) == 0
    assert capsys.readouterr().out == newest
    assert predict.main(["--checkpoint", str(workdir), "--step", "7", photo]) == 2
    assert "No checkpoint for step 7" in _one_error_line(capsys)
    assert predict.main(["--checkpoint", str(workdir / "checkpoints" / "1"), "--step", "2", photo]) == 2
    assert "folder of step 1 but --step 2" in _one_error_line(capsys)


def test_a_missing_image_is_reported_before_the_model_loads(workdir, monkeypatch, capsys):
    monkeypatch.setattr(inference, "load_from_flags", lambda args: pytest.fail("the model loaded first"))
    assert predict.main(["--checkpoint", str(workdir), "/nonexistent/photo.jpg"]) == 2
    assert _one_error_line(capsys) == "error: Cannot read image /nonexistent/photo.jpg: no such file.\n"


def test_convert_and_export_name_the_overwrite_flag_before_any_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(convert_cli, "read_tf_checkpoint", lambda *a, **k: pytest.fail("converted first"))
    monkeypatch.setattr(inference, "load_from_flags", lambda args: pytest.fail("the model loaded first"))
    assert convert_cli.main(["tf", "--checkpoint", "x", "--output", str(tmp_path / "out")]) == 2
    assert "already exists; choose a new --output or pass --overwrite." in _one_error_line(capsys)
    assert export.main(["--checkpoint", "x", "--output", str(tmp_path / "out")]) == 2
    assert "pass --overwrite" in _one_error_line(capsys)


def test_pretrained_excludes_model_and_step_and_an_unknown_name_lists_the_valid_ones(capsys):
    assert predict.main(["--pretrained", "efficientnetv2-s-21k", "--model", "s", __file__]) == 2
    assert "drop --model and --step" in _one_error_line(capsys)
    assert evaluate.main(["--pretrained", "efficientnetv2-q"]) == 2
    assert "valid names: efficientnetv2-b0, " in _one_error_line(capsys)


def _quiet_env() -> dict:
    """The environment a user has: no TF_CPP_MIN_LOG_LEVEL preset (conftest sets one for the test process)."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def test_export_help_and_predict_print_no_third_party_noise_unless_verbose(workdir, photo_jpegs):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_quiet_env(), capture_output=True,
                              text=True, timeout=300)

    quiet_help, verbose_help = run("efficientnetv2_jax.export", "--help"), run("efficientnetv2_jax.export", "--help",
                                                                               "--verbose")
    assert quiet_help.returncode == verbose_help.returncode == 0 and "--pretrained" in quiet_help.stdout
    assert quiet_help.stderr == ""  # TensorFlow's oneDNN and CPU-feature lines are gone ...
    assert verbose_help.stderr != ""  # ... unless asked for.
    predicted = run("efficientnetv2_jax.predict", "--checkpoint", str(workdir), str(photo_jpegs["small"]))
    assert predicted.returncode == 0 and "1. " in predicted.stdout
    assert predicted.stderr == ""  # No "Given directory is read only" from Orbax, no TF start-up lines.
