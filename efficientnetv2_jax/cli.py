"""One convention for every command-line entry point: exit codes, one-line errors, quiet third-party logs.

    def main(argv: list[str]) -> int: ...          # raise cli.UsageError for bad usage or input
    if __name__ == "__main__":
        cli.run_main(main)                          # never returns

- exit 0 on success; 2 for bad usage or input (`UsageError`, argparse errors); 1 for a runtime failure (any
  other exception); 130 on Ctrl-C;
- an error is one line `error: ...` on stderr; `--verbose` anywhere on the command line adds the traceback;
- third-party noise (TensorFlow's C++ start-up lines, Orbax/absl INFO and WARNING logs, Python warnings, libtpu's
  probe on a machine without TPU chips: JAX_PLATFORMS=cpu when no accelerator is present) is silenced unless
  `--verbose`: `quiet_third_party` does the logging part and `import_quietly` imports a noisy
  module (TensorFlow prints its oneDNN and CPU-feature lines straight to file descriptor 2 at import, whatever
  TF_CPP_MIN_LOG_LEVEL says) with that descriptor pointed at /dev/null.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import traceback
import warnings
from types import ModuleType
from typing import Callable, Iterator, NoReturn, Sequence

from efficientnetv2_jax import allocator

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
VERBOSE_FLAG = "--verbose"
MAX_MESSAGE_CHARS = 600
# Python loggers of libraries that log routine progress at INFO/WARNING (Orbax logs through absl).
_NOISY_LOGGERS = ("absl", "jax", "orbax", "tensorflow", "h5py", "keras", "clu")


class UsageError(ValueError):
    """Bad command-line usage or input (missing file, unknown name, wrong weights): one line, exit code 2."""


def verbose_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether `--verbose` is on the command line (`argv`, default sys.argv)."""
    return VERBOSE_FLAG in (sys.argv[1:] if argv is None else argv)


def add_verbose_flag(parser) -> None:
    """Adds `--verbose` to an argparse parser, so that it is documented in --help and accepted."""
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show third-party logs and the traceback of an error")


def quiet_third_party(verbose: bool = False) -> None:
    """Silences library logs below ERROR, Python warnings and TF's C++ INFO/WARNING logs, unless `verbose`."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null for the block (C++ libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w", encoding="utf-8") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def import_quietly(module: str, verbose: bool | None = None) -> ModuleType:
    """Imports `module` with its start-up lines on stderr discarded (kept with --verbose); errors still raise."""
    verbose = verbose_requested() if verbose is None else verbose
    if verbose or module in sys.modules:
        return importlib.import_module(module)
    with _stderr_to_devnull():
        return importlib.import_module(module)


def one_line(error: BaseException) -> str:
    """The error's message as one line (whitespace collapsed, capped), or its type name when it has none."""
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    if not text:
        text = type(error).__name__
    elif not isinstance(error, UsageError) and not isinstance(error, (ValueError, OSError)):
        text = f"{type(error).__name__}: {text}"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS - 3] + "..."


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *,
        usage_errors: tuple[type[BaseException], ...] = (UsageError,)) -> int:
    """Calls `main(argv)` under the convention and returns the exit code; `usage_errors` map to exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = verbose_requested(argv)
    quiet_third_party(verbose)
    allocator.pin_cpu_backend_without_accelerator()  # Else JAX probes an installed libtpu: lines of warnings.
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # pylint: disable=broad-except  # The convention: every failure is one line.
        if verbose:
            traceback.print_exc()
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, usage_errors) else EXIT_FAILURE
    return EXIT_OK if code is None else int(code)


def run_main(main: Callable[[list[str]], int | None], **kwargs) -> NoReturn:
    """`sys.exit(run(main))` for a module's `if __name__ == "__main__":` block."""
    sys.exit(run(main, **kwargs))
