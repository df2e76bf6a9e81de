"""Run CPU jobs under mimalloc: XLA:CPU allocates fresh temporaries every step, and glibc's malloc returns them to
the OS and page-faults them back in, which costs 1.5x on a training step (benchmarks/train_step.py --allocator).

An allocator can only be swapped before the process starts, so `reexec_with_fast_allocator()` re-executes the
current command once with `LD_PRELOAD` set to the mimalloc shipped by the `cmeel-mimalloc` wheel. Only for the
CPU backend on Linux: TPU VMs and GPU machines keep their own allocator. `EFFICIENTNETV2_JAX_ALLOCATOR=system`
turns it off; `=mimalloc` asks for it and fails loudly when it cannot be had.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

ENV_CHOICE = "EFFICIENTNETV2_JAX_ALLOCATOR"
_ENV_DONE = "EFFICIENTNETV2_JAX_ALLOCATOR_ACTIVE"
_CHOICES = ("auto", "mimalloc", "system")
# Keep freed memory mapped: a training step frees and re-allocates the same buffer sizes every step.
_MIMALLOC_DEFAULTS = {"MIMALLOC_PURGE_DELAY": "-1"}
_ACCELERATOR_PLUGINS = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")


def mimalloc_library() -> str | None:
    """Path of libmimalloc.so from the installed `cmeel-mimalloc` distribution, or None when it is absent."""
    try:
        files = importlib.metadata.files("cmeel-mimalloc") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    libraries = sorted(str(f.locate()) for f in files if f.name.startswith("libmimalloc.so."))
    return libraries[0] if libraries else None


def _runs_on_cpu_backend() -> bool:
    """True unless JAX is pointed at, or has a plugin for, an accelerator (decided without importing JAX)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def reexec_with_fast_allocator() -> None:
    """Re-executes this process under mimalloc when that helps (see the module docstring); returns otherwise."""
    choice = os.environ.get(ENV_CHOICE, "auto")
    if choice not in _CHOICES:
        raise SystemExit(f"error: {ENV_CHOICE}={choice!r}; valid values: {', '.join(_CHOICES)}.")
    if choice == "system" or os.environ.get(_ENV_DONE) or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return
    library = mimalloc_library()
    if choice == "auto" and not (sys.platform == "linux" and library and _runs_on_cpu_backend()):
        return
    if library is None or sys.platform != "linux":
        raise SystemExit(f"error: {ENV_CHOICE}=mimalloc needs Linux and the cmeel-mimalloc package "
                         "(pip install cmeel-mimalloc).")
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD")]))
    env[_ENV_DONE] = library
    for key, value in _MIMALLOC_DEFAULTS.items():
        env.setdefault(key, value)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def active_allocator() -> str:
    """'mimalloc' when this process was re-executed under it, else 'system' (for logs and benchmark output)."""
    return "mimalloc" if os.environ.get(_ENV_DONE) else "system"
