"""models.layers.conv2d: the same forward as lax.conv_general_dilated, bit for bit, and the
per-tap weight gradient (used on the CPU for inputs of >= 32 channels, strided kernels of <= 9 taps
and stride-1 kernels of <= 2 taps) equal to autodiff of lax's convolution, and to PyTorch's, for
every stride/padding the models use (the per-tap form itself for any kernel size);
the layers that carry it (ConvBN, the phase-split transposed conv, the emotion disc) pick it up.
The per-phase input gradient of strided convolutions (CPU, outputs of >= 64 positions) equals
autodiff of lax's and PyTorch's input gradient to float32 rounding for every stride/padding the
models use, one-sided paddings included; so does the one-matmul input gradient of the stride-1
layers on small images of many channels. The FFT form of the large-kernel, few-output first
layers (CPU only) equals lax's and PyTorch's convolution, forward and both gradients, to float32
rounding, and is chosen only there."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emogen_jax.models import layers
from emogen_jax.models.layers import TAP_GRAD_MIN_CHANNELS, conv2d, tap_weight_grad

NHWC = ("NHWC", "HWIO", "NHWC")
# (batch, size, Cin, Cout, kernel, stride, padding): the decoder's 3x3 s1 p1, the encoders' 3x3 s2
# p1, the phase-split transposed conv's 2x2 s1 with one-sided padding, a 1x1, an odd size with a
# stride that leaves the last row unused
CASES = [(2, 12, 32, 24, 3, 1, ((1, 1), (1, 1))), (3, 12, 40, 16, 3, 2, ((1, 1), (1, 1))),
         (2, 8, 48, 20, 2, 1, ((0, 1), (0, 1))), (2, 7, 32, 3, 1, 1, ((0, 0), (0, 0))),
         (2, 11, 32, 8, 3, 2, ((0, 0), (0, 0)))]


@pytest.fixture(autouse=True)
def small_layers_take_the_tap_gradient(monkeypatch):
  """The cases are small (fast to check); the size bound is tested on its own below."""
  monkeypatch.setattr(layers, "TAP_GRAD_MIN_MACS", 0)


def _case(b, n, cin, cout, k, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((b, n, n, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
  return x, w


def _grads(conv, x, w, s, pad, weights):
  loss = lambda x, w: jnp.sum(jnp.square(conv(x, w, (s, s), pad, dimension_numbers=NHWC)) * weights)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)


@pytest.mark.parametrize("b,n,cin,cout,k,s,pad", CASES)
def test_forward_is_lax_and_gradients_match_autodiff_of_lax(b, n, cin, cout, k, s, pad, monkeypatch):
  # Every case takes the per-tap path: the stride-1 3x3 and 2x2 too (the rule leaves those to
  # lax; the form itself serves any kernel).
  monkeypatch.setattr(layers, "TAP_GRAD_MAX_STRIDE1_TAPS", 9)
  assert cin >= TAP_GRAD_MIN_CHANNELS
  x, w = _case(b, n, cin, cout, k)
  y = jax.jit(lambda x, w: conv2d(x, w, (s, s), pad, dimension_numbers=NHWC))(x, w)
  y_lax = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (s, s), pad,
                                                              dimension_numbers=NHWC))(x, w)
  np.testing.assert_array_equal(y, y_lax)
  weights = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), jnp.float32)
  dx, dw = _grads(conv2d, x, w, s, pad, weights)
  dx_lax, dw_lax = _grads(jax.lax.conv_general_dilated, x, w, s, pad, weights)
  np.testing.assert_array_equal(dx, dx_lax)  # the input gradient is lax's own
  assert float(jnp.max(jnp.abs(dw_lax))) > 1.0
  np.testing.assert_allclose(dw, dw_lax, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(dw_lax))))


def test_weight_gradient_matches_pytorch():
  torch = pytest.importorskip("torch")
  b, n, cin, cout, k, s, pad = CASES[1]
  x, w = _case(b, n, cin, cout, k, seed=2)
  dy = np.random.default_rng(3).standard_normal(
      jax.eval_shape(lambda: conv2d(x, w, (s, s), pad, dimension_numbers=NHWC)).shape)
  ours = tap_weight_grad(x, jnp.asarray(dy, jnp.float32), w.shape, (s, s), pad)
  xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)
  wt = torch.tensor(np.asarray(w)).permute(3, 2, 0, 1).requires_grad_(True)
  yt = torch.nn.functional.conv2d(xt, wt, stride=s, padding=pad[0][0])
  yt.backward(torch.tensor(dy, dtype=torch.float32).permute(0, 3, 1, 2))
  np.testing.assert_allclose(ours, wt.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-4, atol=1e-4)


def test_which_convolutions_take_the_tap_gradient(monkeypatch):
  """Strided kernels of <= 9 taps and stride-1 kernels of <= 2 taps (1x1, 1x2, 2x1) over >= 32
  input channels take the per-tap gradient (matmuls); the stride-1 3x3 and 2x2 layers, the first
  layers (3-15 channels, 7x7) and every layer on an accelerator keep XLA's own (a convolution)."""
  def tap_grad(cin, kh, kw=None, s=1):
    kw = kh if kw is None else kw
    x = jnp.zeros((1, 8, 8, cin), jnp.float32)
    w = jnp.zeros((kh, kw, cin, 4), jnp.float32)
    pad = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(conv2d(x, w, (s, s), pad,
                                                              dimension_numbers=NHWC))))(w)
    return "dot_general" in str(jaxpr)
  assert tap_grad(32, 3, s=2)
  assert tap_grad(32, 1) and tap_grad(32, 1, 2) and tap_grad(32, 2, 1)
  assert not tap_grad(32, 3)
  assert not tap_grad(32, 2)
  assert not tap_grad(16, 3, s=2)
  assert not tap_grad(32, 7, s=2)
  monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
  assert not tap_grad(32, 3, s=2)


