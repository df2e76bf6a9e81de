"""Exponential moving average of parameters and BN statistics with TF's `ExponentialMovingAverage` semantics.

The official trainer builds `tf.train.ExponentialMovingAverage(decay, num_updates=global_step)` and runs
`ema.apply(trainable variables + BN moving mean/variance)` under a control dependency on the train op, which has
already incremented the global step: the t-th update (t = 1, 2, ...) therefore uses decay min(d, (1+t)/(10+t))
with t the step count AFTER the optimizer update. The shadow copies start at the variables' initial values.
tests/test_optimizer.py checks this against TensorFlow itself.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ema_decay_at(num_updates: jax.Array | int, decay: float) -> jax.Array:
    """TF's effective decay min(decay, (1+t)/(10+t)); a decay of 0 makes the average track the latest values."""
    t = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def ema_update(shadow: Any, values: Any, decay: jax.Array) -> Any:
    """One TF update of every leaf: shadow -= (1 - decay) * (shadow - value), in the shadow's dtype."""
    return jax.tree.map(lambda s, v: s - ((1.0 - decay) * (s - v.astype(s.dtype))).astype(s.dtype), shadow, values)
