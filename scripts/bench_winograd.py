"""Winograd's F(2x2) and F(4x4, 3x3) against oneDNN's direct kernels, layer by layer.

The oneDNN binding (emogen_jax/onednn_conv) computes the 3x3 stride-1 layers that
``binding.winograd_tile`` names by Winograd's algorithm on AVX-512 CPUs. This benchmark gives the
per-layer figures behind that rule: for each layer shape, the forward on oneDNN's direct kernels
(on XLA's threads, as the routed models run it), by F(2x2, 3x3) and by F(4x4, 3x3), the median
of ``--repeats`` calls each, in turn in one process; the ratios to the direct kernels; each
one's error against lax's convolution as a share of the largest output; and the tile the rule
takes. The default layers are the generator's 3x3 stride-1 shapes at batch 16 (inputs of unit
variance, kernels scaled by 1/sqrt(fan-in), as the trained models' activations are).

    python scripts/bench_winograd.py
    python scripts/bench_winograd.py --layers 24x24x256x256 96x96x64x64 --block 32 64 128
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from emogen_jax.errors import cli_main  # noqa: E402  (light)

# The generator's 3x3 stride-1 layers (H x W x Cin x Cout), largest first.
GENERATOR_LAYERS = ("96x96x64x64", "48x48x128x128", "24x24x256x256", "12x12x384x384",
                    "96x96x80x32", "6x6x512x512", "48x48x32x32", "24x24x64x64", "12x12x128x128",
                    "27x16x64x64", "80x16x32x32", "9x6x128x128")


def _layer(text: str) -> tuple[int, int, int, int]:
  try:
    h, w, cin, cout = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: give HxWxCINxCOUT, e.g. 24x24x256x256") from None
  if min(h, w, cin, cout) < 1:
    raise argparse.ArgumentTypeError(f"{text!r}: every size must be at least 1")
  return h, w, cin, cout


def _median_seconds(f, args, repeats: int) -> float:
  import numpy as np
  f(*args).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(*args).block_until_ready()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def bench_layer(layer, batch: int, blocks, repeats: int, seed: int = 0) -> dict:
  """One layer's row: direct, F(2x2) and F(4x4) times per block size, ratios, errors, rule."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from emogen_jax.onednn_conv import binding

  h, w, cin, cout = layer
  pads = ((1, 1), (1, 1))
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((batch, h, w, cin)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
  want = jax.lax.conv_general_dilated(x, k, (1, 1), pads, precision="highest",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  scale = float(jnp.max(jnp.abs(want)))
  error = lambda y: float(jnp.max(jnp.abs(y - want))) / scale
  direct = jax.jit(lambda x_, k_: binding._parts((1, 1), pads, "xla", None, None)[0](x_, k_))
  row = {"layer": "x".join(map(str, layer)), "batch": batch,
         "direct_s": _median_seconds(direct, (x, k), repeats), "direct_error": error(direct(x, k)),
         "rule_tile": binding.winograd_tile(x.shape, k.shape, (1, 1), pads, "xla"),
         "winograd": {}}
  for tile in (2, 4):
    for block in blocks:
      f = jax.jit(lambda x_, k_, t=tile, b=block: binding.winograd(x_, k_, pads, t, b))
      seconds = _median_seconds(f, (x, k), repeats)
      row["winograd"][f"F{tile}/{block}"] = {"seconds": seconds,
                                             "vs_direct": row["direct_s"] / seconds,
                                             "error": error(f(x, k))}
  return row


@cli_main  # a UserError (a bad EMOGEN_ONEDNN_WINOGRAD, a failed build) is one line
def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--layers", nargs="+", type=_layer, default=None,
                 help="layer shapes HxWxCINxCOUT (default: the generator's 3x3 stride-1 layers)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--block", type=int, nargs="+", default=None,
                 help="tiles per matmul block to time (default: the binding's, "
                      "binding.WINOGRAD_BLOCK)")
  p.add_argument("--repeats", type=int, default=7, help="timed calls per variant (the median)")
  p.add_argument("--cache-dir", default=None,
                 help="where oneDNN and the compiled binding are kept (default "
                      "~/.cache/emogen_jax/onednn_conv)")
  p.add_argument("--json", default=None, help="also write the rows to this JSON file")
  args = p.parse_args(argv)
  if args.batch < 1 or args.repeats < 1 or any(b < 1 for b in args.block or [1]):
    p.error("--batch, --repeats and --block must be at least 1")
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # the allocator the entry points run under (may re-execute this command)
  from emogen_jax.onednn_conv import binding
  binding.winograd_enabled()  # refuses an EMOGEN_ONEDNN_WINOGRAD other than 0 or 1, on any CPU
  if not binding.has_avx512():
    p.exit(2, "bench_winograd: this CPU has no AVX-512, which Winograd's transforms are compiled "
              "for; nothing to measure here\n")
  try:
    library = binding.build(args.cache_dir)
  except binding.BuildError as e:
    p.exit(2, f"bench_winograd: {e}\n")
  binding.load(library)
  layers = args.layers or [_layer(t) for t in GENERATOR_LAYERS]
  blocks = args.block or [binding.WINOGRAD_BLOCK]
  print(f"oneDNN binding: {library}; batch {args.batch}, median of {args.repeats} calls; "
        f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
  rows = []
  for layer in layers:
    row = bench_layer(layer, args.batch, blocks, args.repeats)
    rows.append(row)
    variants = "; ".join(f"{name} {v['seconds'] * 1e3:.1f} ms {v['vs_direct']:.2f}x (error "
                         f"{v['error']:.0e})" for name, v in row["winograd"].items())
    taken = f"F({row['rule_tile']}x{row['rule_tile']})" if row["rule_tile"] else "direct"
    print(f"{row['layer']:>14}: direct {row['direct_s'] * 1e3:.1f} ms (error "
          f"{row['direct_error']:.0e}); {variants}; the rule takes {taken}", flush=True)
  import bench_train
  bench_train.write_rows(args.json, rows)
  return 0


if __name__ == "__main__":
  sys.exit(main())
