"""Building blocks shared by the Wav2Lip-family models (NHWC, PyTorch padding semantics).

``ConvBN``   Conv (bias) -> BatchNorm -> (+ input if residual) -> ReLU.
``ConvTBN``  transposed Conv (bias) -> BatchNorm -> ReLU.
``ConvLeaky`` Conv (bias) -> LeakyReLU(0.01).

Submodule names (``conv``, ``bn``) mirror the original's ``conv_block.0`` / ``conv_block.1`` so that
weight conversion is a rename plus a transpose. Parameters are float32; ``dtype`` is the compute
dtype.

BatchNorm (``BatchNorm`` below): PyTorch's BatchNorm2d exactly: momentum 0.1 (Flax's 0.9), eps 1e-5,
normalisation by the biased batch variance, running variance updated with the unbiased one (factor
n/(n-1), n = batch*H*W over all devices of ``axis_name``), statistics in float32 whatever the
compute dtype. flax.linen.BatchNorm updates with the biased variance, which drifts from a PyTorch
run at small batches and in the 1x1 layers.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _pair(v) -> tuple[int, int]:
  if isinstance(v, (tuple, list)):
    assert len(v) == 2, v
    return int(v[0]), int(v[1])
  return int(v), int(v)


def channels(c: int, width: float) -> int:
  """Channel count ``c`` scaled by the width multiplier, at least 1."""
  return max(1, int(round(c * width)))


class BatchNorm(nn.Module):
  """BatchNorm over the last axis with PyTorch's BatchNorm2d semantics. (..., C) -> (..., C).

  Variables as flax.linen.BatchNorm's (params scale/bias, batch_stats mean/var), so checkpoints
  and weight conversion see the same tree. ``train``: batch statistics (over every device of
  ``axis_name`` when given) and a running-statistics update; else the running statistics.
  """
  train: bool
  axis_name: str | None = None
  dtype: Any = jnp.float32
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if not self.train:
      y = (x.astype(jnp.float32) - ra_mean.value) * (
          jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return y.astype(self.dtype)
    sync = self.axis_name is not None and not self.is_initializing()
    axis_name = self.axis_name if sync else None
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, axis_name, self.dtype)
    if not self.is_initializing():
      n = float(np.prod(x.shape[:-1]))
      if sync:
        n = n * jax.lax.psum(1, self.axis_name)
      unbiased = var * (n / jnp.maximum(n - 1.0, 1.0))
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
      ra_var.value = m * ra_var.value + (1.0 - m) * unbiased
    return y


def _batch_stats(xf, axis_name):
  """Mean and biased variance over all axes but the last (and over ``axis_name``'s devices)."""
  axes = tuple(range(xf.ndim - 1))
  mean = jnp.mean(xf, axes)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  # Two passes (mean, then squared deviations): exact where E[x^2] - E[x]^2 cancels.
  var = jnp.mean(jnp.square(xf - mean), axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean, var


def _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name, out_dtype):
  xf = x.astype(jnp.float32)
  mean, var = _batch_stats(xf, axis_name)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (xf - mean) * (rstd * scale) + bias
  return (y.astype(out_dtype), mean, var), (x, mean, rstd, scale)


def _batch_norm_train_bwd(epsilon, axis_name, out_dtype, residuals, cotangents):
  # The textbook BatchNorm gradient in one pass over the activations for both sums, instead of
  # the chain that differentiating the two-pass statistics gives (mean, then the variance of
  # the deviations, each transposed). The batch statistics are global (all devices of
  # axis_name), so their sums are too; scale and bias gradients stay per device, like
  # autodiff's, for the step to average. The mean/var outputs only feed the running averages,
  # which no loss sees: their cotangents are zero and ignored.
  del epsilon, out_dtype
  x, mean, rstd, scale = residuals
  dy = cotangents[0].astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  xhat = (x.astype(jnp.float32) - mean) * rstd
  sum_dy = jnp.sum(dy, axes)
  sum_dy_xhat = jnp.sum(dy * xhat, axes)
  n = float(np.prod(x.shape[:-1]))
  all_dy, all_dy_xhat = sum_dy, sum_dy_xhat
  if axis_name is not None:
    all_dy, all_dy_xhat = jax.lax.psum((sum_dy, sum_dy_xhat), axis_name)
    n = n * jax.lax.psum(1, axis_name)
  dx = (rstd * scale) * (dy - all_dy / n - xhat * (all_dy_xhat / n))
  return dx.astype(x.dtype), sum_dy_xhat, sum_dy


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x, scale, bias, epsilon: float, axis_name, out_dtype):
  """Training-mode BatchNorm of x (..., C) with batch statistics: (y in out_dtype, mean, var),
  mean/var float32 (C,) over all axes but the last and all devices of ``axis_name`` (None: this
  device). Statistics in float32 whatever x's dtype. Its gradient is hand-written (see
  ``_batch_norm_train_bwd``); equal to autodiff's within float32 rounding."""
  return _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name, out_dtype)[0]


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def _batch_norm(train: bool, axis_name: str | None, dtype: Any) -> BatchNorm:
  return BatchNorm(train=train, axis_name=axis_name, dtype=dtype, name="bn")


