"""Mixup and CutMix with the official EfficientNetV2 semantics: random draws on the host, mixing on the device,
partners within each device's shard.

Official rules (google/automl ``datasets.py``, applied to each TPU core's batch): mixup weight w ~ Beta(a, a),
w = max(w, 1-w), image and label = w*self + (1-w)*partner. CutMix: a box with a uniform centre, side
sqrt(1 - Beta(a, a)) * S (int), clipped at the borders; the partner's pixels fill the box and the label weight of
the partner is the box's actual area fraction. The partner is the core's batch reversed; when both alphas are on,
the first half of the core's batch gets mixup and the second half cutmix, each reversed within its half.

Here the "core's batch" is a group of ``group_size`` consecutive examples of the global batch: the trainer passes
the per-device batch, so partners never leave a device (no gather of the global batch; on v4/v5p megacore
devices the group is the device's two cores' batch). ``mixing_params`` draws every example's weight and box
from (seed, step, global example index) alone (a counter-based hash, then the Beta inverse CDF), so a draw does
not depend on the batch size or on which host reads the example; which of the two an example receives, and its
partner, follow from its position in its group, on the device. Only the keys of the methods that are on are
present, which tells the compiled step statically what to apply.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

MIXING_KEYS = ("mixup_lambda", "cutmix_box")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective scramble of uint64 words."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def example_uniforms(seed: Any, indices: np.ndarray, streams: int) -> np.ndarray:
    """float64 [len(indices), streams] in [0, 1): a pure function of (seed words, example index, stream)."""
    with np.errstate(over="ignore"):
        key = np.zeros((), np.uint64)
        for word in np.asarray(seed).reshape(-1):
            key = _mix64(key ^ (np.uint64(int(word) % 2**64) + _GOLDEN))
        counters = np.asarray(indices, np.uint64)[:, None] * np.uint64(streams) + np.arange(streams, dtype=np.uint64)
        bits = _mix64(key ^ _mix64(counters + _GOLDEN))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def partner_indices(group_size: int, mixup_on: bool, cutmix_on: bool) -> np.ndarray:
    """int32 [n]: each position's partner within a group: reversed, or reversed within each half when both
    mixup and cutmix are on."""
    indices = np.arange(group_size)
    if mixup_on and cutmix_on:
        half = group_size // 2
        return np.concatenate([indices[:half][::-1], indices[half:][::-1]]).astype(np.int32)
    if mixup_on or cutmix_on:
        return indices[::-1].astype(np.int32)
    return indices.astype(np.int32)


def mixup_positions(group_size: int, mixup_on: bool, cutmix_on: bool) -> np.ndarray:
    """bool [n]: the positions of a group that get mixup (the others get cutmix, when it is on)."""
    first_cutmix = group_size // 2 if (mixup_on and cutmix_on) else (0 if cutmix_on else group_size)
    return np.arange(group_size) < first_cutmix


def mixing_params(seed: Any, batch_size: int, image_size: int, mixup_alpha: float, cutmix_alpha: float,
                  first_index: int = 0) -> dict[str, np.ndarray]:
    """The draws of examples first_index .. first_index+batch_size-1 of one step (seed = e.g. [seed, step]):
    ``mixup_lambda`` float32 [B] (mixup on) and ``cutmix_box`` int32 [B, 4] (y0, x0, y1, x1; cutmix on)."""
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
    u = example_uniforms(seed, np.arange(first_index, first_index + batch_size), 4)
    params = {}
    if mixup_alpha > 0:
        weight = special.betaincinv(mixup_alpha, mixup_alpha, u[:, 0]).astype(np.float32)
        params["mixup_lambda"] = np.maximum(weight, 1.0 - weight)
    if cutmix_alpha > 0:
        centre_x = np.minimum((u[:, 1] * image_size).astype(np.int64), image_size - 1)
        centre_y = np.minimum((u[:, 2] * image_size).astype(np.int64), image_size - 1)
        area = special.betaincinv(cutmix_alpha, cutmix_alpha, u[:, 3]).astype(np.float32)
        side = (np.sqrt(1.0 - area) * np.float32(image_size)).astype(np.int64)
        boxes = [np.clip(centre_y - side // 2, 0, image_size), np.clip(centre_x - side // 2, 0, image_size),
                 np.clip(centre_y + side // 2, 0, image_size), np.clip(centre_x + side // 2, 0, image_size)]
        params["cutmix_box"] = np.stack(boxes, axis=1).astype(np.int32)
    return params


def apply_mixing(images: jax.Array, labels: jax.Array, batch: Mapping[str, jax.Array],
                 group_size: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Mix float images [B, H, W, C] and labels [B, K] within groups of `group_size` consecutive examples
    (None: the whole batch is one group); jit-able, pure JAX. A batch without mixing keys is returned unchanged.

    The partner is a fixed permutation inside each group, so with `group_size` = the per-device batch XLA keeps
    it on the device (a gather along the unsharded axis), whatever the device count.
    """
    mixup_on, cutmix_on = "mixup_lambda" in batch, "cutmix_box" in batch
    if not (mixup_on or cutmix_on):
        return images, labels
    batch_size, height, width = images.shape[:3]
    group = group_size or batch_size
    if batch_size % group:
        raise ValueError(f"Batch {batch_size} is not divisible by the mixing group size {group}.")
    partner = partner_indices(group, mixup_on, cutmix_on)
    gets_mixup = np.tile(mixup_positions(group, mixup_on, cutmix_on), batch_size // group)

    def partner_of(x: jax.Array) -> jax.Array:
        return x.reshape(batch_size // group, group, *x.shape[1:])[:, partner].reshape(x.shape)

    partner_images, partner_labels = partner_of(images), partner_of(labels)
    lam = jnp.ones([batch_size], jnp.float32)
    if mixup_on:
        lam = jnp.where(gets_mixup, batch["mixup_lambda"].astype(jnp.float32), 1.0)
    box = jnp.zeros([batch_size, 4], jnp.int32)
    if cutmix_on:
        box = jnp.where(gets_mixup[:, None], 0, batch["cutmix_box"])

    image_lam = lam.astype(images.dtype)[:, None, None, None]
    mixed = image_lam * images + (1 - image_lam) * partner_images
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    in_box = ((rows >= box[:, 0, None, None]) & (rows < box[:, 2, None, None])
              & (cols >= box[:, 1, None, None]) & (cols < box[:, 3, None, None]))
    mixed = jnp.where(in_box[..., None], partner_images, mixed)

    box_area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    box_fraction = box_area.astype(jnp.float32) / float(height * width)
    self_weight = (lam * (1.0 - box_fraction)).astype(labels.dtype)[:, None]
    return mixed, self_weight * labels + (1 - self_weight) * partner_labels
