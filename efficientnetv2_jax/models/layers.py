"""Convolution and batch-norm layers with the official TF numerics and a fast formulation per backend.

The parameters are identical whichever formulation computes a layer, so weights move freely between them:
- 'xla': everything through `lax.conv_general_dilated` (native depthwise on TPU/GPU).
- 'cpu': 1x1 convolutions as matrix products, depthwise convolutions as k*k shifted multiply-adds, dense kxk
  convolutions through lax.conv (im2col for the 3-channel stem) with a backward pass of matrix products.
  XLA:CPU runs a grouped convolution's backward pass as a dense convolution, which makes the plain form
  several times slower there (`python benchmarks/train_step.py --conv-impl xla` vs `auto`).
- 'auto' (default): 'cpu' on the CPU backend, 'xla' elsewhere.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

CONV_IMPLS = ("auto", "xla", "cpu")
Dtype = Any


def resolve_conv_impl(conv_impl: str, backend: str | None = None) -> str:
    """Maps 'auto' to the fastest formulation for `backend` (default: JAX's default backend)."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"Unknown conv_impl {conv_impl!r}; valid choices: {', '.join(CONV_IMPLS)}.")
    if conv_impl == "auto":
        return "cpu" if (backend or jax.default_backend()) == "cpu" else "xla"
    return conv_impl


def conv_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    """Official `conv_kernel_initializer`: untruncated N(0, 2/fan_out), fan_out = kh*kw*shape[-1].

    For depthwise kernels, stored (k, k, 1, C) here and (k, k, C, 1) in TF, the official fan_out is k*k*1:
    the channel count is ignored, so we use the multiplier (1) rather than C.
    """
    kh, kw, in_ch, out_ch = shape
    fan_out = kh * kw * (1 if in_ch == 1 and out_ch > 1 else out_ch)
    return jax.random.normal(key, shape, dtype) * np.sqrt(2.0 / fan_out)


def dense_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    """Official `dense_kernel_initializer`: U(-1/sqrt(num_classes), 1/sqrt(num_classes))."""
    limit = 1.0 / np.sqrt(shape[1])
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, tuple[int, int]]:
    """TF 'SAME' output size and (before, after) padding; the extra pixel goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, (total // 2, total - total // 2)


def _conv_xla(x: jax.Array, kernel: jax.Array, stride: int, groups: int) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def _pointwise_dot(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    if stride > 1:  # SAME padding of a 1x1 kernel never pads: it is a strided subsample.
        x = x[:, ::stride, ::stride, :]
    flat = x.reshape(-1, x.shape[-1]) @ kernel[0, 0]  # 2-D so both backward products are plain GEMMs.
    return flat.reshape(*x.shape[:-1], kernel.shape[-1])


def _strided_windows(xp: jax.Array, k: int, out_h: int, out_w: int, stride: int) -> list[jax.Array]:
    """The k*k (N, out_h, out_w, C) windows of a padded input that a kxk convolution reads, row-major."""
    n, _, _, c = xp.shape
    return [lax.slice(xp, (0, i, j, 0), (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
                      (1, stride, stride, 1))
            for i in range(k) for j in range(k)]


def _shifted_sum(x: jax.Array, kernel: jax.Array, out_h: int, out_w: int, stride: int) -> jax.Array:
    """sum_ij x[:, i::stride, j::stride][:out_h, :out_w] * kernel[i, j, 0]: a depthwise correlation."""
    k = kernel.shape[0]
    out = None
    for index, window in enumerate(_strided_windows(x, k, out_h, out_w, stride)):
        term = window * kernel[index // k, index % k, 0]
        out = term if out is None else out + term
    return out


def _pad_same(x: jax.Array, k: int, stride: int) -> tuple[jax.Array, int, int]:
    out_h, pad_h = same_padding(x.shape[1], k, stride)
    out_w, pad_w = same_padding(x.shape[2], k, stride)
    return jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0))), out_h, out_w


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise 'SAME' convolution as k*k shifted multiply-adds, with a hand-written backward pass."""
    xp, out_h, out_w = _pad_same(x, kernel.shape[0], stride)
    # The barrier materialises the padded input once; XLA then fuses the k*k strided windows into one loop
    # instead of writing each window out as its own array.
    return _shifted_sum(lax.optimization_barrier(xp), kernel, out_h, out_w, stride)