# ------------------------------------------------------------------- convolution and its gradient

# XLA:CPU computes a convolution's weight gradient as another convolution whose window is the
# whole activation. The same sums written as one matmul per kernel tap (activation shifted by the
# tap, contracted with the output gradient over batch and space) are faster where that window
# convolution is weakest: strided layers (the encoders' stride-2 3x3s: 0.94-1.67x per layer) and
# kernels of one or two taps (the 1x1 convs, the phase-split transposed convs' 1x2 and 2x1 phases:
# 0.84-3.1x, 11 of 17 above 1.3). For stride-1 3x3 kernels XLA's current convolution library is
# mostly the faster (per tap 0.40-0.96x on 31 of 35 layer shapes), for 2x2 it is a draw
# (0.72-1.41x); with both on the per-tap path the full-width SyncNet step took 1.16x as long
# (the EmoGen iteration 0.97-1.10x in three runs). Inputs of few channels (the first layers'
# 3-15) and small gradients (per-matmul overhead) keep XLA's too. Under XLA's own (Eigen)
# convolution kernels (xla_cpu.py) the per-layer balance moved (strided 3x3s 0.69-1.31x, large
# 1x1s 1.37-1.51x, the phases 0.77-1.08x), but keeping the per-tap gradient for the 1x1s alone
# changed the whole steps within their spread (0.98-1.04x): the rule stays. docs/design.md "CPU
# speed" has the measurements.
TAP_GRAD_MIN_CHANNELS = 32
TAP_GRAD_MAX_TAPS = 9
TAP_GRAD_MAX_STRIDE1_TAPS = 2
TAP_GRAD_MIN_MACS = 1 << 27
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_macs(x_shape, kernel_shape, strides=(1, 1)) -> int:
  """Multiply-adds of an NHWC/HWIO convolution (and of its weight gradient), output positions
  counted as the input's size over the stride."""
  kh, kw, cin, cout = kernel_shape
  b, h, w, _ = x_shape
  return b * (h // strides[0]) * (w // strides[1]) * kh * kw * cin * cout


def _uses_tap_grad(x_shape, kernel_shape, strides=(1, 1)) -> bool:
  kh, kw, cin, _ = kernel_shape
  macs = conv_macs(x_shape, kernel_shape, strides)
  max_taps = TAP_GRAD_MAX_TAPS if tuple(strides) != (1, 1) else TAP_GRAD_MAX_STRIDE1_TAPS
  return (jax.default_backend() == "cpu" and cin >= TAP_GRAD_MIN_CHANNELS
          and kh * kw <= max_taps and macs >= TAP_GRAD_MIN_MACS)


# XLA computes a strided convolution's input gradient as an lhs-dilated convolution: the output
# gradient spread over a zero-filled grid of the input's size, most of whose products are zeros.
# With XLA's own (Eigen) convolution kernels (xla_cpu.py) the same gradient as one stride-1 conv
# per input phase (``phase_input_grad``) is 1.06-2.2x faster per layer wherever the output has
# >= 64 positions per image (SyncNet's 5x5 stride-(1, 2) layer 38.8 -> 23.4 ms, the encoders'
# 3x3 stride-2 layers down to 12x12 outputs, the audio encoders' stride (3, 1)), 0.79-0.95x on the
# 6x6, 3x3 and 9x5 outputs. Whole full-width steps 1.02-1.03x (SyncNet, emotion disc), smoke
# steps 1.04-1.11x, EmoGen's unchanged. docs/design.md "CPU speed" has the measurements.
PHASE_INPUT_MIN_POSITIONS = 64


# XLA's input gradient of a convolution starts with a reversed, in/out-swapped copy of the
# kernel, slow for the large kernels of the small images (3x3 512 -> 512: ~5.7 ms inside a step).
# ``gemm_input_grad`` reads the kernel as stored instead: per layer, on outputs of <= 36
# positions and >= 256 input channels, 1.28-2.9x faster at stride 1 (4.5-9.6x on 3x3 and 1x1
# images, where XLA's convolution is weakest) and 1.3-5.3x at stride 2 (the encoders' 12x12 -> 6x6
# and 6x6 -> 3x3 layers); 0.53-0.97x from 9x6 / 12x12 outputs up, and even to 0.8x on fewer
# channels. docs/design.md "CPU speed" has the measurements.
GEMM_INPUT_MAX_POSITIONS = 36
GEMM_INPUT_MIN_CHANNELS = 256


def _input_grad_kind(x_shape, kernel_shape, strides=(1, 1)) -> str:
  """Which input gradient ``conv2d`` takes: "phase", "gemm" or "xla" (XLA's own)."""
  _, h, w, _ = x_shape
  kh, kw, cin, _ = kernel_shape
  if jax.default_backend() != "cpu":
    return "xla"
  positions = (h // strides[0]) * (w // strides[1])  # the output's, per image
  if tuple(strides) != (1, 1) and positions >= PHASE_INPUT_MIN_POSITIONS:
    return "phase"
  if kh * kw > 1 and positions <= GEMM_INPUT_MAX_POSITIONS and cin >= GEMM_INPUT_MIN_CHANNELS:
    return "gemm"
  return "xla"


def tap_weight_grad(x, dy, kernel_shape, strides, padding, precision=None):
  """dL/dkernel of ``conv2d(x, kernel, strides, padding)`` from its output gradient ``dy``.

  x (B, H, W, Cin), dy (B, H', W', Cout) -> (kh, kw, Cin, Cout): for each tap (i, j) the input
  rows i, i + s, ... and columns j, j + s, ... (padded) against dy, one (Cin x B*H'*W') @
  (B*H'*W' x Cout) matmul per tap, accumulated in float32.
  """
  kh, kw, cin, cout = kernel_shape
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  if tuple(strides) == (1, 1):
    tap_rows, d = _contiguous_tap_rows(xp, dy, kh, kw)
  else:
    tap_rows, d = _strided_tap_rows(xp, dy, kh, kw, strides)
  taps = [jax.lax.dot_general(tap_rows(i, j), d, (((0,), (0,)), ((), ())), precision=precision,
                              preferred_element_type=jnp.float32)
          for i in range(kh) for j in range(kw)]
  return jnp.stack(taps).reshape(kernel_shape)


def _strided_tap_rows(xp, dy, kh, kw, strides):
  """Tap (i, j)'s input rows as a strided view (rows i, i + s, ..., columns j, j + s, ...) of the
  padded input, in dy's row order: (rows(i, j) -> (B*H'*W', Cin), dy as (B*H'*W', Cout))."""
  _, ho, wo, cout = dy.shape
  sh, sw = strides
  cin = xp.shape[-1]
  rows = lambda i, j: xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw].reshape(-1, cin)
  return rows, dy.reshape(-1, cout)


def _contiguous_tap_rows(xp, dy, kh, kw):
  """Stride 1: every tap's rows as ONE contiguous range of the flattened padded input.

  dy is zero-padded to the padded input's grid (Hp, Wp) (a stride-1 output is (Hp - kh + 1,
  Wp - kw + 1)), and both are flattened to rows r = (b * Hp + h) * Wp + w. Then tap (i, j) pairs
  input row r + i * Wp + j with gradient row r: within one image wherever the gradient row is a
  real output, and against a zero gradient row everywhere else. No strided copies of the input.
  """
  b, hp, wp, cin = xp.shape
  _, ho, wo, cout = dy.shape
  n = b * hp * wp - ((kh - 1) * wp + (kw - 1))  # past n, d holds only padding: zero rows
  d = jnp.pad(dy, ((0, 0), (0, hp - ho), (0, wp - wo), (0, 0))).reshape(-1, cout)[:n]
  x2 = xp.reshape(-1, cin)
  return lambda i, j: jax.lax.slice_in_dim(x2, i * wp + j, i * wp + j + n), d


# The first layers' 7x7 convolutions with a handful of output channels (the smoke width's 6 -> 4
# generator face layer and 15 -> 8 SyncNet face layer) run on XLA:CPU's generic convolution path,
# which vectorises over the output channels: with 4-8 of them it wastes most of each vector. Through
# real FFTs over (H, W), pointwise products of the transformed input and kernel summed over the
# input channels, the same convolution takes a third to a sixth of the time, forward and both
# gradients (autodiff of the FFTs); equal to lax's to float32 rounding (~1e-6 relative). With 16
# or more outputs (the full width's 6 -> 16 and 15 -> 32) XLA's own is as fast or faster.
# docs/design.md "CPU speed" has the measurements.
FFT_MIN_TAPS = 25
FFT_MAX_OUT_CHANNELS = 8


def _uses_fft(kernel_shape, strides) -> bool:
  kh, kw, _, cout = kernel_shape
  return (jax.default_backend() == "cpu" and tuple(strides) == (1, 1)
          and kh * kw >= FFT_MIN_TAPS and cout <= FFT_MAX_OUT_CHANNELS)


def fft_conv2d(x, kernel, padding):
  """Stride-1 ``lax.conv_general_dilated`` (NHWC/HWIO, a cross-correlation like PyTorch's Conv2d)
  through real 2-D FFTs, in float32 whatever the inputs' dtype; result in x's dtype.

  x (B, H, W, Cin), kernel (kh, kw, Cin, Cout), padding ((top, bottom), (left, right)) ->
  (B, H + top + bottom - kh + 1, W + left + right - kw + 1, Cout). The padded input is
  zero-extended to FFT lengths >= its size, so the circular convolution's wrap-around only
  reaches the first kh - 1 rows (kw - 1 columns), which are cut off.
  """
  _, h, w, _ = x.shape
  kh, kw, _, _ = kernel.shape
  (pt, pb), (pl, pr) = padding
  hp, wp = h + pt + pb, w + pl + pr
  # Fast FFT lengths: no prime factor above 5 (102 -> 108).
  fh, fw = (scipy.fft.next_fast_len(n, real=True) for n in (hp, wp))
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (pt, fh - h - pt), (pl, fw - w - pl), (0, 0)))
  xf = jnp.fft.rfft2(xp, axes=(1, 2))                                  # (B, fh, fw//2+1, Cin)
  kf = jnp.fft.rfft2(kernel.astype(jnp.float32)[::-1, ::-1], s=(fh, fw), axes=(0, 1))
  # A broadcast product summed over Cin (one fused reduction), not an einsum: the einsum is a
  # batch of fh*(fw//2+1) tiny matmuls, measured slower.
  yf = jnp.sum(xf[..., :, None] * kf, axis=-2)                         # (B, fh, fw//2+1, Cout)
  y = jnp.fft.irfft2(yf, s=(fh, fw), axes=(1, 2))
  return y[:, kh - 1:hp, kw - 1:wp, :].astype(x.dtype)


