"""Training-step throughput per stage: examples/s and achieved FLOP/s (XLA cost analysis).

  python scripts/bench_train.py                                  # all stages, smoke + reference
  python scripts/bench_train.py --stages emogen --sizes reference --reference-batch 2 --steps 1
  python scripts/bench_train.py --json bench_train.json

Each stage's real pmapped train step (emogen_jax/*_step.py) on random in-memory batches over all
local devices: compile time, then the mean time of --steps steps after one warm-up step. FLOPs per
step come from ``jax.pmap(step).lower(...).compile().cost_analysis()`` (per device, times the
device count). "smoke" = the configs' :smoke variant (width 0.25, its batch); "reference" =
width 1.0 at --reference-batch (the configs' own batches, 128/64/16, take minutes per step on a
CPU; pass them explicitly on an accelerator). EmoGen's reference size includes the perceptual
loss with a full-width (random) VGG-19, like a real run with w_pl = 0.01.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

STAGE_CONFIGS = {"syncnet": "syncnet", "emotion_disc": "emotion_disc", "emogen": "emogen"}


def _config(stage: str, size: str, batch: int | None):
  spec = importlib.util.spec_from_file_location(f"_cfg_{stage}",
                                                os.path.join(REPO, "configs", f"{stage}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("smoke" if size == "smoke" else None)
  c.synthetic_data = True
  c.allow_random_init = True
  if batch:
    c.batch_size = batch
  return c


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def bench(stage: str, size: str, *, batch: int | None, steps: int, dtype: str) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from emogen_jax.models import VGG19Features
  from emogen_jax.train import stages
  from emogen_jax.train.state import replicate

  config = _config(stage, size, batch)
  config.compute_dtype = dtype
  mod = stages.get(stage)
  n = jax.local_device_count()
  if config.batch_size % n:
    config.batch_size = n * max(1, config.batch_size // n)
  per_device = config.batch_size // n
  setup = mod.prepare(config, log=lambda *_: None)
  if stage == "emogen" and setup.get("use_vgg") and size == "reference":
    setup["vgg_width"] = 1.0
    setup["vgg19"] = VGG19Features().init(jax.random.PRNGKey(1), jnp.zeros((1, 96, 96, 3)))
    setup["random_init"].append("vgg19")
  state = replicate(mod.init_state(config, jax.random.PRNGKey(0), setup))
  rng = np.random.default_rng(0)
  batch_np = mod.fake_batch(rng, config.batch_size)
  batch_np = {k: v.reshape((n, per_device) + v.shape[1:]) for k, v in batch_np.items()}

  p_step = jax.pmap(mod.make_train_step(config, setup), axis_name="batch")
  t0 = time.perf_counter()
  compiled = p_step.lower(state, batch_np).compile()
  compile_s = time.perf_counter() - t0
  flops_per_step = _flops(compiled) * n
  state, m = p_step(state, batch_np)  # warm-up (also checks the step runs)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = p_step(state, batch_np)
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / steps
  return {"stage": stage, "size": size, "width": float(config.width), "dtype": dtype,
          "devices": n, "platform": jax.devices()[0].platform, "batch": config.batch_size,
          "compile_s": round(compile_s, 2), "step_s": round(step_s, 4),
          "examples_per_s": round(config.batch_size / step_s, 3),
          "gflop_per_step": round(flops_per_step / 1e9, 3),
          "achieved_gflop_per_s": round(flops_per_step / step_s / 1e9, 3),
          "loss": float(np.asarray(m["loss"])[0])}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--stages", default="syncnet,emotion_disc,emogen")
  p.add_argument("--sizes", default="smoke,reference", help="smoke and/or reference")
  p.add_argument("--smoke-batch", type=int, default=None, help="default: the :smoke config's")
  p.add_argument("--reference-batch", type=int, default=2,
                 help="global batch at reference size (default 2: CPU-friendly)")
  p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--json", default=None, help="also write the rows to this JSON file")
  args = p.parse_args(argv)
  rows = []
  for stage in [s for s in args.stages.split(",") if s]:
    if stage not in STAGE_CONFIGS:
      p.error(f"unknown stage {stage!r}; use {', '.join(STAGE_CONFIGS)}")
    for size in [s for s in args.sizes.split(",") if s]:
      if size not in ("smoke", "reference"):
        p.error(f"unknown size {size!r}; use smoke or reference")
      batch = args.smoke_batch if size == "smoke" else args.reference_batch
      row = bench(stage, size, batch=batch, steps=max(1, args.steps), dtype=args.dtype)
      rows.append(row)
      print(f"{row['stage']:>12} {row['size']:>9} width {row['width']:<5} batch {row['batch']:>4} "
            f"on {row['devices']} {row['platform']}: step {row['step_s']:.3f} s, "
            f"{row['examples_per_s']:.2f} examples/s, {row['gflop_per_step']:.1f} GFLOP/step, "
            f"{row['achieved_gflop_per_s']:.1f} GFLOP/s achieved (compile {row['compile_s']:.0f} s)",
            flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
