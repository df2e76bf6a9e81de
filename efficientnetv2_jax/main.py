"""Trains and evaluates EfficientNetV2: the command-line entry point.

    python -m efficientnetv2_jax.main --config=configs/digits.py --workdir=runs/digits [--config.field=value ...]

Every config field can be overridden with `--config.<field>=<value>`; a field that does not exist is an error.
The config file loads from any working directory (its package, e.g. `configs/`, is made importable), and
`load_config` is the one code path for a config file and its overrides: the Cloud TPU launcher calls it too, so
a bad config or override fails on the laptop, not on the pod. Multi-host: on Cloud TPU VMs every worker runs the
same command and JAX finds its peers by itself; elsewhere pass `--coordinator_address=host:port
--num_processes=N --process_id=i`. The training logic lives in `efficientnetv2_jax.train.train` so that it stays
importable from notebooks and tests.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import logging
import pathlib
import sys
from collections.abc import Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from efficientnetv2_jax import allocator, cli

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file with its argument, e.g. configs/imagenet1k.py:s; override any "
                                    "field with --config.FIELD=VALUE.")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and summary.json go (local path or gs://).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs off Cloud TPU.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("verbose", False, "Show third-party logs and the traceback of an error.")
flags.mark_flags_as_required(["config", "workdir"])


class ConfigError(cli.UsageError):
    """A config file that cannot be found or loaded, or a bad override: one line for the user, exit code 2."""


def _missing_config_message(path_text: str) -> str:
    """Names the file, where it was looked for, and the closest existing config file."""
    path = pathlib.Path(path_text).expanduser()
    where = "" if path.is_absolute() else f" (relative to {pathlib.Path.cwd()})"
    siblings = sorted(p.name for p in path.parent.glob("*.py") if p.name != "__init__.py")
    close = difflib.get_close_matches(path.name, siblings, n=1)
    hint = (f"; did you mean {path.parent / close[0]}?" if close
            else f"; {path.parent} has {', '.join(siblings)}" if siblings else "")
    return f"config file {path_text} not found{where}{hint}"


def _import_config_file(path: pathlib.Path):
    """Executes the config file as a module, with its package's root importable (`from configs.common import`)."""
    root = path.resolve().parent
    while (root / "__init__.py").is_file():
        root = root.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location(f"config_file_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # The file's own code may raise anything; report it as one line.
        raise ConfigError(f"cannot load config file {path}: {type(error).__name__}: {error}") from error
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path} defines no get_config()")
    return module


def _one_line(error: Exception) -> str:
    """absl and ml_collections messages, some quoted or spread over lines, as one readable line."""
    return " ".join(str(error).replace("\\n", " ").split())


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The locked config of `spec` ('path.py' or 'path.py:arg') with `--config.FIELD=VALUE` overrides applied.

    Raises ConfigError (one line) for a missing or unloadable file, a rejected argument, an unknown field or a
    value of the wrong type.
    """
    path_text, colon, arg = spec.partition(":")
    path = pathlib.Path(path_text).expanduser()
    if not path_text or not path.is_file():
        raise ConfigError(_missing_config_message(path_text or "''"))
    module = _import_config_file(path)
    try:
        config = module.get_config(arg) if colon else module.get_config()
    except Exception as error:  # The file's own code may raise anything; report it as one line.
        raise ConfigError(f"--config={spec}: {_one_line(error)}") from error
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config={spec}: get_config() returned {type(config).__name__}, not a ConfigDict")
    flag_values = flags.FlagValues()
    argv = ["load_config", *overrides]
    try:
        config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, lock_config=True, sys_argv=argv)
        rest = flag_values(argv)
    except (AttributeError, KeyError) as error:  # ConfigDict's message: "'name'\nDid you mean ...?"
        message = error
        while isinstance(message, (AttributeError, KeyError)) and message.args:
            message = message.args[0]
        name, _, suggestion = str(message).partition("\n")
        raise ConfigError(f"unknown config field {name}" + (f"; {suggestion}" if suggestion else "")) from error
    except (flags.Error, ValueError, TypeError) as error:
        raise ConfigError(_one_line(error)) from error
    if len(rest) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(rest[1:])} (overrides look like --config.FIELD=VALUE)")
    return flag_values.config


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """Joins the multi-controller runtime when asked to (flags) or when running on a Cloud TPU VM."""
    import jax

    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("--coordinator_address, --num_processes and --process_id must be given together.")
    if all(given):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes need gloo collectives.
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif allocator.tpu_device_present():  # A Cloud TPU VM: JAX finds its peers by itself.
        jax.distributed.initialize()


@dataclasses.dataclass(frozen=True)
class Command:
    """What the command line asks for, after parsing: the loaded config and the workdir."""

    config: ml_collections.ConfigDict
    workdir: str


def parse_flags(argv: list[str]) -> Command:
    """absl flags, then the config through `load_config`; bad input is one line `error: ...`, exit code 2."""
    try:
        rest = FLAGS(argv, known_only=True)
        return Command(load_config(FLAGS.config, rest[1:]), FLAGS.workdir)
    except (flags.Error, ConfigError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        sys.exit(cli.EXIT_USAGE)


def _train(command: Command) -> None:
    """Joins the other processes if any, then trains; the progress lines of this package stay on."""
    logging.getLogger("efficientnetv2_jax").setLevel(logging.INFO)
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    cli.import_quietly("tensorflow", FLAGS.verbose)  # Its oneDNN and CPU-feature lines, printed at import.
    from efficientnetv2_jax.train import train

    train.train_and_evaluate(command.config, command.workdir)


def main(command: Command) -> None:
    """The CLI convention (cli.run): bad input (a ValueError, e.g. an indivisible batch) exits 2, a failure 1."""
    sys.exit(cli.run(lambda _: _train(command), ["--verbose"] if FLAGS.verbose else [],
                     usage_errors=(cli.UsageError, ValueError, FileNotFoundError)))


if __name__ == "__main__":
    allocator.pin_cpu_backend_without_accelerator()
    allocator.reexec_with_fast_allocator()
    app.run(main, flags_parser=parse_flags)
