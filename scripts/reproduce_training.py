"""End-to-end learnability of the three training stages on a (synthetic) preprocessed corpus, on CPU.

  python -m data_tools.make_synthetic --out V --actors 6 --clips-per-actor 12
  python -m data_tools.preprocess --src V --data-dir D
  python scripts/reproduce_training.py --data-dir D --workdir W

Trains, with the :smoke configs (width 0.25, tiny batches), in this order:
  1. the lip-sync expert (configs/syncnet.py:smoke)        -> W/syncnet
  2. the emotion discriminator (configs/emotion_disc.py:smoke) -> W/emotion_disc
  3. EmoGen (configs/emogen.py:smoke) with 1. as its frozen expert and 2. as its initial
     emotion discriminator                                  -> W/emogen
and checks the validation results against the targets:
  in-sync accuracy >= 75 %, emotion accuracy >= 60 %, EmoGen validation L1 at least 30 % below its
  first validation (taken before the first step).
Writes W/reproduce.json; exit status 0 when every target is met, 1 otherwise. An existing W resumes
(finished stages are skipped). The staging itself is emogen_jax.stages.train_stages, shared with
python -m emogen_jax.quickstart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from emogen_jax import stages  # noqa: E402  (after the sys.path entry for a plain checkout)
from emogen_jax.errors import UserError  # noqa: E402

TARGETS = stages.TARGETS


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data-dir", required=True, help="preprocessed corpus (data_tools.preprocess)")
  p.add_argument("--workdir", required=True)
  # Measured on the 6x12-clip synthetic corpus: val in-sync accuracy 0.52 at 1500 steps, 0.71 at
  # 2500, 0.77 at 3300 (the loss sits near 0.69-0.75 for the first ~1000 steps, as the SPEC says).
  p.add_argument("--syncnet-steps", type=int, default=3500)
  p.add_argument("--emotion-steps", type=int, default=600)
  p.add_argument("--emogen-steps", type=int, default=300)
  p.add_argument("--eval-every", type=int, default=0, help="default: a tenth of each stage's steps, at least 25")
  p.add_argument("--eval-batches", type=int, default=8)
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-progress", action="store_true", help="plain log lines instead of bars")
  args = p.parse_args(argv)

  try:
    results = stages.train_stages(
        args.data_dir, args.workdir, syncnet_steps=args.syncnet_steps,
        emotion_steps=args.emotion_steps, emogen_steps=args.emogen_steps, width=args.width,
        seed=args.seed, eval_every=args.eval_every, eval_batches=args.eval_batches,
        progress=not args.no_progress)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  with open(os.path.join(args.workdir, "reproduce.json"), "w") as f:
    json.dump(results, f, indent=2)
  for line in stages.target_lines(results):
    print(line)
  print(f"EmoGen validation L1 {results['emogen_first_l1']:.4f} -> {results['emogen_last_l1']:.4f}; "
        f"wall time {results['wall_s']}; {os.path.join(args.workdir, 'reproduce.json')}")
  return 0 if all(results["passed"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())