def _plain_conv(x, kernel, strides, padding, precision):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                      precision=precision)


def phase_input_grad(dy, kernel, x_shape, strides, padding, precision=None):
  """dL/dx of ``conv2d(x, kernel, strides, padding)`` from its output gradient ``dy``, as the
  stride-s transposed conv of ``dy`` (one stride-1 conv per output phase, ``conv_transpose``).

  dy (B, H', W', Cout), kernel (kh, kw, Cin, Cout) -> (B, H, W, Cin). Input row y collects
  dy[i] * kernel[a] for every y = i * s - top + a: a transposed conv padded by ``top`` (``left``),
  its output padding whatever makes it H (W) rows long.
  """
  _, h, w, _ = x_shape
  kh, kw = kernel.shape[:2]
  _, ho, wo, _ = dy.shape
  (sh, sw), ((top, _), (left, _)) = strides, padding
  out_pad = (h - ((ho - 1) * sh - 2 * top + kh), w - ((wo - 1) * sw - 2 * left + kw))
  return conv_transpose(dy, jnp.swapaxes(kernel, 2, 3), (sh, sw), (top, left), out_pad,
                        precision=precision)


def gemm_input_grad(dy, kernel, x_shape, strides, padding, precision=None):
  """dL/dx of ``conv2d(x, kernel, strides, padding)`` from its output gradient ``dy``, as ONE
  matmul of dy with the kernel as stored, then a sum of shifted slices (col2im).

  dy (B, H', W', Cout) @ kernel (kh*kw*Cin, Cout)^T -> (B, H', W', kh, kw, Cin); padded input
  row i + s*y, column j + s*x collects tap (i, j)'s slice at output (y, x) (strides s: the slice
  spread with s - 1 zeros between its rows and columns). No reversed, transposed copy of the
  kernel (which is what XLA's input gradient starts with), at kh*kw times the output gradient's
  size in between: for small images with many channels.
  """
  kh, kw, cin, cout = kernel.shape
  b, ho, wo, _ = dy.shape
  _, h, w, _ = x_shape
  (pt, pb), (pl, pr) = padding
  sh, sw = strides
  hp, wp = h + pt + pb, w + pl + pr
  g = jax.lax.dot_general(dy.reshape(-1, cout), kernel.reshape(kh * kw * cin, cout),
                          (((1,), (1,)), ((), ())), precision=precision,
                          preferred_element_type=jnp.float32)
  g = g.reshape(b, ho, wo, kh, kw, cin)
  span_h, span_w = sh * (ho - 1) + 1, sw * (wo - 1) + 1
  dxp = sum(jax.lax.pad(g[:, :, :, i, j], jnp.zeros((), g.dtype),
                        ((0, 0, 0), (i, hp - span_h - i, sh - 1), (j, wp - span_w - j, sw - 1),
                         (0, 0, 0)))
            for i in range(kh) for j in range(kw))
  return dxp[:, pt:pt + h, pl:pl + w].astype(dy.dtype)


