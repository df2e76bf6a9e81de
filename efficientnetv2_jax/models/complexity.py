"""Multiply-add counts of the convolutions and the classifier (the official README's FLOPs convention)."""

from __future__ import annotations

from efficientnetv2_jax.models.layers import same_padding
from efficientnetv2_jax.models.variants import FEATURE_SIZE, expand_blocks, get_variant, round_filters


def count_macs(model_name: str, image_size: int, num_classes: int = 1000) -> int:
    """Conv + dense multiply-adds of one image; BN, activations, pooling and the SE gate are not counted."""
    variant = get_variant(model_name)
    blocks = expand_blocks(variant.stages, variant.width, variant.depth)
    size = same_padding(image_size, 3, 2)[0]
    macs = size * size * 9 * 3 * blocks[0].in_filters  # Stem.
    for b in blocks:
        out = same_padding(size, b.kernel, b.stride)[0]
        k2 = b.kernel * b.kernel
        if b.fused:
            if b.expand_ratio == 1:
                macs += out * out * k2 * b.in_filters * b.out_filters
            else:
                macs += out * out * (k2 * b.in_filters * b.expanded_filters + b.expanded_filters * b.out_filters)
        else:
            if b.expand_ratio != 1:
                macs += size * size * b.in_filters * b.expanded_filters
            macs += out * out * k2 * b.expanded_filters + out * out * b.expanded_filters * b.out_filters
        if b.se_filters:
            macs += 2 * b.expanded_filters * b.se_filters
        size = out
    head = round_filters(FEATURE_SIZE, variant.width)
    macs += size * size * blocks[-1].out_filters * head + head * num_classes
    return macs