def test_small_gradients_keep_lax(monkeypatch):
  """Below TAP_GRAD_MIN_MACS multiply-adds (the smoke SyncNet's deeper layers) lax's gradient is
  kept; a stride-2 256-channel layer at 24x24 over 10 frames (0.85 G) takes the per-tap one."""
  monkeypatch.setattr(layers, "TAP_GRAD_MIN_MACS", 1 << 27)

  def tap_grad(b, n, cin, cout, s=1):
    x = jax.ShapeDtypeStruct((b, n, n, cin), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, cin, cout), jnp.float32)
    grad = jax.grad(lambda x, w: jnp.sum(conv2d(x, w, (s, s), ((1, 1), (1, 1)),
                                                  dimension_numbers=NHWC)), argnums=1)
    # a per-tap matmul's (Cin, Cout) output (the input gradient may have a matmul of its own)
    return f":f32[{cin},{cout}] = dot_general" in str(jax.make_jaxpr(grad)(x, w))
  assert not tap_grad(10, 24, 256, 256)     # stride-1 3x3 (3.4 G): lax's, whatever the size
  assert not tap_grad(8, 24, 64, 128, s=2)  # 85 M
  assert tap_grad(10, 24, 256, 256, s=2)  # stride 2: a quarter of the positions, 0.85 G
  assert not tap_grad(10, 6, 256, 256, s=2)  # 53 M
  assert tap_grad(10, 12, 256, 256, s=2)  # 0.21 G
  # cuDNN's weight gradient is left alone on accelerators


# (batch, H, W, Cin, Cout, kernel, stride, padding): SyncNet's 5x5 stride-(1, 2) face layer, the
# encoders' 3x3 stride 2, the audio encoders' stride (3, 1) / (3, 3) / (3, 2), one-sided and
# uneven paddings, an even kernel.
PHASE_CASES = [(2, 16, 24, 5, 7, (5, 5), (1, 2), ((2, 2), (2, 2))),
               (2, 17, 18, 6, 8, (3, 3), (2, 2), ((1, 1), (1, 1))),
               (2, 23, 24, 4, 8, (3, 3), (2, 2), ((0, 1), (1, 0))),
               (3, 40, 16, 3, 5, (3, 3), (3, 1), ((1, 1), (1, 1))),
               (2, 27, 24, 3, 4, (3, 3), (3, 3), ((1, 1), (1, 1))),
               (1, 27, 18, 3, 4, (3, 3), (3, 2), ((1, 1), (1, 1))),
               (2, 20, 20, 3, 2, (4, 4), (2, 2), ((1, 2), (2, 1)))]


# (batch, H, W, Cin, Cout, kernel, stride, padding): the small images of the deep layers, 3x3
# and the decoder phases' 2x2 with one-sided padding, a 1x1 image under a 3x3 kernel, uneven
# padding; strided: the encoders' 12x12 -> 6x6 and 6x6 -> 3x3, the audio encoders' (3, 2), an
# odd image with one-sided padding (rows past the last window), an even kernel.
GEMM_CASES = [(2, 6, 6, 256, 8, (3, 3), (1, 1), ((1, 1), (1, 1))),
              (3, 3, 3, 256, 6, (2, 2), (1, 1), ((0, 1), (0, 1))),
              (2, 1, 1, 300, 5, (3, 3), (1, 1), ((1, 1), (1, 1))),
              (2, 5, 6, 256, 4, (3, 3), (1, 1), ((0, 2), (1, 0))),
              (2, 12, 12, 256, 4, (3, 3), (2, 2), ((1, 1), (1, 1))),
              (2, 6, 6, 256, 8, (3, 3), (2, 2), ((1, 1), (1, 1))),
              (2, 9, 6, 256, 4, (3, 3), (3, 2), ((1, 1), (1, 1))),
              (1, 7, 5, 256, 3, (3, 3), (2, 2), ((0, 1), (1, 0))),
              (2, 8, 8, 256, 3, (4, 4), (2, 2), ((1, 2), (2, 1)))]


