"""A training step on oneDNN's convolution kernels against the same step on XLA's, and PyTorch's.

The training steps' gap to PyTorch on a CPU is the convolution kernels (docs/design.md
"CPU speed"); ``config.cpu_convolutions = "onednn"`` puts oneDNN's under our models instead
(`emogen_jax/onednn_conv`: oneDNN from PyPI called through XLA's FFI; needs g++ and the package
index once, then cached). This benchmark times `scripts/bench_train.py`'s step in separate
processes, in turn: on XLA's kernels (``xla``, with ``--compare-torch``: PyTorch's step in the
same process) and on oneDNN's, for each ``--threads`` mode: ``xla`` (what the config option runs:
oneDNN without threads of its own, each call split onto XLA's thread pool) and ``omp`` (oneDNN's
own OpenMP team per call, as PyTorch runs it). PyTorch's figure comes from the ``xla`` process
only: PyTorch and the binding's ``omp`` mode load the same OpenMP runtime (``libgomp.so.1``), and
two callers of it make it shorten every thread's spin-wait, which slows PyTorch's own step by
10-20 %; in separate processes neither sees the other.

    python scripts/bench_onednn.py --stage syncnet --batch 16 --steps 6 --rounds 2
    python scripts/bench_onednn.py --stage emogen --batch 2 --steps 4 --rounds 2
    python scripts/bench_onednn.py --stage syncnet --batch 16 --threads omp xla

Prints per round the three step times and the ratios, with the time spent inside the oneDNN
handlers per step (its forwards, input gradients and weight gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from emogen_jax.onednn_conv import binding  # noqa: E402  (light: builds nothing until asked)

_STATS = re.compile(r"onednn_conv stats: forward (\d+) calls ([\d.]+) ms, input gradient (\d+) "
                    r"calls ([\d.]+) ms, weight gradient (\d+) calls ([\d.]+) ms")


def child(variant: str, cache_dir: str, bench_args: list[str]) -> int:
  """One bench_train run in this process, its convolutions on oneDNN for ``onednn-*``."""
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # the allocator bench_train.py runs under (may re-execute this command)
  if variant.startswith("onednn"):
    binding.route_convolutions(binding.build(cache_dir), threads=variant.split("-", 1)[1])
  import bench_train
  return bench_train.main(bench_args)


def run_variant(variant: str, args, json_path: str) -> dict:
  # The child routes its own convolutions (or not, for "xla"): bench_train must leave them as
  # they are, not apply its default (auto, which would route to oneDNN's again).
  bench_args = ["--stages", args.stage, "--sizes", args.size, "--steps", str(args.steps),
                "--no-peak", "--json", json_path, "--cpu-convolutions", "xla"]
  if args.batch is not None:
    bench_args += [f"--{args.size}-batch", str(args.batch)]
  if variant == "xla":
    bench_args.append("--compare-torch")
  cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--cache-dir",
         args.cache_dir, "--", *bench_args]
  env = dict(os.environ, EMOGEN_ONEDNN_STATS="1")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if proc.returncode != 0:
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    raise SystemExit(f"bench_onednn: the {variant} run failed (exit {proc.returncode}):\n{tail}")
  with open(json_path) as f:
    row = json.load(f)[0]
  m = _STATS.search(proc.stderr)
  row["onednn_calls"] = [int(m.group(2 * i + 1)) for i in range(3)] if m else [0, 0, 0]
  if variant.startswith("onednn"):
    if not m:
      raise SystemExit("bench_onednn: the onednn run printed no handler statistics: were its "
                       "convolutions routed to oneDNN?")
    row["onednn_ms_per_step"] = {part: float(m.group(2 * i + 2)) / row["step_runs"]
                                 for i, part in enumerate(("forward", "input_grad", "weight_grad"))}
  return row


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--child" in argv:
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=("xla",) + tuple(f"onednn-{t}" for t in binding.THREADS))
    p.add_argument("--cache-dir")
    a = p.parse_args(argv[:split])
    return child(a.child, a.cache_dir, argv[split + 1:])
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--stage", default="syncnet", choices=("syncnet", "emotion_disc", "emogen"))
  p.add_argument("--size", default="reference", choices=("smoke", "reference"))
  p.add_argument("--batch", type=int, default=None,
                 help="global batch (default: bench_train.py's for the size)")
  p.add_argument("--steps", type=int, default=4, help="timed steps per run, after one warm-up")
  p.add_argument("--rounds", type=int, default=2,
                 help="rounds of the runs (xla, then oneDNN in each --threads mode), the order "
                      "reversed every other round")
  p.add_argument("--threads", nargs="+", default=["xla"], choices=binding.THREADS,
                 help="oneDNN's threads: its own OpenMP team per call (omp, as in PyTorch), or "
                      "none, the call split over the batch onto XLA's pool (xla); several are "
                      "timed in turn")
  p.add_argument("--cache-dir", default=None,
                 help="where oneDNN and the compiled binding are kept (default "
                      "~/.cache/emogen_jax/onednn_conv)")
  p.add_argument("--json", default=None, help="also write the rounds to this JSON file")
  args = p.parse_args(argv)
  if args.rounds < 1 or args.steps < 1:
    p.error("--rounds and --steps must be at least 1")
  if args.batch is not None and args.batch < 1:
    p.error(f"--batch {args.batch}: give at least 1 (the global batch of the step)")
  args.cache_dir = os.path.abspath(args.cache_dir or binding.default_cache_dir())
  try:
    library = binding.build(args.cache_dir)
  except binding.BuildError as e:
    p.exit(2, f"bench_onednn: {e}\n")
  print(f"oneDNN binding: {library}", flush=True)
  rounds = []
  variants = ["xla"] + [f"onednn-{t}" for t in dict.fromkeys(args.threads)]
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      order = variants if r % 2 == 0 else variants[::-1]
      rows = {v: run_variant(v, args, os.path.join(tmp, f"{v}{r}.json")) for v in order}
      xla = rows["xla"]
      result = {"round": r + 1, "order": order, "xla_s": xla["step_s"],
                "torch_s": xla["torch_step_s"], "xla_onednn_calls": xla["onednn_calls"],
                "onednn": {}}
      parts = []
      for v in variants[1:]:
        one = rows[v]
        result["onednn"][v.split("-", 1)[1]] = {
            "step_s": one["step_s"], "ms_per_step": one["onednn_ms_per_step"],
            "calls": one["onednn_calls"], "step_runs": one["step_runs"], "loadavg": one["loadavg"]}
        inside = one["onednn_ms_per_step"]
        parts.append(
            f"oneDNN's ({v.split('-', 1)[1]} threads) {one['step_s']:.3f} s "
            f"({xla['step_s'] / one['step_s']:.2f}x XLA's, {xla['torch_step_s'] / one['step_s']:.2f}x "
            f"PyTorch; inside oneDNN per step, warm-up included: forward {inside['forward']:.0f} ms, "
            f"input gradient {inside['input_grad']:.0f} ms, weight gradient "
            f"{inside['weight_grad']:.0f} ms)")
      rounds.append(result)
      print(f"{args.stage} {args.size} batch {xla['batch']} round {r + 1} ({' then '.join(order)}): "
            f"PyTorch {xla['torch_step_s']:.3f} s; XLA's kernels {xla['step_s']:.3f} s "
            f"({xla['torch_step_s'] / xla['step_s']:.2f}x PyTorch); " + "; ".join(parts)
            + f"; load {xla['loadavg']}", flush=True)
  import bench_train
  bench_train.write_rows(args.json, rounds)
  return 0


if __name__ == "__main__":
  sys.exit(main())
