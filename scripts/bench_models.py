"""Micro-benchmarks of the models on this machine.

1. The decoder's stride-2 transposed convs, forward+gradient: our ``conv_transpose`` (one conv per
   output phase) against the same phases computed by ONE 2x2 conv to all four phases (zero taps
   where a phase has none: the implementation before 2026-12-04) and against Flax's
   ``nn.ConvTranspose`` (an lhs-dilated conv), same shapes, timed in turn; prints the ratios.
2. The generator's training-step gradient (L1 loss, BatchNorm in training mode) at full size.

  python scripts/bench_models.py                    # both, batch 16 clips x 5 frames
  python scripts/bench_models.py --skip-generator   # layers only (a minute)
  python scripts/bench_models.py --skip-generator --batch 2 --width 0.25   # the smoke EmoGen step's
"""

from __future__ import annotations

import argparse
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bench_train import interleaved
from emogen_jax.models import Generator, count_params
from emogen_jax.models.layers import _NHWC, conv2d, conv_transpose, transpose_plan


def _time(fn, *args, repeats: int) -> tuple[float, float]:
  """(first call incl. compile, median of the following calls) in seconds."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def one_conv_phase_split(x, kernel, strides, padding, output_padding):
  """The baseline: every output phase from ONE stride-1 conv to sh*sw*Cout channels, its kernel
  gathered with a zero tap wherever a phase has none (16 taps for k3 s2 where 9 are real)."""
  kh, kw, cin, cout = kernel.shape
  b = x.shape[0]
  (out_h, out_w), (taps_h, win_h, lo_h, hi_h, rows_h), (taps_w, win_w, lo_w, hi_w, rows_w) = \
      transpose_plan(x.shape, kernel.shape, strides, padding, output_padding)
  sh, sw = len(taps_h), len(taps_w)
  kpad = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  k6 = kpad[taps_h[:, :, None, None], taps_w[None, None, :, :]]
  k_all = jnp.transpose(k6, (1, 3, 4, 0, 2, 5)).reshape(win_h, win_w, cin, sh * sw * cout)
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))
  y = conv2d(x, k_all, (1, 1), ((0, 0), (0, 0)), dimension_numbers=_NHWC)
  y = y.reshape(b, rows_h, rows_w, sh, sw, cout)
  y = jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(b, rows_h * sh, rows_w * sw, cout)
  return y[:, :out_h, :out_w, :]


def bench_layers(frames: int, repeats: int, width: float = 1.0):
  # (input HxW, Cin, Cout) of decoder blocks D2..D6 at width 1.
  layers = [(3, 1024, 512), (6, 1024, 384), (12, 768, 256), (24, 512, 128), (48, 320, 64)]
  layers = [(hw, max(1, int(cin * width)), max(1, int(cout * width))) for hw, cin, cout in layers]
  rng = np.random.default_rng(0)
  print(f"stride-2 transposed conv, forward+grad, {frames} frames, width {width} "
        f"(median of {repeats}, taken in turn)")
  total_fast = total_one = total_plain = 0.0
  for hw, cin, cout in layers:
    x = jnp.asarray(rng.standard_normal((frames, hw, hw, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
    plain = nn.ConvTranspose(cout, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), use_bias=False)

    def loss_fast(x, k):
      return jnp.sum(jnp.square(conv_transpose(x, k, 2, 1, 1)))

    def loss_one(x, k):
      return jnp.sum(jnp.square(one_conv_phase_split(x, k, 2, 1, 1)))

    def loss_plain(x, k):
      return jnp.sum(jnp.square(plain.apply({"params": {"kernel": k}}, x)))

    assert plain.apply({"params": {"kernel": kernel}}, x).shape == (frames, 2 * hw, 2 * hw, cout)
    np.testing.assert_allclose(one_conv_phase_split(x, kernel, 2, 1, 1),
                               conv_transpose(x, kernel, 2, 1, 1), atol=1e-4, rtol=1e-4)
    grads = {name: jax.jit(jax.grad(fn, argnums=(0, 1)))
             for name, fn in (("ours", loss_fast), ("one", loss_one), ("plain", loss_plain))}
    t = interleaved({name: lambda fn=fn: jax.block_until_ready(fn(x, kernel))
                     for name, fn in grads.items()}, max(1, repeats), warm_up=True)
    total_fast += t["ours"]
    total_one += t["one"]
    total_plain += t["plain"]
    print(f"  {hw:2d}x{hw:<2d} {cin:4d}->{cout:<4d}  ours {t['ours'] * 1e3:8.1f} ms   "
          f"one conv {t['one'] * 1e3:8.1f} ms ({t['one'] / t['ours']:4.2f}x)   "
          f"nn.ConvTranspose {t['plain'] * 1e3:8.1f} ms ({t['plain'] / t['ours']:5.2f}x)")
  print(f"  all five: ours {total_fast:.3f} s, one conv {total_one:.3f} s "
        f"({total_one / total_fast:.2f}x), nn.ConvTranspose {total_plain:.3f} s "
        f"({total_plain / total_fast:.2f}x)")


def bench_generator(batch: int, frames: int, width: float, repeats: int):
  model = Generator(width=width)
  rng = np.random.default_rng(0)
  mel = jnp.asarray(rng.standard_normal((batch, frames, 80, 16, 1)), jnp.float32)
  face = jnp.asarray(rng.uniform(0, 1, (batch, frames, 96, 96, 6)), jnp.float32)
  target = jnp.asarray(rng.uniform(0, 1, (batch, frames, 96, 96, 3)), jnp.float32)
  emotion = jnp.asarray(rng.integers(0, 6, batch), jnp.int32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), mel[:1], face[:1], emotion[:1])
  print(f"generator width {width}: {count_params(variables['params']):,} parameters, "
        f"batch {batch} x {frames} frames")

  def loss(params, batch_stats):
    out, updates = model.apply({"params": params, "batch_stats": batch_stats}, mel, face, emotion,
                               train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.abs(out - target)), updates

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  first, step = _time(grad_fn, variables["params"], variables["batch_stats"], repeats=repeats)
  print(f"  train-step gradient: first call (with compile) {first:.1f} s, then {step:.2f} s/step")
  fwd = jax.jit(lambda v: model.apply(v, mel, face, emotion))
  first, t = _time(fwd, variables, repeats=repeats)
  print(f"  inference forward: first call {first:.1f} s, then {t:.2f} s")


def main(argv=None):
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16, help="clips per generator batch")
  parser.add_argument("--frames", type=int, default=5, help="frames per clip")
  parser.add_argument("--width", type=float, default=1.0, help="generator channel multiplier")
  parser.add_argument("--repeats", type=int, default=1, help="timed calls after the first")
  parser.add_argument("--skip-layers", action="store_true")
  parser.add_argument("--skip-generator", action="store_true")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  if not args.skip_layers:
    bench_layers(args.batch * args.frames, args.repeats, args.width)
  if not args.skip_generator:
    bench_generator(args.batch, args.frames, args.width, args.repeats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
