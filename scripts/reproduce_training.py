"""Learnability of the three training stages on CPU, and emotion control, in one command.

  python scripts/reproduce_training.py --workdir W
      renders the synthetic corpus (16 actors x 12 clips), converts and preprocesses it, trains the
      three stages and renders the demo: `python -m emogen_jax.quickstart --out W` with the same
      defaults (a rerun resumes; finished stages are skipped)
  python scripts/reproduce_training.py --workdir W --data-dir D
      only the three trainings, on a corpus you preprocessed (python -m data_tools.preprocess)

Training uses the :smoke configs (width 0.25, small batches) in this order:
  1. the lip-sync expert (configs/syncnet.py:smoke)             -> .../syncnet
  2. the emotion discriminator (configs/emotion_disc.py:smoke)  -> .../emotion_disc
  3. the independent emotion classifier (configs/emotion_disc.py:smoke, seed + 1000), the judge
     of EmoAcc                                                   -> .../emotion_judge
  4. EmoGen (configs/emogen.py:smoke) with 1. as its frozen expert, 2. as its initial
     emotion discriminator and 3. scoring its validation windows -> .../emogen
then judges the final validation figures (whole validation split) against the targets:
  in-sync accuracy >= 75 %, emotion accuracy >= 60 %, EmoGen validation L1 at least 30 % below its
  first validation (taken before the first step).
Writes W/reproduce.json; exit status 0 when every target is met, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from emogen_jax import quickstart  # noqa: E402  (after the sys.path entry for a plain checkout)

from emogen_jax.errors import UserError  # noqa: E402
from emogen_jax.train import recipe as stages

D = quickstart.DEFAULTS


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="output folder (a rerun resumes it)")
  p.add_argument("--data-dir", default=None,
                 help="a preprocessed corpus to train on (default: render the synthetic one)")
  p.add_argument("--actors", type=int, default=D["actors"], help="synthetic corpus only")
  p.add_argument("--clips-per-actor", type=int, default=D["clips_per_actor"], help="synthetic corpus only")
  p.add_argument("--syncnet-steps", type=int, default=D["syncnet_steps"])
  p.add_argument("--emotion-steps", type=int, default=D["emotion_steps"])
  p.add_argument("--emogen-steps", type=int, default=D["emogen_steps"])
  p.add_argument("--eval-batches", type=int, default=0, help="0: the whole validation split")
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-progress", action="store_true", help="plain log lines instead of bars")
  args = p.parse_args(argv)

  steps = {"syncnet_steps": args.syncnet_steps, "emotion_steps": args.emotion_steps,
           "emogen_steps": args.emogen_steps}
  try:
    if args.data_dir is None:
      summary = quickstart.run_quickstart(
          args.workdir, actors=args.actors, clips_per_actor=args.clips_per_actor, seed=args.seed,
          width=args.width, eval_batches=args.eval_batches, progress=not args.no_progress, **steps)
      quickstart.print_summary(summary)
      with open(os.path.join(args.workdir, "train", "stages.json")) as f:
        results = json.load(f)
      results["wall_s_corpus"] = {k: summary["wall_s"][k] for k in ("corpus", "convert_fps", "preprocess")}
    else:
      results = stages.train_stages(args.data_dir, args.workdir, width=args.width, seed=args.seed,
                                    eval_batches=args.eval_batches,
                                    progress=not args.no_progress, **steps)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  with open(os.path.join(args.workdir, "reproduce.json"), "w") as f:
    json.dump(results, f, indent=2)
  print()
  for line in stages.target_lines(results):
    print(line)
  print(f"EmoGen validation L1 {results['emogen_first_l1']:.4f} -> {results['emogen_last_l1']:.4f}; "
        f"validation examples {results['validation_examples']}; training wall time (s) "
        f"{results['wall_s']}; {os.path.join(args.workdir, 'reproduce.json')}")
  acc, sens = results.get("emogen_emo_acc"), results.get("emogen_emo_sensitivity")
  if acc is not None:
    print(f"EmoGen emotion control (validation, judged by the independent classifier): EmoAcc "
          f"{100 * acc:.1f} % (chance 16.7 %), per target "
          + ", ".join(f"{k} {100 * v:.0f} %" for k, v in results["emogen_emo_acc_per_target"].items())
          + f"; label sensitivity {sens:.4f}")
  return 0 if all(results["passed"].values()) else 1


if __name__ == "__main__":
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  sys.exit(main())
