"""Before/after of the hand-written BatchNorm gradient, in one process: the real training step
(scripts/bench_train.py's build) with ``models.layers.batch_norm_train`` as it is, and with it
replaced by the plain formula that JAX differentiates (what the layer did before); timed in
turn, medians, plus the largest parameter difference after one step from the same state.

  python scripts/bench_batchnorm.py --stages syncnet --sizes smoke,reference --reference-batch 16
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _plain_batch_norm_train(x, scale, bias, epsilon, axis_name, out_dtype):
  import jax
  import jax.numpy as jnp
  from emogen_jax.models import layers
  xf = x.astype(jnp.float32)
  mean, var = layers._batch_stats(xf, axis_name)
  y = (xf - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
  return y.astype(out_dtype), mean, var


def main(argv=None) -> int:
  import jax
  import numpy as np
  from bench_train import _load, build, interleaved
  from emogen_jax.models import layers

  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--stages", default="syncnet")
  p.add_argument("--sizes", default="smoke,reference")
  p.add_argument("--reference-batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args(argv)
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  custom = layers.batch_norm_train
  for stage in args.stages.split(","):
    for size in args.sizes.split(","):
      batch = args.reference_batch if size == "reference" else None
      layers.batch_norm_train = _plain_batch_norm_train
      try:
        before = build(stage, size, batch=batch, dtype="float32")
      finally:
        layers.batch_norm_train = custom
      after = build(stage, size, batch=batch, dtype="float32")
      before["run"](), after["run"]()
      diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
          jax.tree_util.tree_leaves(before["holder"]["state"].params),
          jax.tree_util.tree_leaves(after["holder"]["state"].params)))
      medians = interleaved({"before": before["run"], "after": after["run"]}, args.steps)
      tb, ta = medians["before"], medians["after"]
      print(f"{stage} {size} batch {after['config'].batch_size}: autodiff BatchNorm {tb:.3f} s, "
            f"hand-written gradient {ta:.3f} s: {tb / ta:.2f}x; params after one step differ by "
            f"<= {diff:.2e}; load {_load()}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
