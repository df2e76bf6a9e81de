"""The compute dtype: the official mixed precision (bfloat16 compute on TPU and GPU, float32 on CPU) resolved in
one place from the config's 'auto' | 'float32' | 'bfloat16'.

Only activations and matrix products use it: parameters, BN statistics, the loss and the logits stay float32
(the layers cast), and so do checkpoints. The official TPU default is `runtime.mixed_precision=True` (main.py).
XLA:CPU has no fast bfloat16 convolutions, so 'auto' keeps float32 there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)


def resolve_dtype(dtype: str, backend: str | None = None) -> jnp.dtype:
    """'auto' -> bfloat16 on TPU/GPU and float32 on CPU (for `backend`, default JAX's); else the named dtype."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"Unknown dtype {dtype!r}; valid choices: {', '.join(DTYPE_CHOICES)}.")
    if dtype == "auto":
        return jnp.float32 if (backend or jax.default_backend()) == "cpu" else jnp.bfloat16
    return DTYPES[dtype]