# Every input-gradient case as (kind, batch, H, W, Cin, Cout, kernel, stride, padding).
INPUT_GRAD_CASES = ([("phase",) + c for c in PHASE_CASES] + [("gemm",) + c for c in GEMM_CASES])


def _input_grad_case(b, h, w, cin, cout, k, seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((b, h, w, cin)), jnp.float32)
  kern = jnp.asarray(rng.standard_normal(k + (cin, cout)) / np.sqrt(k[0] * k[1] * cin), jnp.float32)
  return rng, x, kern


@pytest.mark.parametrize("kind,b,h,w,cin,cout,k,s,pad", INPUT_GRAD_CASES)
def test_input_gradient_matches_autodiff_of_lax(kind, b, h, w, cin, cout, k, s, pad):
  """The forward is lax's, bit for bit; the weight gradient lax's own, or the per-tap one to
  rounding where the rule picks it (the strided 256-channel cases); the input gradient the chosen
  form's, equal to lax's to rounding."""
  assert layers._input_grad_kind((b, h, w, cin), k + (cin, cout), s) == kind
  rng, x, kern = _input_grad_case(b, h, w, cin, cout, k, seed=4)
  conv = lambda x, k_: conv2d(x, k_, s, pad, dimension_numbers=NHWC)
  lax_conv = lambda x, k_: jax.lax.conv_general_dilated(x, k_, s, pad, dimension_numbers=NHWC)
  y, vjp = jax.vjp(conv, x, kern)
  y_lax, vjp_lax = jax.vjp(lax_conv, x, kern)
  np.testing.assert_array_equal(y, y_lax)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  (dx, dk), (dx_lax, dk_lax) = vjp(dy), vjp_lax(dy)
  _close(dx, dx_lax)
  if layers._uses_tap_grad(x.shape, kern.shape, s):
    _close(dk, dk_lax)
  else:
    np.testing.assert_array_equal(dk, dk_lax)
  own = (layers.phase_input_grad(dy, kern, x.shape, s, pad) if kind == "phase"
         else layers.gemm_input_grad(dy, kern, x.shape, s, pad))
  np.testing.assert_array_equal(dx, own)


@pytest.mark.parametrize("case", [INPUT_GRAD_CASES[0], INPUT_GRAD_CASES[len(PHASE_CASES)]],
                         ids=["phase", "gemm"])
def test_input_gradient_matches_pytorch(case):
  torch = pytest.importorskip("torch")
  _, b, h, w, cin, cout, k, s, pad = case
  rng, x, kern = _input_grad_case(b, h, w, cin, cout, k, seed=5)
  y, vjp = jax.vjp(lambda x_: conv2d(x_, kern, s, pad, dimension_numbers=NHWC), x)
  dy = rng.standard_normal(y.shape).astype(np.float32)
  xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).requires_grad_(True)
  yt = torch.nn.functional.conv2d(xt, torch.tensor(np.asarray(kern)).permute(3, 2, 0, 1),
                                  stride=s, padding=(pad[0][0], pad[1][0]))
  yt.backward(torch.tensor(dy).permute(0, 3, 1, 2))
  _close(vjp(jnp.asarray(dy))[0], xt.grad.permute(0, 2, 3, 1).numpy())