# ``_input_grad_kind``'s own forms by name ("xla" is lax's, from autodiff).
_INPUT_GRADS = {"phase": phase_input_grad, "gemm": gemm_input_grad}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_own_grad(x, kernel, strides, padding, precision, tap_weight: bool, input_grad: str):
  """lax's convolution whose backward pass takes the per-tap weight gradient (``tap_weight``)
  and / or another input gradient (``input_grad``: "phase", "gemm"; "xla" for XLA's own)."""
  return _plain_conv(x, kernel, strides, padding, precision)


def _conv_own_grad_fwd(x, kernel, strides, padding, precision, tap_weight, input_grad):
  return _plain_conv(x, kernel, strides, padding, precision), (x, kernel)


def _conv_own_grad_bwd(strides, padding, precision, tap_weight, input_grad, res, dy):
  x, kernel = res
  if input_grad in _INPUT_GRADS:
    dx = _INPUT_GRADS[input_grad](dy, kernel, x.shape, strides, padding, precision).astype(x.dtype)
  else:
    dx = jax.vjp(lambda x_: _plain_conv(x_, kernel, strides, padding, precision), x)[1](dy)[0]
  if tap_weight:
    dk = tap_weight_grad(x, dy, kernel.shape, strides, padding, precision).astype(kernel.dtype)
  else:
    dk = jax.vjp(lambda k_: _plain_conv(x, k_, strides, padding, precision), kernel)[1](dy)[0]
  return dx, dk


