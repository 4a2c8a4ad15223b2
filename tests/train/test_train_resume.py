"""(c) Exact resume through the real CLI and orbax checkpoints: training 4 steps equals training
2 steps, stopping, and resuming for 2 more (bit-identical networks, optimizer states, RNG, and the
EmoGen sync-loss weight that switched on at step 2); and a resume in the middle of a data segment
(3 + 1 steps) that re-creates the stream and skips the batches already used; a resume against
another frozen expert is refused."""

from __future__ import annotations

import json
import os

import numpy as np
import orbax.checkpoint as ocp

from emogen_jax.models import checkpoints
from tests._train_fixtures import assert_trees_equal, train_cli

_EMOGEN = ["--config", "configs/emogen.py:smoke", "--config.synthetic_data=True",
           "--config.width=0.0625", "--config.batch_size=2", "--config.checkpoint_every_steps=2",
           "--config.eval_every_steps=2", "--config.eval_batches=1", "--config.sample_every_steps=2",
           # Any validation sync loss is "low": w_sync switches on at the step-2 validation.
           "--config.sync_threshold=100",
           # The smoke config's cosine decay spans num_train_steps unless pinned: the 2-step run
           # would follow a shorter schedule than the 4-step one it is compared with.
           "--config.lr_decay_steps=4"]


def _train_item(workdir: str, step: int) -> dict:
  path = os.path.join(workdir, "checkpoints", str(step), "train")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path)


