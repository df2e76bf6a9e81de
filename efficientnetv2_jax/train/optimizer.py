"""The official optimizer: coupled L2 on kernels, optional clipping, TF1 RMSProp, and the LR schedules.

Semantics of google/automl `efficientnetv2/main.py` + `utils.py` (reference/official.md §2.3):
- TF1 `RMSPropOptimizer(lr, decay=.9, momentum=.9, epsilon=1e-3)`: the `rms` slot starts at 1, epsilon sits
  inside the square root and the learning rate is applied inside the momentum buffer
  (ms = d*ms + (1-d)*g^2; mom = m*mom + lr*g/sqrt(ms+eps); w -= mom), which is exactly
  `optax.rmsprop(lr, decay, eps, initial_scale=1.0, eps_in_sqrt=True, momentum=m)`
  (scale_by_rms -> scale_by_learning_rate -> trace); tests/test_optimizer.py checks it against TensorFlow.
- Weight decay is the L2 term wd * sum(w^2)/2 added to the loss, i.e. wd*w added to the gradient before the
  optimizer, on kernels only (the official regex excludes bias/gamma/beta: BN scale/bias and all biases).
- `gclip` (off by default): every gradient is clipped by its own norm, then all by their global norm. The
  official TPU code clips each core's gradient before the cross-core sum; here the global-batch gradient is
  clipped (the same when there is one core).
- LR: scaled_lr = base * batch/256 (lr_min is scaled the same way); exponential = scaled_lr *
  0.97^floor(step / (2.4 * steps_per_epoch)) with the exponent counted from step 0, cosine / linear over the
  run's length; then max(lr, lr_min); then, for step < int(warmup_epochs * steps_per_epoch), the linear warm-up
  scaled_lr * step / warmup_steps, which overrides everything else (also lr_min).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("exponential", "cosine", "linear", "constant")
OPTIMIZERS = ("rmsprop", "momentum", "sgd", "adamw")


def kernel_mask(params: Any) -> Any:
    """True for every leaf named `kernel` (conv, depthwise, SE and dense weights): the leaves that get L2."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def scaled_lr(lr_per_256: float, batch_size: int) -> float:
    """The official linear scaling rule: an LR given per 256 examples, times batch_size / 256."""
    return lr_per_256 * batch_size / 256.0


def schedule_length(config: ml_collections.ConfigDict, steps_per_epoch: float) -> float:
    """The run length cosine/linear decay over: max(min_steps, total_steps or epochs * steps_per_epoch).

    Like the official `train_steps` inside `model_fn`, the epoch-based length is not rounded.
    """
    length = config.total_steps if config.total_steps > 0 else config.total_epochs * steps_per_epoch
    return float(max(length, config.min_steps, 1))


def make_lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: float) -> optax.Schedule:
    """The official `WarmupLearningRateSchedule` of `config.lr`, as a function of the global step."""
    lc = config.lr
    if lc.schedule not in SCHEDULES:
        raise ValueError(f"Unknown lr.schedule {lc.schedule!r}; valid choices: {', '.join(SCHEDULES)}.")
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}.")
    if lc.schedule == "exponential" and lc.decay_epochs <= 0:
        raise ValueError(f"lr.decay_epochs must be > 0 for the exponential schedule, got {lc.decay_epochs}.")
    peak = scaled_lr(lc.base, config.batch_size)
    lr_min = scaled_lr(lc.min, config.batch_size)
    warmup_steps = int(lc.warmup_epochs * steps_per_epoch)
    decay_period = lc.decay_epochs * steps_per_epoch
    length = schedule_length(config, steps_per_epoch)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        if lc.schedule == "exponential":
            lr = peak * jnp.float32(lc.decay_factor) ** jnp.floor(step / decay_period)
        elif lc.schedule == "cosine":
            lr = 0.5 * peak * (1.0 + jnp.cos(jnp.pi * step / length))
        elif lc.schedule == "linear":
            lr = (1.0 - step / length) * peak
        else:
            lr = jnp.full_like(step, peak)
        if lr_min > 0:
            lr = jnp.maximum(lr, lr_min)
        if warmup_steps > 0:
            lr = jnp.where(step < warmup_steps, peak * step / warmup_steps, lr)
        return lr

    return schedule


def clip_each_then_global(max_norm: float) -> optax.GradientTransformation:
    """Official `gclip`: clip every gradient by its own L2 norm, then all of them by their global norm."""

    def clip_leaf(g):
        norm = jnp.sqrt(jnp.sum(jnp.square(g)))
        return g * (max_norm / jnp.maximum(norm, max_norm))

    return optax.chain(optax.stateless(lambda updates, params: jax.tree.map(clip_leaf, updates)),
                       optax.clip_by_global_norm(max_norm))


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: float) -> optax.GradientTransformation:
    """L2 on kernels -> optional clipping -> `optimizer.name` driven by the LR schedule.

    rmsprop: TF1 RMSProp (official); momentum: TF1 MomentumOptimizer; sgd: plain gradient descent; adamw:
    AdamW with decoupled weight decay `weight_decay` on kernels instead of the coupled L2 term.
    """
    oc = config.optimizer
    if oc.name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer.name {oc.name!r}; valid choices: {', '.join(OPTIMIZERS)}.")
    if config.weight_decay < 0 or config.grad_clip < 0:
        raise ValueError(f"weight_decay and grad_clip must be >= 0 (0 = off), got {config.weight_decay} and "
                         f"{config.grad_clip}.")
    schedule = make_lr_schedule(config, steps_per_epoch)
    parts = []
    if config.weight_decay > 0 and oc.name != "adamw":
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=kernel_mask))
    if config.grad_clip > 0:
        parts.append(clip_each_then_global(config.grad_clip))
    if oc.name == "rmsprop":
        parts.append(optax.rmsprop(schedule, decay=oc.decay, eps=oc.eps, initial_scale=1.0, eps_in_sqrt=True,
                                   momentum=oc.momentum))
    elif oc.name == "momentum":
        parts.append(optax.sgd(schedule, momentum=oc.momentum))
    elif oc.name == "sgd":
        parts.append(optax.sgd(schedule))
    else:
        parts.append(optax.adamw(schedule, weight_decay=config.weight_decay, mask=kernel_mask))
    return optax.chain(*parts)
