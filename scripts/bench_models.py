"""Micro-benchmarks of the models on this machine.

1. The decoder's stride-2 transposed convs, forward+gradient: our phase-split ``conv_transpose``
   against Flax's ``nn.ConvTranspose`` (an lhs-dilated conv), same shapes, same run; prints the ratio.
2. The generator's training-step gradient (L1 loss, BatchNorm in training mode) at full size.

  python scripts/bench_models.py                    # both, batch 16 clips x 5 frames
  python scripts/bench_models.py --skip-generator   # layers only (a few seconds)
"""

from __future__ import annotations

import argparse
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from emogen_jax.models import Generator, count_params
from emogen_jax.models.layers import conv_transpose


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


def bench_layers(frames: int, repeats: int):
  # (input HxW, Cin, Cout) of decoder blocks D2..D6 at width 1.
  layers = [(3, 1024, 512), (6, 1024, 384), (12, 768, 256), (24, 512, 128), (48, 320, 64)]
  rng = np.random.default_rng(0)
  print(f"stride-2 transposed conv, forward+grad, {frames} frames (median of {repeats})")
  total_fast = total_plain = 0.0
  for hw, cin, cout in layers:
    x = jnp.asarray(rng.standard_normal((frames, hw, hw, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
    plain = nn.ConvTranspose(cout, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), use_bias=False)

    def loss_fast(x, k):
      return jnp.sum(jnp.square(conv_transpose(x, k, 2, 1, 1)))

    def loss_plain(x, k):
      return jnp.sum(jnp.square(plain.apply({"params": {"kernel": k}}, x)))

    assert plain.apply({"params": {"kernel": kernel}}, x).shape == (frames, 2 * hw, 2 * hw, cout)
    _, t_fast = _time(jax.jit(jax.grad(loss_fast, argnums=(0, 1))), x, kernel, repeats=repeats)
    _, t_plain = _time(jax.jit(jax.grad(loss_plain, argnums=(0, 1))), x, kernel, repeats=repeats)
    total_fast += t_fast
    total_plain += t_plain
    print(f"  {hw:2d}x{hw:<2d} {cin:4d}->{cout:<4d}  ours {t_fast * 1e3:8.1f} ms   "
          f"nn.ConvTranspose {t_plain * 1e3:8.1f} ms   ratio {t_plain / t_fast:5.2f}x")
  print(f"  all five: ours {total_fast:.3f} s, nn.ConvTranspose {total_plain:.3f} s, "
        f"ratio {total_plain / total_fast:.2f}x")


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
    bench_layers(args.batch * args.frames, args.repeats)
  if not args.skip_generator:
    bench_generator(args.batch, args.frames, args.width, args.repeats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
