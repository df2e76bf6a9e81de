"""The EfficientNetV2 building blocks: squeeze-excite, MBConv and Fused-MBConv, as in the official code."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from efficientnetv2_jax.models.layers import BatchNorm, Conv
from efficientnetv2_jax.models.variants import BlockArgs


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 conv (bias) -> SiLU -> 1x1 conv (bias) -> sigmoid gate; the pool runs in float32."""

    reduced: int
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(Conv, kernel_size=1, use_bias=True, conv_impl=self.conv_impl, dtype=self.dtype)
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
        s = nn.silu(conv(self.reduced, name="reduce")(s))
        s = conv(x.shape[-1], name="expand")(s)
        return x * nn.sigmoid(s).astype(x.dtype)


def drop_connect(x: jax.Array, survival_prob: float, rng: jax.Array) -> jax.Array:
    """Official stochastic depth: keep each example's branch with prob. `survival_prob`, rescaled by 1/p."""
    keep = jnp.floor(survival_prob + jax.random.uniform(rng, (x.shape[0], 1, 1, 1), jnp.float32))
    return x / survival_prob * keep.astype(x.dtype)


class _Block(nn.Module):
    """Shared fields and the residual/stochastic-depth tail of both block types."""

    args: BlockArgs
    survival_prob: float = 1.0
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    bn_group_size: int | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    def conv(self, features: int, kernel: int, stride: int = 1, depthwise: bool = False, *, name: str) -> Conv:
        return Conv(features, kernel, stride, depthwise=depthwise, conv_impl=self.conv_impl, dtype=self.dtype,
                    name=name)

    def bn(self, name: str) -> BatchNorm:
        return BatchNorm(self.bn_momentum, self.bn_epsilon, self.bn_group_size, self.dtype, name=name)

    def residual(self, x: jax.Array, inputs: jax.Array, train: bool) -> jax.Array:
        if not self.args.has_residual:
            return x
        if train and self.survival_prob < 1.0:
            x = drop_connect(x, self.survival_prob, self.make_rng("dropout"))
        return x + inputs


class MBConv(_Block):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> SE -> linear 1x1 projection (+ residual)."""

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
        a = self.args
        x = inputs
        if a.expand_ratio != 1:
            x = self.conv(a.expanded_filters, 1, name="expand_conv")(x)
            x = nn.silu(self.bn("expand_bn")(x, train))
        x = self.conv(a.expanded_filters, a.kernel, a.stride, depthwise=True, name="dwconv")(x)
        x = nn.silu(self.bn("bn")(x, train))
        if a.se_filters:
            x = SqueezeExcite(a.se_filters, self.conv_impl, self.dtype, name="se")(x)
        x = self.conv(a.out_filters, 1, name="project_conv")(x)
        x = self.bn("project_bn")(x, train)
        return self.residual(x, inputs, train)


class FusedMBConv(_Block):
    """Fused-MBConv: kxk expand -> [SE] -> linear 1x1 projection; with e=1 a single kxk conv + BN + SiLU."""

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
        a = self.args
        x = inputs
        if a.expand_ratio != 1:
            x = self.conv(a.expanded_filters, a.kernel, a.stride, name="expand_conv")(x)
            x = nn.silu(self.bn("expand_bn")(x, train))
            if a.se_filters:
                x = SqueezeExcite(a.se_filters, self.conv_impl, self.dtype, name="se")(x)
            x = self.conv(a.out_filters, 1, name="project_conv")(x)
            x = self.bn("project_bn")(x, train)
        else:
            x = self.conv(a.out_filters, a.kernel, a.stride, name="project_conv")(x)
            x = nn.silu(self.bn("project_bn")(x, train))
        return self.residual(x, inputs, train)
