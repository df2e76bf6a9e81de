"""Child processes in tests without hangs or orphans: bounded waits, kill in `finally`, coordinator port retries.

Outputs go to files, not pipes, so a chatty child never blocks on a full pipe while the test waits on another.
A JAX coordinator port is picked free and then bound by the child, so another program may take it in between:
the coordinator then logs one of `COORDINATOR_BIND_FAILURES` and dies, and `run_processes` retries on a fresh port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from typing import Callable, Sequence

# The suite compiles with LLVM's optimisation level 0: the same XLA programs (HLO) in two thirds of the compile time
# on CPU (test_resume's programs: 32.8 -> 22.1 s, benchmarks/compile_overheads.py). Step speed is not under test.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"

# What XLA's gRPC coordination service logs, or JAX raises, when the coordinator cannot bind its port.
COORDINATOR_BIND_FAILURES = ("Failed to add port to server", "Failed to start RPC server")
POLL_SECONDS = 0.05


def free_port() -> int:
    """A port that was free a moment ago on every interface (the coordinator binds [::]:port)."""
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def cpu_xla_flags(devices: int) -> str:
    """XLA_FLAGS for `devices` virtual CPU devices, compiling as the suite does."""
    return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    """The environment of a child JAX process on `devices` virtual CPU devices, compiling as the suite does."""
    return dict(os.environ, XLA_FLAGS=cpu_xla_flags(devices), JAX_PLATFORMS="cpu", **extra)


class Child:
    """One started process whose stdout+stderr go to a temporary file; `kill()` is safe to call at any time."""

    def __init__(self, command: Sequence[str], **popen_kwargs):
        self._log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self.process = subprocess.Popen(list(command), stdout=self._log, stderr=subprocess.STDOUT, text=True,
                                        **popen_kwargs)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def output(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def send_signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        """Kills the process if it still runs and reaps it (bounded)."""
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)


def wait_all(children: Sequence[Child], timeout: float, until: Callable[[], bool] | None = None) -> bool:
    """Waits until every child exited, one failed (the others would wait for it forever), `until()` holds, or
    `timeout` seconds passed; True unless the time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [child.returncode for child in children]
        if all(code is not None for code in codes) or any(code not in (None, 0) for code in codes):
            return True
        if until is not None and until():
            return True
        time.sleep(POLL_SECONDS)
    return False


def finish(children: Sequence[Child], timeout: float) -> list[tuple[int, str]]:
    """Waits for started children (see `wait_all`), kills whatever still runs, and returns their (exit code,
    output); a child that had to be killed reports a negative exit code and a `[test] killed` line."""
    try:
        finished = wait_all(children, timeout)
    finally:
        for child in children:
            child.kill()
    note = "" if finished else f"\n[test] killed after {timeout:.0f} s"
    return [(child.returncode, child.output() + note) for child in children]


def run_processes(launch: Callable[[str], list[Child]], timeout: float, attempts: int = 3) -> list[tuple[int, str]]:
    """Starts processes with `launch(coordinator_address)` and returns their (exit code, output).

    Waits at most `timeout` seconds per attempt; every process is killed when it is over. When the coordinator
    could not bind its port, retries on a new one.
    """
    attempt = 1
    while True:
        results = finish(launch(f"localhost:{free_port()}"), timeout)
        bind_failed = any(failure in out for _, out in results for failure in COORDINATOR_BIND_FAILURES)
        if attempt == attempts or not bind_failed:
            return results
        attempt += 1


def run_together(commands: Sequence[Sequence[str]], timeout: float, **popen_kwargs) -> list[tuple[int, str]]:
    """Runs processes side by side, all within `timeout` seconds (killed otherwise); their (exit code, output)."""
    children = []
    try:
        for command in commands:
            children.append(Child(command, **popen_kwargs))
    except BaseException:
        finish(children, 0)
        raise
    return finish(children, timeout)


def run_one(command: Sequence[str], timeout: float, **popen_kwargs) -> tuple[int, str]:
    """Runs one process to completion within `timeout` seconds (killed otherwise); (exit code, output)."""
    return run_together([command], timeout, **popen_kwargs)[0]