def test_which_convolutions_take_the_phase_input_gradient(monkeypatch):
  """Strided convolutions with >= PHASE_INPUT_MIN_POSITIONS output positions per image (the
  encoders' layers down to 12x12 -> 6x6 no longer; SyncNet's 5x5 (1, 2) and audio (3, 1)
  layers); stride 1 never; no accelerator."""
  def phase(h, w, s, k=(3, 3)):
    x = jax.ShapeDtypeStruct((2, h, w, 8), jnp.float32)
    kern = jax.ShapeDtypeStruct(k + (8, 8), jnp.float32)
    pad = tuple((kk // 2, kk // 2) for kk in k)
    grad = jax.grad(lambda x, k_: jnp.sum(conv2d(x, k_, s, pad, dimension_numbers=NHWC)))
    jaxpr = str(jax.make_jaxpr(grad)(x, kern))
    dilations = set(re.findall(r"lhs_dilation=\((\d+), (\d+)\)", jaxpr))
    assert dilations, "no convolution in the gradient"
    return dilations == {("1", "1")}  # XLA's own input gradient is an lhs-dilated convolution
  assert phase(48, 96, (1, 2), (5, 5)) and phase(46, 47, (2, 2)) and phase(80, 16, (3, 1))
  assert phase(23, 24, (2, 2))                      # 12 x 12 outputs
  assert not phase(12, 12, (2, 2))                  # 6 x 6
  assert not phase(27, 16, (3, 3))                  # 9 x 5
  assert layers._input_grad_kind((2, 48, 48, 8), (3, 3, 8, 8), (1, 1)) != "phase"
  monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
  assert not phase(46, 47, (2, 2))


def test_which_convolutions_take_the_gemm_input_gradient(monkeypatch):
  """Kernels of >= 2 taps over >= 256 input channels with outputs of <= 36 positions (the 6x6,
  3x3 and 1x1 layers of the full-width encoders, their 12x12 -> 6x6 and 6x6 -> 3x3 strided ones,
  VGG-19's last block, the decoder's first phases); larger outputs, fewer channels, 1x1 kernels
  and accelerators keep their own. The gradient itself: a matmul in the jaxpr, and no reversed
  kernel."""
  kind = layers._input_grad_kind
  assert kind((16, 6, 6, 512), (3, 3, 512, 512)) == "gemm"
  assert kind((10, 3, 3, 1024), (2, 2, 1024, 512)) == "gemm"
  assert kind((10, 1, 1, 1024), (3, 3, 1024, 512)) == "gemm"
  assert kind((16, 9, 6, 128), (3, 3, 128, 128)) == "xla"       # 54 positions, 128 channels
  assert kind((10, 12, 12, 512), (3, 3, 512, 512)) == "xla"     # 144 positions
  assert kind((10, 6, 6, 128), (3, 3, 128, 128)) == "xla"       # 128 channels
  assert kind((10, 6, 6, 512), (1, 1, 512, 512)) == "xla"       # one tap: no kernel reversal
  assert kind((10, 24, 24, 256), (3, 3, 256, 512), (2, 2)) == "phase"
  assert kind((10, 6, 6, 512), (3, 3, 512, 512), (2, 2)) == "gemm"
  assert kind((10, 12, 12, 256), (3, 3, 256, 512), (2, 2)) == "gemm"
  assert kind((10, 12, 12, 128), (3, 3, 128, 256), (2, 2)) == "xla"  # 128 channels
  assert kind((10, 27, 16, 64), (3, 3, 64, 128), (3, 3)) == "xla"
  def input_grad_jaxpr():  # a new function each time: jax caches traces per function
    x = jax.ShapeDtypeStruct((2, 6, 6, 256), jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, 256, 8), jnp.float32)
    grad = jax.grad(lambda x, k_: jnp.sum(conv2d(x, k_, (1, 1), ((1, 1), (1, 1)),
                                                  dimension_numbers=NHWC)))
    return str(jax.make_jaxpr(grad)(x, k))
  assert "dot_general" in input_grad_jaxpr() and " rev[" not in input_grad_jaxpr()
  monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
  assert kind((16, 6, 6, 512), (3, 3, 512, 512)) == "xla"
  assert "dot_general" not in input_grad_jaxpr() and " rev[" in input_grad_jaxpr()


def test_transposed_conv_layer_uses_it_and_matches_lax(monkeypatch):
  """The decoder's transposed-conv block (a phase-split stride-1 conv of 32 input channels)
  differentiates through the per-tap rule; its gradients equal the lax-only build's to rounding."""
  x, _ = _case(2, 6, 32, 1, 1)
  block = layers.ConvTBN(16, 3, 2, 1, 1)
  variables = block.init(jax.random.PRNGKey(0), x, train=True)

  def grads(params):
    def loss(p):
      y, _ = block.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, train=True,
                         mutable=["batch_stats"])
      return jnp.sum(jnp.square(y) * jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape) / y.size)
    return jax.grad(loss)(params), str(jax.make_jaxpr(jax.grad(loss))(params))

  ours, jaxpr = grads(variables["params"])
  assert "dot_general" in jaxpr
  monkeypatch.setattr(layers, "TAP_GRAD_MIN_CHANNELS", 10**9)
  plain, jaxpr_plain = grads(variables["params"])
  assert "dot_general" not in jaxpr_plain
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(plain)):
    scale = max(1e-3, float(jnp.max(jnp.abs(b))))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


