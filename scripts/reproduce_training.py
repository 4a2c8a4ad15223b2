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
Writes W/reproduce.json; exit status 0 when every target is met, 1 otherwise. An existing W resumes.
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

TARGETS = {"syncnet_accuracy": 0.75, "emotion_accuracy": 0.60, "emogen_l1_decrease": 0.30}


def _config(name: str, overrides: dict):
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("smoke")
  for k, v in overrides.items():
    c[k] = v
  return c


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data-dir", required=True, help="preprocessed corpus (data_tools.preprocess)")
  p.add_argument("--workdir", required=True)
  p.add_argument("--syncnet-steps", type=int, default=1500)
  p.add_argument("--emotion-steps", type=int, default=600)
  p.add_argument("--emogen-steps", type=int, default=300)
  p.add_argument("--eval-every", type=int, default=0, help="default: a tenth of each stage's steps")
  p.add_argument("--eval-batches", type=int, default=8)
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  from emogen_jax import train
  from emogen_jax.errors import UserError

  os.makedirs(args.workdir, exist_ok=True)
  common = {"data_dir": args.data_dir, "width": args.width, "seed": args.seed,
            "eval_batches": args.eval_batches, "log_every_steps": 25}

  def run(name, steps, **extra):
    every = args.eval_every or max(1, steps // 10)
    c = _config(name, {**common, "num_train_steps": steps, "eval_every_steps": every,
                       "checkpoint_every_steps": every, **extra})
    t0 = time.time()
    summary = train.train_and_evaluate(c, os.path.join(args.workdir, name))
    summary["wall_s"] = round(time.time() - t0, 1)
    return summary

  try:
    sync = run("syncnet", args.syncnet_steps)
    emo = run("emotion_disc", args.emotion_steps)
    gen = run("emogen", args.emogen_steps, eval_at_start=True,
              syncnet_checkpoint=os.path.join(args.workdir, "syncnet"),
              emotion_disc_checkpoint=os.path.join(args.workdir, "emotion_disc"))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  hist = gen["validation_history"]
  first_l1 = hist[0]["l1"] if hist else float("nan")
  last_l1 = gen["validation"]["l1"]
  results = {
      "syncnet_accuracy": sync["validation"]["accuracy"],
      "syncnet_loss": sync["validation"]["loss"],
      "emotion_accuracy": emo["validation"]["accuracy"],
      "emotion_loss": emo["validation"]["loss"],
      "emogen_first_l1": first_l1,
      "emogen_last_l1": last_l1,
      "emogen_l1_decrease": 1.0 - last_l1 / first_l1 if first_l1 else float("nan"),
      "emogen_val_sync": gen["validation"].get("sync"),
      "wall_s": {"syncnet": sync["wall_s"], "emotion_disc": emo["wall_s"], "emogen": gen["wall_s"]},
      "steps": {"syncnet": args.syncnet_steps, "emotion_disc": args.emotion_steps,
                "emogen": args.emogen_steps},
  }
  passed = {k: results[k] >= t for k, t in TARGETS.items()}
  results["targets"] = TARGETS
  results["passed"] = passed
  with open(os.path.join(args.workdir, "reproduce.json"), "w") as f:
    json.dump(results, f, indent=2)
  for k, t in TARGETS.items():
    print(f"{k}: {results[k]:.3f} (target >= {t}) {'PASS' if passed[k] else 'FAIL'}")
  print(f"EmoGen validation L1 {first_l1:.4f} -> {last_l1:.4f}; "
        f"wall time {results['wall_s']}; {os.path.join(args.workdir, 'reproduce.json')}")
  return 0 if all(passed.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
