"""The CLI convention: exit 2 for bad input, 1 for runtime failures, one line unless --verbose, quiet imports."""

import os
import subprocess
import sys
import textwrap

import pytest

from efficientnetv2_jax import cli


def _raise(error: BaseException):
    def main(argv):
        del argv
        raise error
    return main


@pytest.mark.parametrize("error, code", [(cli.UsageError("no such file x.jpg"), 2),
                                         (RuntimeError("device lost"), 1),
                                         (FileNotFoundError("gone"), 1)])
def test_error_is_one_line_with_its_exit_code(error, code, capsys):
    assert cli.run(_raise(error), []) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


def test_verbose_adds_the_traceback(capsys):
    assert cli.run(_raise(RuntimeError("device lost")), ["--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: RuntimeError: device lost")


def test_usage_errors_can_be_widened_and_success_returns_main_code(capsys):
    assert cli.run(_raise(ValueError("bad flag")), [], usage_errors=(ValueError,)) == 2
    assert cli.run(lambda argv: None, []) == 0
    assert cli.run(lambda argv: 3, []) == 3
    assert capsys.readouterr().err == "error: bad flag\n"


def test_long_multiline_message_is_capped_to_one_line(capsys):
    cli.run(_raise(ValueError("array([" + "0.1, " * 10_000 + "])\nmore")), [])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) <= cli.MAX_MESSAGE_CHARS + len("error: \n")


def test_import_quietly_discards_what_a_module_writes_to_fd_2(tmp_path):
    (tmp_path / "noisy_module.py").write_text("import os\nos.write(2, b'C++ start-up noise\\n')\n")
    script = textwrap.dedent("""
        import sys
        from efficientnetv2_jax import cli
        cli.import_quietly("noisy_module", verbose="--verbose" in sys.argv)
        print("after import", file=sys.stderr)
    """)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    loud = subprocess.run([sys.executable, "-c", script, "--verbose"], capture_output=True, text=True, check=True,
                          env=env)
    assert quiet.stderr == "after import\n"
    assert loud.stderr == "C++ start-up noise\nafter import\n"


def test_run_pins_the_cpu_backend_when_no_accelerator_is_present(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(cli.allocator, "accelerator_present", lambda: False)
    seen = {}
    cli.run(lambda argv: seen.update(platforms=os.environ.get("JAX_PLATFORMS")), [])
    assert seen["platforms"] == "cpu"
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(cli.allocator, "accelerator_present", lambda: True)
    cli.run(lambda argv: seen.update(platforms=os.environ.get("JAX_PLATFORMS")), [])
    assert seen["platforms"] is None  # A TPU VM or GPU machine keeps JAX's own choice.