# The smoke width's two 7x7 first layers (generator face 6 -> 4 at 96x96, SyncNet face 15 -> 8 at
# 48x96; smaller images, same channels) and an odd size with one-sided padding and a 5x5 kernel.
FFT_CASES = [(2, 24, 24, 6, 4, 7, ((3, 3), (3, 3))), (2, 12, 24, 15, 8, 7, ((3, 3), (3, 3))),
             (1, 11, 13, 3, 2, 5, ((0, 2), (1, 0)))]


def _fft_case(b, h, w, cin, cout, k, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(0, 1, (b, h, w, cin)), jnp.float32)
  kern = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
  return x, kern


def _close(a, b, rel=2e-6):
  scale = float(jnp.max(jnp.abs(b)))
  assert scale > 0.1
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=rel * scale)


@pytest.mark.parametrize("b,h,w,cin,cout,k,pad", FFT_CASES)
def test_fft_convolution_matches_lax_forward_and_gradients(b, h, w, cin, cout, k, pad):
  assert layers._uses_fft((k, k, cin, cout), (1, 1))
  x, kern = _fft_case(b, h, w, cin, cout, k)
  y = jax.jit(lambda x, k_: conv2d(x, k_, (1, 1), pad, dimension_numbers=NHWC))(x, kern)
  y_lax = jax.lax.conv_general_dilated(x, kern, (1, 1), pad, dimension_numbers=NHWC)
  assert y.shape == y_lax.shape and y.dtype == jnp.float32
  _close(y, y_lax)
  weights = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), jnp.float32)
  (dx, dk), (dx_lax, dk_lax) = (_grads(conv2d, x, kern, 1, pad, weights),
                                _grads(jax.lax.conv_general_dilated, x, kern, 1, pad, weights))
  _close(dx, dx_lax)
  _close(dk, dk_lax)


def test_fft_convolution_matches_pytorch():
  torch = pytest.importorskip("torch")
  b, h, w, cin, cout, k, pad = FFT_CASES[0]
  x, kern = _fft_case(b, h, w, cin, cout, k, seed=2)
  dy = np.random.default_rng(3).standard_normal((b, h, w, cout)).astype(np.float32)
  y, vjp = jax.vjp(lambda x, k_: conv2d(x, k_, (1, 1), pad, dimension_numbers=NHWC), x, kern)
  dx, dk = vjp(jnp.asarray(dy))
  xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).requires_grad_(True)
  wt = torch.tensor(np.asarray(kern)).permute(3, 2, 0, 1).requires_grad_(True)
  yt = torch.nn.functional.conv2d(xt, wt, padding=pad[0][0])
  yt.backward(torch.tensor(dy).permute(0, 3, 1, 2))
  _close(y, yt.detach().permute(0, 2, 3, 1).numpy())
  _close(dx, xt.grad.permute(0, 2, 3, 1).numpy())
  _close(dk, wt.grad.permute(2, 3, 1, 0).numpy())


def test_fft_convolution_keeps_the_compute_dtype():
  x, kern = _fft_case(*FFT_CASES[0][:6])
  y = conv2d(x.astype(jnp.bfloat16), kern.astype(jnp.bfloat16), (1, 1), FFT_CASES[0][6],
             dimension_numbers=NHWC)
  want = jax.lax.conv_general_dilated(x, kern, (1, 1), FFT_CASES[0][6], dimension_numbers=NHWC)
  assert y.dtype == jnp.bfloat16
  _close(y.astype(jnp.float32), want, rel=2e-2)


def test_fft_is_chosen_for_the_smoke_first_layers_only(monkeypatch):
  """The smoke width's 7x7 first layers (4 and 8 outputs) take the FFT; the full width's (16 and
  32 outputs), strided, small-kernel ones and every layer on an accelerator keep lax's."""
  def uses_fft(cin, cout, k, s=1):
    x = jax.ShapeDtypeStruct((1, 16, 16, cin), jnp.float32)
    w = jax.ShapeDtypeStruct((k, k, cin, cout), jnp.float32)
    pad = ((k // 2, k // 2),) * 2
    return "fft" in str(jax.make_jaxpr(
        lambda x, w: conv2d(x, w, (s, s), pad, dimension_numbers=NHWC))(x, w))
  assert uses_fft(6, 4, 7) and uses_fft(15, 8, 7)
  assert not uses_fft(6, 16, 7) and not uses_fft(15, 32, 7)
  assert not uses_fft(6, 4, 7, s=2) and not uses_fft(6, 4, 3)
  monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
  assert not uses_fft(6, 4, 7)