def _depthwise_fwd(x, kernel, stride):
    return _depthwise_shifted(x, kernel, stride), (x, kernel)


def _depthwise_bwd(stride, residuals, g):
    """dx = correlation of the stride-dilated gradient with the flipped kernel; dkernel = k*k reductions."""
    x, kernel = residuals
    x = lax.optimization_barrier(x)  # Keeps XLA from merging this padding with the forward pass's.
    _, h, w, _ = x.shape
    k = kernel.shape[0]
    xp, out_h, out_w = _pad_same(x, k, stride)
    pad_top = same_padding(h, k, stride)[1][0]
    pad_left = same_padding(w, k, stride)[1][0]
    dilated = lax.pad(g, jnp.zeros((), g.dtype), [
        (0, 0, 0),
        (k - 1, xp.shape[1] - (out_h - 1) * stride - 1, stride - 1),
        (k - 1, xp.shape[2] - (out_w - 1) * stride - 1, stride - 1),
        (0, 0, 0),
    ])
    dilated = dilated[:, pad_top:pad_top + h + k - 1, pad_left:pad_left + w + k - 1]
    dx = _shifted_sum(dilated, kernel[::-1, ::-1], h, w, 1)
    rows = [jnp.sum((window * g).astype(jnp.float32), axis=(0, 1, 2))
            for window in _strided_windows(xp, k, out_h, out_w, stride)]
    dkernel = jnp.stack(rows).reshape(kernel.shape).astype(kernel.dtype)
    return dx, dkernel


_depthwise_shifted.defvjp(_depthwise_fwd, _depthwise_bwd)


def _sum_windows(windows: jax.Array, padded_h: int, padded_w: int, stride: int) -> jax.Array:
    """The adjoint of `_strided_windows`: adds window i*k+j of `windows` (N, out_h, out_w, k*k, C) back at its
    place in a zero (N, padded_h, padded_w, C) padded input."""
    _, out_h, out_w, kk, _ = windows.shape
    k = int(round(kk ** 0.5))
    total = None
    for index in range(kk):
        i, j = divmod(index, k)
        placed = lax.pad(windows[:, :, :, index], jnp.zeros((), windows.dtype), [
            (0, 0, 0),
            (i, padded_h - i - (out_h - 1) * stride - 1, stride - 1),
            (j, padded_w - j - (out_w - 1) * stride - 1, stride - 1),
            (0, 0, 0),
        ])
        total = placed if total is None else total + placed
    return total


# Up to this many input channels (the stem has 3) a kxk convolution runs as one matrix product over the gathered
# windows (im2col): XLA:CPU's direct convolution of a 3-channel image is ~4x slower (S stem at 128 px).
_IM2COL_MAX_CHANNELS = 7


def _im2col(windows: list[jax.Array]) -> jax.Array:
    """(N*out_h*out_w, k*k*C) rows of every output pixel's window, in the kernel's (i, j, c) order."""
    return jnp.concatenate(windows, axis=-1).reshape(-1, len(windows) * windows[0].shape[-1])


