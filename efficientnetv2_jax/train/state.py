"""The train state: parameters, BN statistics, optimizer state and their EMA, as one plain pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from efficientnetv2_jax.train.ema import ema_decay_at, ema_update


@struct.dataclass
class TrainState:
    """step, params, batch_stats, opt_state, ema_params, ema_batch_stats (what a checkpoint holds)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any

    @classmethod
    def create(cls, *, params: Any, batch_stats: Any, tx: optax.GradientTransformation) -> TrainState:
        """Step 0; the EMA starts at the initial values, as TF's shadow variables do (copies, safe to donate)."""
        copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731
        return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                   ema_params=copy(params), ema_batch_stats=copy(batch_stats))

    def apply_gradients(self, *, grads: Any, batch_stats: Any, tx: optax.GradientTransformation,
                        ema_decay: float) -> TrainState:
        """The official order: optimizer update (step += 1), then the EMA of params and the new BN statistics.

        `batch_stats` are the statistics updated by this step's forward pass; the EMA decay uses the new step.
        """
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        step = self.step + 1
        decay = ema_decay_at(step, ema_decay)
        return self.replace(step=step, params=params, batch_stats=batch_stats, opt_state=opt_state,
                            ema_params=ema_update(self.ema_params, params, decay),
                            ema_batch_stats=ema_update(self.ema_batch_stats, batch_stats, decay))
