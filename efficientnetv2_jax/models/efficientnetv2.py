"""The EfficientNetV2 network: stem, the official block sequence, head, pooling, dropout and classifier."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from efficientnetv2_jax.models.blocks import FusedMBConv, MBConv
from efficientnetv2_jax.models.layers import BatchNorm, Conv, dense_kernel_init
from efficientnetv2_jax.models.variants import FEATURE_SIZE, BlockArgs, expand_blocks, get_variant, round_filters


class ConvBNAct(nn.Module):
    """Conv -> BN -> SiLU, the stem and the head of the network."""

    features: int
    kernel_size: int
    stride: int
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    bn_group_size: int | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = Conv(self.features, self.kernel_size, self.stride, conv_impl=self.conv_impl, dtype=self.dtype,
                 name="conv")(x)
        x = BatchNorm(self.bn_momentum, self.bn_epsilon, self.bn_group_size, self.dtype, name="bn")(x, train)
        return nn.silu(x)


class EfficientNetV2(nn.Module):
    """EfficientNetV2 on NHWC float images already normalised (see `normalize_images`).

    `__call__(x, train)` returns logits; with `return_endpoints=True` a dict of the official endpoints
    ('stem', 'reduction_1'..'reduction_5', 'features', 'pooled_features' and 'logits' when num_classes > 0).
    `num_classes=0` builds the headless backbone (pooled features instead of logits).
    """

    model_name: str
    num_classes: int = 1000
    width: float | None = None  # None = the variant's official compound-scaling coefficients.
    depth: float | None = None
    dropout_rate: float | None = None  # None = the variant's official dropout.
    drop_connect_rate: float = 0.2  # 1 - survival_prob; 0 disables stochastic depth (21k pretraining).
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    bn_group_size: int | None = None  # Examples per BN statistics group; None = the whole global batch.
    conv_impl: str = "auto"
    dtype: Any = jnp.float32  # Compute dtype; parameters and BN statistics stay float32.
    remat: bool = False  # Recompute each block in the backward pass (saves activation memory).

    def block_args(self) -> list[BlockArgs]:
        v = get_variant(self.model_name)
        return expand_blocks(v.stages, v.width if self.width is None else self.width,
                             v.depth if self.depth is None else self.depth)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_endpoints: bool = False):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"Expected NHWC images with 3 channels, got shape {tuple(x.shape)}.")
        variant = get_variant(self.model_name)
        width = variant.width if self.width is None else self.width
        blocks = self.block_args()
        common = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, bn_group_size=self.bn_group_size,
                      conv_impl=self.conv_impl, dtype=self.dtype)

        endpoints = {}
        x = ConvBNAct(blocks[0].in_filters, 3, 2, name="stem", **common)(x, train)
        endpoints["stem"] = x

        reduction = 0
        for idx, args in enumerate(blocks):
            survival = 1.0 - self.drop_connect_rate * idx / len(blocks)
            cls = FusedMBConv if args.fused else MBConv
            if self.remat:
                cls = nn.remat(cls, static_argnums=(2,))
            x = cls(args, survival_prob=survival, name=f"blocks_{idx}", **common)(x, train)
            if idx == len(blocks) - 1 or blocks[idx + 1].stride > 1:
                reduction += 1
                endpoints[f"reduction_{reduction}"] = x

        x = ConvBNAct(round_filters(FEATURE_SIZE, width), 1, 1, name="head", **common)(x, train)
        endpoints["features"] = x
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        endpoints["pooled_features"] = x
        if self.num_classes > 0:
            rate = variant.dropout_rate if self.dropout_rate is None else self.dropout_rate
            if rate > 0:
                x = nn.Dropout(rate, deterministic=not train)(x)
            x = nn.Dense(self.num_classes, kernel_init=dense_kernel_init, dtype=self.dtype, name="classifier")(x)
            x = x.astype(jnp.float32)
            endpoints["logits"] = x
        return endpoints if return_endpoints else x
