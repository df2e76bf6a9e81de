"""Input normalisation, a property of the dataset recipe (official datasets.py / preprocessing.py), on the device.

The official code picks it by the dataset config's augmentation name, not by the model:
  'v2'       (x - 128) / 128: ImageNet-1k S/M/L/XL (`preprocess_image`) and ImageNet-21k for every variant
             (`ImageNet21k` sets augname=None, so B0-B3 get it too);
  'imagenet' (x - mean) / std with ImageNet statistics: ImageNet-1k B0-B3 (the `effnetv1_` legacy recipe);
  'finetune' (x / 255 - 0.5) / 0.5: `ImagenetFt` and the transfer datasets that copy it (`preprocess_for_finetune`).
Configs record the choice in `config.dataset.normalization`; without a config the variant's ImageNet-1k one applies.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from efficientnetv2_jax.models.variants import get_variant

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
NORMALIZATIONS = ("v2", "imagenet", "finetune")


def variant_normalization(model_name: str) -> str:
    """The variant's ImageNet-1k recipe: 'v2' for S/M/L/XL, 'imagenet' for B0-B3."""
    return get_variant(model_name).normalization


def config_normalization(model_name: str, config: Any = None) -> str:
    """`config.dataset.normalization` when the config records one (checkpoints before it did: the variant's)."""
    dataset = getattr(config, "dataset", None) if config is not None else None
    recorded = dataset.get("normalization") if dataset is not None else None
    return recorded or variant_normalization(model_name)


def normalize_images(images: jax.Array, model_name: str, dtype=jnp.float32, normalization: str | None = None
                     ) -> jax.Array:
    """uint8 or [0, 255] NHWC images -> the model's inputs under `normalization` (None: the variant's 1k recipe)."""
    normalization = normalization or variant_normalization(model_name)
    x = jnp.asarray(images).astype(jnp.float32)
    if normalization == "v2":
        x = (x - 128.0) / 128.0
    elif normalization == "imagenet":
        x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    elif normalization == "finetune":
        x = (x / 255.0 - 0.5) / 0.5
    else:
        raise ValueError(f"Unknown normalization {normalization!r}; valid choices: {', '.join(NORMALIZATIONS)}.")
    return x.astype(dtype)