_conv_own_grad.defvjp(_conv_own_grad_fwd, _conv_own_grad_bwd)


def conv2d(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, precision=None):
  """``jax.lax.conv_general_dilated`` for NHWC/HWIO convolutions: on the CPU, the FFT form above
  for large kernels with few outputs (``_uses_fft``; equal to lax's to float32 rounding), else
  lax's forward bit for bit, with the per-tap weight gradient (``_uses_tap_grad``) and the
  per-phase or one-matmul input gradient (``_input_grad_kind``) where they are the faster ones.
  Signature of ``lax.conv_general_dilated``, so that ``nn.Conv(conv_general_dilated=conv2d)``
  uses it; dilated, grouped and other layouts go to lax unchanged."""
  plain = is_plain_nhwc(lhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count)
  if plain and _uses_fft(rhs.shape, tuple(window_strides)):
    return fft_conv2d(lhs, rhs, tuple((int(lo), int(hi)) for lo, hi in padding))
  strides = tuple(int(s) for s in window_strides)
  tap_weight = plain and _uses_tap_grad(lhs.shape, rhs.shape, strides)
  input_grad = _input_grad_kind(lhs.shape, rhs.shape, strides) if plain else "xla"
  if not tap_weight and input_grad == "xla":
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv_own_grad(lhs, rhs, strides, pads, precision, tap_weight, input_grad)


