"""Generator inference speed, ours against PyTorch in the same process: frames/s per batch size.

  python scripts/bench_infer.py                         # full width, batches of 16 (the CLI's) and 80
  python scripts/bench_infer.py --batches 16 --repeats 10 --json infer.json

Our jitted ``Generator.apply`` (frame mode, BatchNorm from running statistics, as the inference
CLI's Renderer calls it) and the tests' PyTorch reference generator (tests/_torch_reference.py)
with the same random weights and inputs; one call of each in turn, ``--repeats`` times, medians.
The load average is printed beside the figures: on a shared machine only the ratio is stable.
``--calls N`` (default 2, the inference stream's ``GENERATOR_CALLS``) also times N calls of the same
batch in flight at once, each in its own thread, for both frameworks (frames/s over all of them).

Each row also times a float32 2048x2048 matmul in the same process (``bench_train.matmul_rate``)
and gives both generators' achieved rates as a share of it, with the frames/s the model's FLOP
count would allow at that rate: a direct convolution can at best approach the dense matmul rate,
so this is the ceiling of any speed-up that keeps the arithmetic (``--no-peak`` skips it). The
FLOPs are the model's (a Winograd layer counts as the direct convolution it computes), so a run
whose 3x3 layers go by Winograd's algorithm (oneDNN's path on AVX-512) can pass 100 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # torch_baseline, bench_train

from emogen_jax.errors import cli_main  # noqa: E402


def in_flight(fn, calls: int):
  """A callable that runs ``fn`` ``calls`` times at once in threads and returns when all are done."""
  import concurrent.futures
  pool = concurrent.futures.ThreadPoolExecutor(calls)
  return lambda: [f.result() for f in [pool.submit(fn) for _ in range(calls)]]


def bench(batch: int, width: float, repeats: int, dtype: str, compare_torch: bool,
          peak: bool = True, calls: int = 1) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from bench_train import _flops, _load, interleaved, matmul_math, matmul_rate, torch_device
  from emogen_jax.models import Generator
  from emogen_jax.train.state import init_variables

  model = Generator(width=width, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  rng = np.random.default_rng(0)
  mel = rng.normal(0, 2, (batch, 80, 16, 1)).clip(-4, 4).astype(np.float32)
  face = np.concatenate([np.zeros((batch, 96, 96, 3), np.float32),
                         rng.uniform(0, 1, (batch, 96, 96, 3)).astype(np.float32)], axis=-1)
  emotion = rng.integers(0, 6, (batch,)).astype(np.int32)
  variables = init_variables(Generator(width=width), jax.random.PRNGKey(0), mel[:1], face[:1],
                             emotion[:1], train=False)
  forward = jax.jit(lambda v, m, f, e: model.apply(v, m, f, e, train=False))
  args = (variables, jnp.asarray(mel), jnp.asarray(face), jnp.asarray(emotion))
  t0 = time.perf_counter()
  compiled = forward.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  ours = lambda: jax.block_until_ready(compiled(*args))
  ours()
  theirs = None
  our_math, torch_math = matmul_math()
  if compare_torch:
    import torch_baseline as tb
    device = torch_device(jax.devices()[0].platform)
    sd = tb.state_dict("generator", jax.device_get(variables), width, device, trainable=False)
    theirs = tb.generator_forward(sd, mel, face, emotion, device)
    theirs()
  fns = {"ours": ours, **({"torch": theirs} if theirs else {})}
  if calls > 1:
    fns.update({f"{k}_in_flight": in_flight(f, calls) for k, f in list(fns.items())})
  medians = interleaved(fns, repeats)
  step = medians["ours"]
  flops = _flops(compiled)
  row = {"batch": batch, "width": width, "dtype": dtype, "matmul_math": our_math,
         **({"torch_matmul_math": torch_math if device == "cpu" else "float32"}
            if theirs is not None else {}),
         "platform": jax.devices()[0].platform,
         "compile_s": round(compile_s, 2), "call_s": round(step, 4),
         "frames_per_s": round(batch / step, 2),
         "achieved_gflop_per_s": round(flops / step / 1e9, 1), "loadavg": _load()}
  if theirs is not None:
    t = medians["torch"]
    row.update(torch_call_s=round(t, 4), torch_frames_per_s=round(batch / t, 2),
               torch_device=device, speedup_vs_torch=round(t / step, 3),
               torch_achieved_gflop_per_s=round(flops / t / 1e9, 1))  # the same network's FLOPs
  if calls > 1:
    row.update(calls_in_flight=calls,
               in_flight_frames_per_s=round(calls * batch / medians["ours_in_flight"], 2))
    if theirs is not None:
      row.update(torch_in_flight_frames_per_s=round(calls * batch / medians["torch_in_flight"], 2))
  if peak:
    rate = matmul_rate()
    row.update(matmul_gflop_per_s=round(rate, 1),
               frames_per_s_at_matmul_rate=round(batch * rate * 1e9 / flops, 2))
  return row


@cli_main  # a UserError (a bad setting, a failed oneDNN build) is one line
def main(argv=None) -> int:
  from emogen_jax import onednn_conv
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batches", default="16,80", help="comma-separated frames per call")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--calls", type=int, default=2,
                 help="also time this many calls in flight at once (1: one call only)")
  p.add_argument("--no-torch", action="store_true", help="time ours only")
  p.add_argument("--no-peak", action="store_true",
                 help="skip the float32 matmul rate (the ceiling line)")
  p.add_argument("--cpu-convolutions", default="auto", choices=onednn_conv.CHOICES,
                 help="our convolution kernels on the CPU (config.cpu_convolutions): auto (the "
                      "library's default), xla or onednn (built with g++ on first use); the rows "
                      "name the kernels used")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  from bench_train import _math_label
  from emogen_jax import allocator
  with onednn_conv.cpu_convolutions(args.cpu_convolutions, where="--cpu-convolutions") as kernels:
    rows = []
    for b in [int(x) for x in args.batches.split(",") if x]:
      row = bench(b, args.width, max(1, args.repeats), args.dtype, not args.no_torch,
                  not args.no_peak, max(1, args.calls))
      row["cpu_convolutions"] = kernels
      rows.append(row)
      print(f"generator width {row['width']} batch {b:>4} {row['dtype']} "
            + _math_label(row, kernels) + f"on {row['platform']}: "
            f"{row['frames_per_s']:.1f} frames/s ({row['achieved_gflop_per_s']:.0f} GFLOP/s)"
            + (f"; PyTorch ({row['torch_device']}) {row['torch_frames_per_s']:.1f} frames/s: "
               f"ours {row['speedup_vs_torch']:.2f}x" if "torch_call_s" in row else "")
            + f"; load {row['loadavg']}; {allocator.describe()}", flush=True)
      if "calls_in_flight" in row:
        print(f"  {row['calls_in_flight']} calls in flight at once: ours "
              f"{row['in_flight_frames_per_s']:.1f} frames/s"
              + (f", PyTorch {row['torch_in_flight_frames_per_s']:.1f}: ours "
                 f"{row['in_flight_frames_per_s'] / row['torch_in_flight_frames_per_s']:.2f}x"
                 if "torch_in_flight_frames_per_s" in row else ""), flush=True)
      if "matmul_gflop_per_s" in row:
        rate = row["matmul_gflop_per_s"]
        share = lambda g: f"{100 * g / rate:.0f} %"
        print(f"  float32 matmul on this device {rate:.0f} GFLOP/s: ours at "
              f"{share(row['achieved_gflop_per_s'])}"
              + (f", PyTorch at {share(row['torch_achieved_gflop_per_s'])}"
                 if "torch_achieved_gflop_per_s" in row else "")
              + f" of it; at that rate the generator's FLOPs allow "
              f"{row['frames_per_s_at_matmul_rate']:.1f} frames/s", flush=True)
    from bench_train import write_rows
    write_rows(args.json, rows)
  return 0


if __name__ == "__main__":
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  sys.exit(main())
