"""JAX's persistent compilation cache, so a restarted (e.g. preempted) run does not recompile its steps."""

from __future__ import annotations

import logging
import posixpath

import jax

logger = logging.getLogger(__name__)

CACHE_DIRNAME = "jax_compilation_cache"


def default_cache_dir(workdir: str) -> str:
    """A cache folder beside the workdir, shared by the runs under the same parent (works for gs:// too)."""
    parent = posixpath.dirname(workdir.rstrip("/")) or "."
    return posixpath.join(parent, CACHE_DIRNAME)


def enable_compilation_cache(cache_dir: str, min_compile_time_secs: float = 0.0) -> None:
    """Turns on the persistent cache in `cache_dir` for compilations slower than `min_compile_time_secs`.

    Call it before the first jit compilation: JAX fixes the cache location at the first compile.
    """
    if not cache_dir:
        raise ValueError("cache_dir must be a non-empty path.")
    if min_compile_time_secs < 0:
        raise ValueError(f"min_compile_time_secs must be >= 0, got {min_compile_time_secs}.")
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    logger.info("Persistent compilation cache: %s (compiles >= %.1f s).", cache_dir, min_compile_time_secs)