def is_plain_nhwc(lhs, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                  feature_group_count=1) -> bool:
  """Whether a ``lax.conv_general_dilated`` call (its arguments by name) is an undilated,
  ungrouped NHWC/HWIO convolution with explicit padding: the kind that ``conv2d`` computes its
  own way."""
  return ((lhs_dilation is None or all(d == 1 for d in lhs_dilation))
          and (rhs_dilation is None or all(d == 1 for d in rhs_dilation))
          and feature_group_count == 1 and not isinstance(padding, str)
          and _is_nhwc(dimension_numbers, lhs.ndim))


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
  if ndim != 4 or dimension_numbers is None:
    return False
  want = jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
  got = (dimension_numbers if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers)
         else jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers))
  return got == want


def _conv(features, kernel_size, strides, padding, dtype, name) -> nn.Conv:
  kh, kw = _pair(kernel_size)
  ph, pw = _pair(padding)
  return nn.Conv(features, (kh, kw), strides=_pair(strides), padding=((ph, ph), (pw, pw)),
                 use_bias=True, dtype=dtype, param_dtype=jnp.float32, conv_general_dilated=conv2d,
                 name=name)


class ConvBN(nn.Module):
  """Conv2d(k, s, p) with bias -> BatchNorm -> (+ input if ``residual``) -> ReLU.

  (B, H, W, Cin) -> (B, H', W', features), H' = (H + 2p - k) // s + 1 (PyTorch's Conv2d).
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 0
  residual: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(self.features, self.kernel_size, self.strides, self.padding, self.dtype, "conv")(x)
    y = _batch_norm(train, self.bn_axis_name, self.dtype)(y)
    if self.residual:
      y = y + x
    return nn.relu(y)


class ConvLeaky(nn.Module):
  """Conv2d(k, s, p) with bias -> LeakyReLU(0.01); no normalisation.

  (B, H, W, Cin) -> (B, H', W', features), PyTorch's Conv2d output size.
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = _conv(self.features, self.kernel_size, self.strides, self.padding, self.dtype, "conv")(x)
    return nn.leaky_relu(y, 0.01)