def _dense_conv_forward(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    k, _, in_ch, out_ch = kernel.shape
    if in_ch > _IM2COL_MAX_CHANNELS:
        return _conv_xla(x, kernel, stride, 1)
    xp, out_h, out_w = _pad_same(x, k, stride)
    cols = _im2col(_strided_windows(xp, k, out_h, out_w, stride))
    return (cols @ kernel.reshape(-1, out_ch)).reshape(x.shape[0], out_h, out_w, out_ch)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Dense kxk 'SAME' convolution through lax.conv (im2col for a few input channels) with a backward pass of
    matrix products: XLA:CPU's own kernel-gradient convolution runs at a fraction of its forward speed, and its
    input gradient is slow when the convolution widens the channels (benchmarks/train_step.py)."""
    return _dense_conv_forward(x, kernel, stride)


def _dense_conv_fwd(x, kernel, stride):
    return _dense_conv_forward(x, kernel, stride), (x, kernel)


def _dense_conv_bwd(stride, residuals, g):
    """dkernel[i, j] = window_ij^T @ g with batch and space flattened (one im2col product for a few input
    channels). dx: for a widening convolution (the Fused-MBConv expansions, out >= 2x in) one product
    g @ kernel^T gives every window's share, which is added back into place; otherwise XLA's transposed
    convolution, faster there."""
    x, kernel = residuals
    k, _, in_ch, out_ch = kernel.shape
    n, h, w, _ = x.shape
    xp, out_h, out_w = _pad_same(x, k, stride)
    g2 = g.reshape(-1, out_ch)
    if out_ch >= 2 * in_ch:
        shares = (g2 @ kernel.transpose(3, 0, 1, 2).reshape(out_ch, k * k * in_ch)).reshape(
            n, out_h, out_w, k * k, in_ch)
        pad_top = same_padding(h, k, stride)[1][0]
        pad_left = same_padding(w, k, stride)[1][0]
        dx = _sum_windows(shares, xp.shape[1], xp.shape[2], stride)[:, pad_top:pad_top + h, pad_left:pad_left + w]
    else:
        dx = jax.vjp(lambda x_: _conv_xla(x_, kernel, stride, 1), x)[1](g)[0]
    windows = _strided_windows(xp, k, out_h, out_w, stride)
    if in_ch <= _IM2COL_MAX_CHANNELS:
        dkernel = _im2col(windows).T @ g2
    else:
        dkernel = jnp.stack([window.reshape(-1, in_ch).T @ g2 for window in windows])
    return dx.astype(x.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)


class Conv(nn.Module):
    """Bias-free (unless `use_bias`) 'SAME' convolution; depthwise when `depthwise=True`."""

    features: int
    kernel_size: int
    stride: int = 1
    depthwise: bool = False
    use_bias: bool = False
    conv_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_ch = x.shape[-1]
        k = self.kernel_size
        shape = (k, k, 1, in_ch) if self.depthwise else (k, k, in_ch, self.features)
        kernel = self.param("kernel", conv_kernel_init, shape, jnp.float32).astype(self.dtype)
        x = x.astype(self.dtype)
        impl = resolve_conv_impl(self.conv_impl)
        if impl == "xla":
            y = _conv_xla(x, kernel, self.stride, in_ch if self.depthwise else 1)
        elif self.depthwise:
            y = _depthwise_shifted(x, kernel, self.stride)
        elif k == 1:
            y = _pointwise_dot(x, kernel, self.stride)
        else:
            y = _dense_conv(x, kernel, self.stride)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (y.shape[-1],), jnp.float32).astype(self.dtype)
        return y


class BatchNorm(nn.Module):
    """Batch norm with Keras/TF semantics (moving = m*moving + (1-m)*batch, biased variance E[x²]-E[x]²).

    Statistics are computed in float32 over the whole (global, under jit) batch, or over contiguous groups of
    `group_size` examples, the official TPU recipe of normalising within groups of 8 replicas.
    """

    momentum: float = 0.9
    epsilon: float = 1e-3
    group_size: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if train:
            groups = 1 if self.group_size is None else x.shape[0] // self.group_size
            if self.group_size is not None and (groups < 1 or x.shape[0] % self.group_size):
                raise ValueError(f"Batch {x.shape[0]} is not divisible by bn_group_size {self.group_size}.")
            xg = x.astype(jnp.float32)
            if groups > 1:
                xg = xg.reshape(groups, -1, *x.shape[1:])
            axes = tuple(range(xg.ndim - 4, xg.ndim - 1))
            mean = xg.mean(axis=axes, keepdims=True)
            var = jnp.maximum(jnp.square(xg).mean(axis=axes, keepdims=True) - jnp.square(mean), 0.0)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.reshape(groups, c).mean(0)
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var.reshape(groups, c).mean(0)
            y = (xg - mean) * (scale * lax.rsqrt(var + self.epsilon)) + bias
            return y.reshape(x.shape).astype(self.dtype)
        mul = scale * lax.rsqrt(ra_var.value + self.epsilon)
        return ((x.astype(jnp.float32) - ra_mean.value) * mul + bias).astype(self.dtype)
