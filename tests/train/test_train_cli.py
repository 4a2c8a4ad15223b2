"""The training CLI's stops and errors: a non-finite loss stops the run naming the step and the
term and keeps the last good checkpoint; SIGTERM and Ctrl-C save and exit cleanly; bad configs and missing
expert/emotion-disc/VGG checkpoints are one-line user errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from emogen_jax.errors import UserError
from emogen_jax.models import checkpoints
from emogen_jax.train import config as train_config
from emogen_jax.train import main as train_main
from tests._train_fixtures import REPO, load_config, subprocess_env, train_cli

_DISC = ["--config", "configs/emotion_disc.py:smoke", "--config.synthetic_data=True",
         "--config.width=0.0625", "--config.batch_size=4", "--config.eval_every_steps=0",
         "--config.eval_batches=1"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  w = str(tmp_path / "w")
  # NaN in the loss of the 4th step (state.step == 3); checkpoints every 2; logs every 5 steps,
  # so the NaN is found when flushing before the step-4 checkpoint, which must not be written.
  proc = train_cli(_DISC + ["--workdir", w, "--config.num_train_steps=8",
                            "--config.checkpoint_every_steps=2", "--config.log_every_steps=5",
                            "--config.inject_nonfinite_at_step=3"], check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "loss = nan at step 4" in err[0], proc.stderr[-2000:]
  assert "last good checkpoint (step 2)" in err[0]
  assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["2"]
  assert checkpoints.load_meta(w)["step"] == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_saves_and_exits_cleanly(tmp_path, sig):
  """SIGTERM (a scheduler) and Ctrl-C (SIGINT) both finish the step, save it and exit 0."""
  w = str(tmp_path / "w")
  args = _DISC + ["--workdir", w, "--config.num_train_steps=100000",
                  "--config.checkpoint_every_steps=100000", "--config.log_every_steps=1"]
  proc = subprocess.Popen([sys.executable, "-m", "emogen_jax.train", *args], cwd=REPO,
                          env=subprocess_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  lines = []
  deadline = time.time() + 240
  try:
    for line in proc.stdout:
      lines.append(line)
      if "step 3/" in line:
        proc.send_signal(sig)
        break
      assert time.time() < deadline, "".join(lines)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  out = "".join(lines) + out
  assert proc.returncode == 0, err[-3000:]
  saved = [l for l in out.splitlines() if f"{sig.name}: saved step" in l]
  assert saved, out[-3000:]
  step = int(saved[0].split("saved step ")[1].split(";")[0])
  assert step >= 3
  assert checkpoints.load_meta(w)["step"] == step
  assert "emotion_disc" in checkpoints.load_models(w)


def _main_error(capsys, argv) -> str:
  assert train_main.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_config_errors_are_one_line(capsys, tmp_path):
  w = ["--workdir", str(tmp_path / "w")]
  smoke = ["--config", "configs/emotion_disc.py:smoke", "--config.synthetic_data=True"]
  assert "num_train_steps=-5" in _main_error(capsys, smoke + w + ["--config.num_train_steps=-5"])
  assert "config.stage='gan'" in _main_error(capsys, smoke + w + ["--config.stage=gan"])
  assert "lr_schedule='linear'" in _main_error(capsys, smoke + w + ["--config.lr_schedule=linear"])
  assert "validation='sometimes'; use one of during, none, only" in _main_error(
      capsys, smoke + w + ["--config.validation=sometimes"])
  assert "lr_final_fraction=1.5 must be in [0, 1]" in _main_error(
      capsys, smoke + w + ["--config.lr_final_fraction=1.5"])
  assert "lr_decay_steps=-3 >= 0" in _main_error(capsys, smoke + w + ["--config.lr_decay_steps=-3"])
  assert "eval_batches=0" in _main_error(capsys, smoke + w + ["--config.eval_batches=0"])
  assert "eval_windows must be at least 1" in _main_error(capsys, smoke + w + ["--config.eval_windows=0"])
  assert "data_dir is empty" in _main_error(capsys, ["--config", "configs/syncnet.py:smoke"] + w)
  assert "not a directory" in _main_error(
      capsys, ["--config", "configs/syncnet.py:smoke", "--config.data_dir=/nonexistent"] + w)
  assert "is not a file" in _main_error(capsys, ["--config", "configs/nope.py"] + w)
  assert "unknown config variant" in _main_error(capsys, ["--config", "configs/emogen.py:big"] + w)
  assert "--workdir is required" in _main_error(capsys, smoke)
  # The reference EmoGen config refuses to start without its expert (and names the way out).
  msg = _main_error(capsys, ["--config", "configs/emogen.py", "--config.synthetic_data=True"] + w)
  assert "config.syncnet_checkpoint" in msg and "configs/syncnet.py" in msg and "convert" in msg


def test_learning_rate_schedules():
  from emogen_jax.train.state import learning_rate
  c = load_config("syncnet", None, synthetic_data=True, num_train_steps=1000)
  assert learning_rate(c, 5e-4) == 5e-4  # the reference config: the original's constant rate
  assert load_config("syncnet").lr_schedule == "cosine"  # the smoke variant decays
  c.lr_schedule = "cosine"
  sched = learning_rate(c, 5e-4)
  np.testing.assert_allclose([float(sched(k)) for k in (0, 500, 1000, 2000)],
                             [5e-4, 5e-4 * (0.05 + 0.95 * 0.5), 5e-4 * 0.05, 5e-4 * 0.05], rtol=1e-5)
  c.lr_decay_steps = 100  # decays over its own span, not num_train_steps
  assert float(learning_rate(c, 5e-4)(100)) == pytest.approx(5e-4 * 0.05)


def test_batch_must_divide_over_devices():
  c = load_config("syncnet", synthetic_data=True, batch_size=6)
  with pytest.raises(UserError, match="does not divide evenly over the 4 devices"):
    train_config.validate(c, device_count=4)
  train_config.validate(load_config("syncnet", synthetic_data=True, batch_size=8), device_count=4)
  c = load_config("syncnet", synthetic_data=True, batch_size=8, eval_batch_size=6)
  with pytest.raises(UserError, match="config.eval_batch_size=6 .global. does not divide evenly"):
    train_config.validate(c, device_count=4)


def test_emogen_checkpoint_requirements(tmp_path):
  from emogen_jax.train.stages import emogen as emogen_step
  logs = []
  ref = load_config("emogen", None, synthetic_data=True)
  with pytest.raises(UserError, match="syncnet_checkpoint"):
    emogen_step.prepare(ref, log=logs.append)
  ref.syncnet_checkpoint = str(tmp_path / "missing")
  with pytest.raises(UserError, match="does not exist"):
    emogen_step.prepare(ref, log=logs.append)
  # With expert and disc checkpoints, w_pl > 0 still needs VGG weights (or w_pl = 0).
  tiny = {"params": {"w": np.zeros((2,), np.float32)}}
  ck = checkpoints.save_models(str(tmp_path / "ck"), {"syncnet": tiny, "emotion_disc": tiny},
                               width=0.5, original_layout=True)
  ref.syncnet_checkpoint = ref.emotion_disc_checkpoint = ck
  with pytest.raises(UserError, match="vgg_checkpoint is empty but config.w_pl > 0"):
    emogen_step.prepare(ref, log=logs.append)
  ref.emotion_disc_checkpoint = ""
  with pytest.raises(UserError, match="emotion_disc_checkpoint is empty"):
    emogen_step.prepare(ref, log=logs.append)
  ref.emotion_disc_checkpoint = ck
  ref.w_pl = 0.0
  setup = emogen_step.prepare(ref, log=logs.append)
  # Construction options come from the checkpoints' meta.
  assert setup["syncnet_width"] == 0.5 and setup["disc_original_layout"] is True
  assert setup["random_init"] == [] and not setup["use_vgg"]
  assert any("perceptual loss off" in l for l in logs)
