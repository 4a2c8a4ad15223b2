"""A training step under different settings of its speed rules, timed in turn.

  python scripts/bench_rules.py --stage syncnet --size reference --batch 16 \
      --variant "before: PHASE_INPUT_MIN_POSITIONS=10**9" --variant "now:"
  python scripts/bench_rules.py --stage emogen --size smoke --batch 8 --sync-off \
      --variant "xla weight grads: TAP_GRAD_MIN_CHANNELS=10**9" --variant "now:" --rounds 6
  python scripts/bench_rules.py --stage emotion_disc --size reference --batch 4 \
      --variant "donated: DONATE_STATE_ON_CPU=1" --variant "now:" --rounds 20

`models.layers` picks, per convolution and at trace time, which gradient form it uses (the
per-tap weight gradient, the per-phase and one-matmul input gradients, the FFT first layers) by
module constants; `train.stages.base.DONATE_STATE_ON_CPU` says whether the CPU step donates its
state. Each ``--variant "NAME: CONST=VALUE, ..."`` sets some of them (the others keep
their defaults; an integer expression such as ``10**9`` switches a rule off), then builds the
stage's step exactly as `scripts/bench_train.py` does, from the same initial state and batch.
All variants are compiled side by side in this one process and run round after round, each
round one step of each variant in turn, ``--steps`` times, so that every variant sees the same
machine load; the result is the median over the rounds of each variant's median per round, and how far each
variant's parameters ended from the first variant's (rounding only, where the variants compute
the same step). Whole runs on a shared CPU drift by 10-20 % within an hour; this is the
measure these rules were chosen by.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def rule_modules():
  """The modules whose integer UPPER_CASE constants a variant may set: `models.layers`' gradient
  rules and `train.stages.base`'s state donation on the CPU."""
  from emogen_jax.models import layers
  from emogen_jax.train.stages import base
  return (layers, base)


def _owner(const: str):
  """The rule module defining integer constant ``const`` (None if none does)."""
  for module in rule_modules():
    if const.isupper() and isinstance(getattr(module, const, None), int):
      return module
  return None


def parse_variant(text: str) -> tuple[str, dict[str, int]]:
  """'NAME: A=1, B=10**9' -> ('NAME', {'A': 1, 'B': 1000000000}); every constant must exist."""
  name, sep, assigns = text.partition(":")
  if not sep or not name.strip():
    raise ValueError(f"--variant {text!r}: write it as 'NAME: CONST=VALUE, ...' (the part after "
                     "the colon may be empty: the defaults)")
  values = {}
  for item in filter(None, (a.strip() for a in assigns.split(","))):
    const, eq, expr = item.partition("=")
    const = const.strip()
    if not eq or _owner(const) is None:
      rules = ", ".join(k for m in rule_modules() for k in sorted(vars(m)) if _owner(k) is m)
      raise ValueError(f"--variant {text!r}: {item!r} is not CONST=VALUE for one of the integer "
                       f"rule constants ({rules})")
    try:
      values[const] = int(eval(compile(ast.parse(expr.strip(), mode="eval"), "<variant>", "eval"),
                               {"__builtins__": {}}))
    except Exception as e:  # noqa: BLE001 - any bad expression gets the same one-line error
      raise ValueError(f"--variant {text!r}: {expr.strip()!r} is not an integer expression "
                       f"({type(e).__name__})") from None
  return name.strip(), values


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--stage", default="syncnet", choices=("syncnet", "emotion_disc", "emogen"))
  p.add_argument("--size", default="reference", choices=("smoke", "reference"))
  p.add_argument("--batch", type=int, default=None, help="global batch (default: the smoke "
                 "config's; 2 at the reference size, as bench_train.py)")
  p.add_argument("--variant", action="append", required=True,
                 help="'NAME: CONST=VALUE, ...' (repeat; the first is the reference)")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3, help="steps of each variant per round")
  p.add_argument("--sync-off", action="store_true", help="EmoGen's step without the sync term")
  args = p.parse_args(argv)
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  if args.batch is None and args.size == "reference":
    args.batch = 2
  if args.sync_off and args.stage != "emogen":
    p.error("--sync-off only changes the emogen stage")
  if args.rounds < 1 or args.steps < 1:
    p.error("--rounds and --steps must be at least 1")
  try:
    variants = [parse_variant(v) for v in args.variant]
  except ValueError as e:
    p.error(str(e))
  if len({name for name, _ in variants}) != len(variants):
    p.error("give every --variant its own name")

  import jax
  import numpy as np

  import bench_train

  defaults = {c: getattr(_owner(c), c) for c in sorted({c for _, v in variants for c in v})}
  built = {}
  for name, values in variants:
    for const, value in {**defaults, **values}.items():
      setattr(_owner(const), const, value)
    t0 = time.perf_counter()
    try:
      b = bench_train.build(args.stage, args.size, batch=args.batch, dtype="float32",
                            sync_on=not args.sync_off)
    finally:
      for const, value in defaults.items():
        setattr(_owner(const), const, value)
    b["run"]()  # warm-up
    built[name] = b
    print(f"{name}: built in {time.perf_counter() - t0:.1f} s "
          f"({', '.join(f'{k}={v}' for k, v in values.items()) or 'defaults'})", flush=True)

  rounds = {name: [] for name in built}
  for r in range(args.rounds):
    for name, seconds in bench_train.interleaved(
        {name: b["run"] for name, b in built.items()}, args.steps).items():
      rounds[name].append(seconds)
    print(f"round {r + 1}: " + ", ".join(f"{n} {rounds[n][-1]:.4f} s" for n in built), flush=True)

  first = next(iter(built))
  leaves = {n: jax.tree_util.tree_leaves(jax.device_get(b["holder"]["state"].params))
            for n, b in built.items()}
  base = float(np.median(rounds[first]))
  print(f"{args.stage} {args.size} (batch {args.batch or 'default'}), median of {args.rounds} "
        f"rounds x {args.steps} steps, load {os.getloadavg()[0]:.2f}:")
  for name in built:
    med = float(np.median(rounds[name]))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves[first], leaves[name]))
    print(f"  {name:<24} {med:.4f} s  {base / med:5.3f}x  max |param - {first}'s| {diff:.2g}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
