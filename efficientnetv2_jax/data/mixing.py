"""Mixup and CutMix with the official EfficientNetV2 semantics: parameters on the host, mixing on the device.

Official rules (google/automl ``datasets.py``): mixup weight w ~ Beta(a, a), w = max(w, 1-w), image and
label = w*self + (1-w)*partner. CutMix: a box with a uniform centre, side sqrt(1 - Beta(a, a)) * S (int),
clipped at the borders; the partner's pixels fill the box and the label weight of the partner is the box's
actual area fraction. The partner is the batch reversed; when both alphas are on, the first half of the
batch gets mixup and the second half cutmix, each reversed within its half.

``mixing_params`` computes all of that from (seed, global batch size) in numpy, including ``mix_partner``,
the global index of each example's partner, so ``apply_mixing`` is a pure function of the global batch:
the result does not depend on how many hosts or devices hold it.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

MIXING_KEYS = ("mixup_lambda", "cutmix_box", "mix_partner")


def _rng(seed: Any) -> np.random.Generator:
    """A numpy generator that is a pure function of an int seed array (e.g. shape [2] int64)."""
    words = [int(word) % 2**64 for word in np.asarray(seed).reshape(-1)]
    return np.random.default_rng(words)


def partner_indices(batch_size: int, mixup_on: bool, cutmix_on: bool) -> np.ndarray:
    """int32 [B]: reversed batch, or reversed within each half when both mixup and cutmix are on."""
    indices = np.arange(batch_size)
    if mixup_on and cutmix_on:
        half = batch_size // 2
        return np.concatenate([indices[:half][::-1], indices[half:][::-1]]).astype(np.int32)
    if mixup_on or cutmix_on:
        return indices[::-1].astype(np.int32)
    return indices.astype(np.int32)


def cutmix_boxes(rng: np.random.Generator, count: int, image_size: int, alpha: float) -> np.ndarray:
    """int32 [count, 4] (y0, x0, y1, x1): official ``cutmix_mask`` boxes."""
    centre_x = rng.integers(0, image_size, size=count)
    centre_y = rng.integers(0, image_size, size=count)
    area = rng.beta(alpha, alpha, size=count).astype(np.float32)
    side = (np.sqrt(1.0 - area) * np.float32(image_size)).astype(np.int32)
    x0 = np.clip(centre_x - side // 2, 0, image_size)
    y0 = np.clip(centre_y - side // 2, 0, image_size)
    x1 = np.clip(centre_x + side // 2, 0, image_size)
    y1 = np.clip(centre_y + side // 2, 0, image_size)
    return np.stack([y0, x0, y1, x1], axis=1).astype(np.int32)


def mixing_params(seed: Any, batch_size: int, image_size: int, mixup_alpha: float,
                  cutmix_alpha: float) -> dict[str, np.ndarray]:
    """Per-example ``mixup_lambda`` float32 [B] (1 = no mixup), ``cutmix_box`` int32 [B, 4] (empty = none)
    and ``mix_partner`` int32 [B] for one global batch."""
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
    rng = _rng(seed)
    mixup_on, cutmix_on = mixup_alpha > 0, cutmix_alpha > 0
    first_cutmix = batch_size // 2 if (mixup_on and cutmix_on) else (0 if cutmix_on else batch_size)
    mixup_count = first_cutmix if mixup_on else 0
    lam = np.ones([batch_size], np.float32)
    if mixup_count:
        weight = rng.beta(mixup_alpha, mixup_alpha, size=mixup_count).astype(np.float32)
        lam[:mixup_count] = np.maximum(weight, 1.0 - weight)
    boxes = np.zeros([batch_size, 4], np.int32)
    if cutmix_on:
        boxes[first_cutmix:] = cutmix_boxes(rng, batch_size - first_cutmix, image_size, cutmix_alpha)
    return {"mixup_lambda": lam, "cutmix_box": boxes,
            "mix_partner": partner_indices(batch_size, mixup_on, cutmix_on)}


def apply_mixing(images: jax.Array, labels: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Mix float images [B, H, W, C] and labels [B, K] with the batch's mixing params (jit-able, pure JAX).

    A batch without the mixing keys (mixup and cutmix off) is returned unchanged.
    """
    if not all(key in batch for key in MIXING_KEYS):
        return images, labels
    partner = batch["mix_partner"]
    lam = batch["mixup_lambda"].astype(jnp.float32)
    box = batch["cutmix_box"]
    height, width = images.shape[1], images.shape[2]
    partner_images = jnp.take(images, partner, axis=0)
    partner_labels = jnp.take(labels, partner, axis=0)

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
