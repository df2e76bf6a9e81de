"""Run CPU jobs under mimalloc: XLA:CPU allocates fresh temporaries every step, and glibc's malloc returns them to
the OS and page-faults them back in, which costs 1.5x on a training step (benchmarks/train_step.py --allocator).

An allocator can only be swapped before the process starts, so `reexec_with_fast_allocator()` re-executes the
current command once with `LD_PRELOAD` set to the mimalloc shipped by the `cmeel-mimalloc` wheel. Only for the
CPU backend on Linux: TPU VMs and GPU machines keep their own allocator. `EFFICIENTNETV2_JAX_ALLOCATOR=system`
turns it off; `=mimalloc` asks for it and fails loudly when it cannot be had.

The backend is decided without importing JAX: an accelerator counts when its JAX plugin is installed AND its device
nodes exist. libtpu alone (installed for the pod planner's AOT compiles) does not make a machine a TPU VM, and
`pin_cpu_backend_without_accelerator()` then sets JAX_PLATFORMS=cpu so that JAX does not probe for a TPU (which
prints several lines of libtpu warnings on every command).
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import sys

ENV_CHOICE = "EFFICIENTNETV2_JAX_ALLOCATOR"
_ENV_DONE = "EFFICIENTNETV2_JAX_ALLOCATOR_ACTIVE"
_CHOICES = ("auto", "mimalloc", "system")
# Keep freed memory mapped: a training step frees and re-allocates the same buffer sizes every step.
_MIMALLOC_DEFAULTS = {"MIMALLOC_PURGE_DELAY": "-1"}
_TPU_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*")  # TPU v2-v4 / v5+ chips on a Cloud TPU VM
_GPU_DEVICES = ("/dev/nvidia[0-9]*",)
# Each accelerator plugin JAX can load, with the device nodes that say its hardware is there.
_ACCELERATOR_PLUGINS = {
    "libtpu": _TPU_DEVICES, "jax_cuda12_plugin": _GPU_DEVICES, "jax_cuda13_plugin": _GPU_DEVICES,
    "jax_rocm60_plugin": ("/dev/kfd",), "jax_rocm7_plugin": ("/dev/kfd",),
}


def mimalloc_library() -> str | None:
    """Path of libmimalloc.so from the installed `cmeel-mimalloc` distribution, or None when it is absent."""
    try:
        files = importlib.metadata.files("cmeel-mimalloc") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    libraries = sorted(str(f.locate()) for f in files if f.name.startswith("libmimalloc.so."))
    return libraries[0] if libraries else None


def tpu_device_present() -> bool:
    """Whether this machine has TPU chips (a Cloud TPU VM), whatever is installed."""
    return any(glob.glob(pattern) for pattern in _TPU_DEVICES)


def accelerator_present() -> bool:
    """Whether JAX has an accelerator to use here: an installed plugin whose devices exist."""
    return any(importlib.util.find_spec(plugin) and any(glob.glob(p) for p in patterns)
               for plugin, patterns in _ACCELERATOR_PLUGINS.items())


def _runs_on_cpu_backend() -> bool:
    """True unless JAX is pointed at, or will find, an accelerator (decided without importing JAX)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator_present()


def pin_cpu_backend_without_accelerator() -> None:
    """Sets JAX_PLATFORMS=cpu when it is unset and no accelerator is present (see the module docstring)."""
    if not os.environ.get("JAX_PLATFORMS") and not accelerator_present():
        os.environ["JAX_PLATFORMS"] = "cpu"


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