def test_emogen_resume_is_bit_identical(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  train_cli(_EMOGEN + ["--workdir", a, "--config.num_train_steps=4"])
  first = train_cli(_EMOGEN + ["--workdir", b, "--config.num_train_steps=2"])
  assert "resuming" not in first.stdout
  second = train_cli(_EMOGEN + ["--workdir", b, "--config.num_train_steps=4"])
  assert "resuming from the checkpoint of step 2" in second.stdout, second.stdout
  assert "training steps 3..4" in second.stdout

  models_a, models_b = checkpoints.load_models(a), checkpoints.load_models(b)
  assert sorted(models_a) == ["emotion_disc", "generator"]
  assert_trees_equal(models_a, models_b)
  train_a, train_b = _train_item(a, 4), _train_item(b, 4)
  assert_trees_equal(train_a, train_b)
  assert int(train_a["step"]) == 4
  # The sync weight switched on after the step-2 validation, was saved, and stayed on.
  assert float(train_a["extras"]["w_sync"]) == np.float32(0.03)
  assert "w_sync 0.0 -> 0.03" in first.stdout

  # The networks did train (identical runs of a no-op would pass the equality too).
  step2 = checkpoints.load_models(os.path.join(b, "checkpoints", "2"))
  diff = np.abs(models_b["generator"]["params"]["output_block_1"]["kernel"]
                - step2["generator"]["params"]["output_block_1"]["kernel"]).max()
  assert diff > 1e-6
  meta = checkpoints.load_meta(b)
  assert meta["width"] == 0.0625 and meta["stage"] == "emogen" and meta["step"] == 4
  assert os.path.isfile(os.path.join(b, "samples", "step_00000004.png"))
  with open(os.path.join(b, "final_metrics.json")) as f:
    final = json.load(f)
  assert final["step"] == 4 and np.isfinite(final["validation"]["l1"])

  # The frozen expert is not saved with the run, its fingerprint is: resuming against another
  # expert (here: another seed draws another random one) is refused before any step.
  assert meta["frozen"]["syncnet"]["source"] == "random init"
  other = train_cli(_EMOGEN + ["--workdir", b, "--config.num_train_steps=6", "--config.seed=1"],
                    check=False)
  assert other.returncode == 2, other.stderr[-2000:]
  err = [l for l in other.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "frozen syncnet" in err[0] and "weights differ" in err[0], err
  assert checkpoints.load_meta(b)["step"] == 4


def test_resume_inside_a_data_segment_skips_used_batches(tmp_path):
  base = ["--config", "configs/emotion_disc.py:smoke", "--config.synthetic_data=True",
          "--config.width=0.0625", "--config.batch_size=4", "--config.checkpoint_every_steps=4",
          "--config.eval_every_steps=0", "--config.eval_batches=1"]
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  train_cli(base + ["--workdir", a, "--config.num_train_steps=4"])
  train_cli(base + ["--workdir", b, "--config.num_train_steps=3"])  # saves step 3 at the end
  second = train_cli(base + ["--workdir", b, "--config.num_train_steps=4"])
  assert "skipping 3 batches" in second.stdout, second.stdout
  assert_trees_equal(checkpoints.load_models(a), checkpoints.load_models(b))
  assert_trees_equal(_train_item(a, 4), _train_item(b, 4))


def test_recipe_cadence_keeps_emogen_checkpoints_and_stream_segments():
  """The recipe validates EmoGen only at the end (after its step-0 baseline) but still checkpoints
  half way; the training stream's segment follows the checkpoints, so a 2400-step run reads the
  same batches as when it validated half way too, and a stopped run resumes from step 1200."""
  from emogen_jax.train import loop, recipe
  assert recipe.cadence("emogen", 2400) == (2400, 1200)
  assert recipe.cadence("syncnet", 2000) == (1000, 200)
  assert recipe.cadence("emogen", 6) == (6, 6)            # never closer than 25 steps
  assert recipe.cadence("emogen", 2400, eval_every=300) == (300, 300)
  every, ckpt = recipe.cadence("emogen", 2400)
  config = recipe.load_config("emogen", num_train_steps=2400, eval_every_steps=every,
                              checkpoint_every_steps=ckpt)
  assert loop._segment(config) == 1200
  # SyncNet and the emotion classifiers validate twice but keep the checkpoints, and so the stream
  # segments, of ten validations (their weights do not depend on how often they are validated).
  for name in ("syncnet", "emotion_disc", "emotion_judge"):
    assert recipe.cadence(name, 800) == (400, 80)


def test_emogen_trained_then_validated_equals_one_run(tmp_path):
  """config.validation: a "none" run (no validation, the expert not even loaded) followed by an
  "only" run gives the figures of one run that validates before its first step and at the end:
  the same step-0 baseline and final validation, the same networks (the recipe trains EmoGen this
  way while its expert is still training)."""
  base = ["--config", "configs/emogen.py:smoke", "--config.synthetic_data=True",
          "--config.width=0.0625", "--config.batch_size=2", "--config.checkpoint_every_steps=2",
          "--config.eval_every_steps=0", "--config.eval_batches=1", "--config.sample_every_steps=0",
          "--config.num_train_steps=3"]
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  one = train_cli(base + ["--workdir", a, "--config.eval_at_start=True"])
  trained = train_cli(base + ["--workdir", b, "--config.validation=none"])
  assert "syncnet: not loaded" in trained.stdout and "validation at step" not in trained.stdout
  with open(os.path.join(b, "final_metrics.json")) as f:
    unvalidated = json.load(f)
  assert unvalidated["step"] == 3 and unvalidated["validation"] == {}
  assert np.isfinite(unvalidated["train"]["l1"])
  validated = train_cli(base + ["--workdir", b, "--config.validation=only",
                                "--config.eval_at_start=True"])
  assert "validation at step 0" in validated.stdout and "validation at step 3" in validated.stdout
  assert "training steps" not in validated.stdout
  with open(os.path.join(a, "final_metrics.json")) as f:
    fa = json.load(f)
  with open(os.path.join(b, "final_metrics.json")) as f:
    fb = json.load(f)
  assert [h["step"] for h in fb["validation_history"]] == [0, 3]
  assert fb["validation_history"] == fa["validation_history"]  # every figure, bit for bit
  assert fb["validation"] == fa["validation"] and fb["step"] == 3
  assert fb["train"] == unvalidated["train"]  # the training run's last metrics are kept
  assert fb["validation_history"][0]["l1"] != fb["validation_history"][1]["l1"]
  assert_trees_equal(checkpoints.load_models(a), checkpoints.load_models(b))
  # A "none" run that would skip validations after which EmoGen changes its training (the sync
  # weight switch) is refused, as is an "only" run with nothing to validate: one-line errors.
  skipping = train_cli(base + ["--workdir", str(tmp_path / "d"), "--config.validation=none",
                               "--config.eval_every_steps=2"], check=False)
  assert skipping.returncode == 2
  err = [l for l in skipping.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "would skip the validations every 2 steps" in err[0], err
  empty = train_cli(base + ["--workdir", str(tmp_path / "c"), "--config.validation=only"],
                    check=False)
  assert empty.returncode == 2
  err = [l for l in empty.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "no checkpoint to validate" in err[0], empty.stderr[-2000:]
