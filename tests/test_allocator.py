"""The CPU allocator switch: CLIs re-execute themselves under mimalloc on the CPU backend, and only there."""

import os
import subprocess
import sys

from efficientnetv2_jax import allocator

# Re-executes like a CLI entry point would, then reports which allocator the process runs under.
PROBE = ("from efficientnetv2_jax import allocator; allocator.reexec_with_fast_allocator(); "
         "maps = open('/proc/self/maps').read(); print(allocator.active_allocator(), 'libmimalloc' in maps)")


def run_probe(**env_overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EFFICIENTNETV2_JAX_ALLOCATOR")}
    env.pop("LD_PRELOAD", None)
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=False)


def test_mimalloc_ships_with_the_package():
    library = allocator.mimalloc_library()
    assert library is not None and os.path.isfile(library)


def test_cpu_backend_reexecutes_under_mimalloc_once():
    done = run_probe(JAX_PLATFORMS="cpu")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["mimalloc", "True"]


def test_accelerator_backend_and_opt_out_keep_the_system_allocator():
    for env in ({"JAX_PLATFORMS": "tpu"}, {"JAX_PLATFORMS": "cpu", allocator.ENV_CHOICE: "system"}):
        done = run_probe(**env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["system", "False"], env


def test_forcing_mimalloc_overrides_the_backend_check():
    done = run_probe(JAX_PLATFORMS="tpu", **{allocator.ENV_CHOICE: "mimalloc"})
    assert done.stdout.split() == ["mimalloc", "True"], done.stderr


def test_unknown_choice_is_one_clear_line():
    done = run_probe(**{allocator.ENV_CHOICE: "jemalloc"})
    assert done.returncode != 0
    assert done.stderr.strip() == (f"error: {allocator.ENV_CHOICE}='jemalloc'; valid values: auto, mimalloc, system.")


def test_without_accelerator_devices_the_cpu_backend_is_pinned_quietly_and_gets_mimalloc():
    """libtpu installed (the planner needs it) but no TPU chips: CPU backend, mimalloc, and no libtpu warnings."""
    probe = ("from efficientnetv2_jax import allocator; allocator.pin_cpu_backend_without_accelerator(); "
             "allocator.reexec_with_fast_allocator(); import jax, os; "
             "print(allocator.active_allocator(), os.environ['JAX_PLATFORMS'], jax.default_backend())")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EFFICIENTNETV2_JAX_ALLOCATOR", "JAX_PLATFORMS"))}
    env.pop("LD_PRELOAD", None)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["mimalloc", "cpu", "cpu"]
    assert "tpu" not in done.stderr.lower(), done.stderr