def _phase_taps(k: int, s: int, p: int, out_size: int, in_size: int):
  """Per-axis plan of a transposed conv as ``s`` stride-1 "phase" convs.

  PyTorch: out[y] += in[i] * w[a] for every y = i*s - p + a. Writing y = s*m + r (phase r), the
  taps that reach phase r are the a with a = r + p (mod s), reading input row i = m + d with
  d = (r + p - a) / s. All phases share one window of rows m + d_min .. m + d_max.

  Returns (taps, window, pad_lo, pad_hi, rows): taps[r, t] = kernel index used by phase r at
  window offset t (== k, pointing at an appended zero tap, when none), pad_lo/pad_hi the input
  padding (negative = crop), rows = output rows per phase before the final crop.
  """
  ds = {}
  for r in range(s):
    for a in range(k):
      if (r + p - a) % s == 0:
        ds[(r, a)] = (r + p - a) // s
  d_min = min(ds.values())
  d_max = max(ds.values())
  window = d_max - d_min + 1
  taps = np.full((s, window), k, dtype=np.int32)
  for (r, a), d in ds.items():
    taps[r, d - d_min] = a
  rows = -(-out_size // s)
  pad_lo = -d_min
  pad_hi = (rows - 1 + d_max) - (in_size - 1)
  return taps, window, pad_lo, pad_hi, rows


def conv_transpose(x, kernel, strides, padding, output_padding, precision=None):
  """PyTorch ``conv_transpose2d`` in NHWC, as one stride-1 conv per output phase plus an
  interleave.

  x: (B, H, W, Cin); kernel: (kh, kw, Cin, Cout) with ``kernel[a, b, i, o] ==
  torch_weight[i, o, a, b]`` for a ``torch.nn.ConvTranspose2d`` weight of shape (Cin, Cout, kh, kw)
  (a plain transpose, no spatial flip). Output (B, Ho, Wo, Cout) with
  Ho = (H - 1) * sh - 2 * ph + kh + out_pad_h (likewise Wo), bias not included.

  Why not an lhs-dilated conv: XLA:CPU's gradient of those is 4-7x slower. Output phase
  (y mod sh, x mod sw) is an ordinary stride-1 conv of the input with only the kernel taps that
  reach it: for the decoder's k3 s2 p1 op1 a 1x1, a 1x2, a 2x1 and a 2x2 conv (9 taps, the
  arithmetic of the transposed conv itself), where one 2x2 conv to all four phases at once
  (zero taps where a phase has none) costs 16. docs/design.md "CPU speed" has the measurements.
  For stride 1 it is the usual flipped-kernel conv.
  """
  kh, kw, cin, cout = kernel.shape
  b, h, w, _ = x.shape
  assert x.shape[-1] == cin, (x.shape, kernel.shape)
  (out_h, out_w), (taps_h, win_h, lo_h, hi_h, rows_h), (taps_w, win_w, lo_w, hi_w, rows_w) = \
      transpose_plan(x.shape, kernel.shape, strides, padding, output_padding)
  sh, sw = len(taps_h), len(taps_w)
  # Append a zero tap (index k) per axis: a phase whose used taps are not adjacent gathers it
  # for the offsets in between.
  kpad = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  spans_h = [_used_span(taps_h[r], kh) for r in range(sh)]
  spans_w = [_used_span(taps_w[r], kw) for r in range(sw)]
  phase_rows = []
  for rh, span_h in enumerate(spans_h):
    row = []
    for rw, span_w in enumerate(spans_w):
      if span_h is None or span_w is None:  # a kernel smaller than its stride: no tap here
        row.append(jnp.zeros((b, rows_h, rows_w, cout), x.dtype))
        continue
      (h0, h1), (w0, w1) = span_h, span_w
      k_phase = kpad[taps_h[rh, h0:h1 + 1][:, None], taps_w[rw, w0:w1 + 1][None, :]]
      # The phase's window starts h0 rows into the all-phase window, which starts lo_h rows
      # before the input (a negative lo_h: inside it).
      pads = ((lo_h - h0, hi_h - (win_h - 1 - h1)), (lo_w - w0, hi_w - (win_w - 1 - w1)))
      xs = x[:, max(0, -pads[0][0]):h - max(0, -pads[0][1]),
             max(0, -pads[1][0]):w - max(0, -pads[1][1])]
      pads = tuple((max(0, lo), max(0, hi)) for lo, hi in pads)
      row.append(conv2d(xs, k_phase, (1, 1), pads, dimension_numbers=_NHWC, precision=precision))
    phase_rows.append(jnp.stack(row, axis=3))               # (B, rows_h, rows_w, sw, Cout)
  y = jnp.stack(phase_rows, axis=2)                         # (B, rows_h, sh, rows_w, sw, Cout)
  y = y.reshape(b, rows_h * sh, rows_w * sw, cout)
  return y[:, :out_h, :out_w, :]


def transpose_plan(x_shape, kernel_shape, strides, padding, output_padding):
  """((Ho, Wo), plan_h, plan_w) of a PyTorch-semantics transposed conv of an NHWC input:
  the output size and the per-axis ``_phase_taps`` plans."""
  _, h, w, _ = x_shape
  kh, kw = kernel_shape[:2]
  (sh, sw), (ph, pw), (oph, opw) = _pair(strides), _pair(padding), _pair(output_padding)
  out_h = (h - 1) * sh - 2 * ph + kh + oph
  out_w = (w - 1) * sw - 2 * pw + kw + opw
  return (out_h, out_w), _phase_taps(kh, sh, ph, out_h, h), _phase_taps(kw, sw, pw, out_w, w)


def _used_span(taps_row, k: int):
  """(first, last) window offset at which a phase uses a real kernel tap, None if none."""
  used = [t for t, a in enumerate(taps_row) if a != k]
  return (used[0], used[-1]) if used else None


def conv_transpose_reference(x, kernel, strides, padding, output_padding, precision=None):
  """The same as ``conv_transpose`` written as the textbook lhs-dilated conv (for tests)."""
  kh, kw, _, _ = kernel.shape
  sh, sw = _pair(strides)
  ph, pw = _pair(padding)
  oph, opw = _pair(output_padding)
  return jax.lax.conv_general_dilated(
      x, kernel[::-1, ::-1], (1, 1),
      ((kh - 1 - ph, kh - 1 - ph + oph), (kw - 1 - pw, kw - 1 - pw + opw)),
      lhs_dilation=(sh, sw), dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


class ConvTranspose(nn.Module):
  """PyTorch-semantics ConvTranspose2d with bias. Params ``kernel`` (kh, kw, Cin, Cout), ``bias``.

  ``kernel[a, b, i, o] == torch_weight[i, o, a, b]`` (see ``conv_transpose``).
  (B, H, W, Cin) -> (B, (H-1)*s - 2p + k + out_pad, ..., features).
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 0
  output_padding: int | Sequence[int] = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kh, kw = _pair(self.kernel_size)
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    y = conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding,
                       self.output_padding)
    return y + bias.astype(self.dtype)


class ConvTBN(nn.Module):
  """ConvTranspose2d(k, s, p, output_padding) with bias -> BatchNorm -> ReLU.

  (B, H, W, Cin) -> (B, (H-1)*s - 2p + k + out_pad, ..., features).
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 0
  output_padding: int | Sequence[int] = 0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = ConvTranspose(self.features, self.kernel_size, self.strides, self.padding,
                      self.output_padding, dtype=self.dtype, name="conv")(x)
    y = _batch_norm(train, self.bn_axis_name, self.dtype)(y)
    return nn.relu(y)
