"""The official input normalisation of each variant, applied on the device to uint8 or [0, 255] images."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from efficientnetv2_jax.models.variants import get_variant

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def normalize_images(images: jax.Array, model_name: str, dtype=jnp.float32) -> jax.Array:
    """(x-128)/128 for S/M/L/XL; (x-mean)/std with ImageNet statistics for B0-B3 (the official V1 recipe)."""
    x = jnp.asarray(images).astype(jnp.float32)
    if get_variant(model_name).normalization == "v2":
        x = (x - 128.0) / 128.0
    else:
        x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    return x.astype(dtype)
