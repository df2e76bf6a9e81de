"""EfficientNetV2 model zoo: `list_models()`, `create_model(name, num_classes, **overrides)`, `normalize_images`,
and `compiler_options()` for jitting a step fast on every backend."""

from __future__ import annotations

import dataclasses

from efficientnetv2_jax.models.compile_options import CPU_SCHEDULERS, compiler_options
from efficientnetv2_jax.models.efficientnetv2 import EfficientNetV2
from efficientnetv2_jax.models.layers import CONV_IMPLS
from efficientnetv2_jax.models.normalization import normalize_images
from efficientnetv2_jax.models.precision import resolve_dtype
from efficientnetv2_jax.models.variants import VariantSpec, get_variant, list_models

OVERRIDES = tuple(f.name for f in dataclasses.fields(EfficientNetV2)
                  if f.name not in ("model_name", "num_classes", "parent", "name"))


def create_model(name: str, num_classes: int = 1000, **overrides) -> EfficientNetV2:
    """Builds an official EfficientNetV2 variant; `overrides` change module fields (dtype, remat, ...)."""
    variant = get_variant(name)
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"Unknown override(s) {unknown} for create_model; valid: {', '.join(OVERRIDES)}.")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0 = no classifier), got {num_classes}.")
    if "conv_impl" in overrides and overrides["conv_impl"] not in CONV_IMPLS:
        raise ValueError(f"Unknown conv_impl {overrides['conv_impl']!r}; valid choices: {', '.join(CONV_IMPLS)}.")
    if isinstance(overrides.get("dtype"), str):  # 'auto' = bfloat16 on TPU/GPU, float32 on CPU.
        overrides["dtype"] = resolve_dtype(overrides["dtype"])
    return EfficientNetV2(model_name=variant.name, num_classes=num_classes, **overrides)


__all__ = ["CPU_SCHEDULERS", "EfficientNetV2", "VariantSpec", "compiler_options", "create_model", "get_variant",
           "list_models", "normalize_images", "resolve_dtype"]
