"""scripts/bench_rules.py: variants of models.layers' convolution rules built side by side and
timed in turn; a mistyped variant is a one-line error naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests import REPO, subprocess_env

SCRIPT = os.path.join(REPO, "scripts", "bench_rules.py")


def _run(*args, timeout=600):
  return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)


def test_variants_are_built_and_timed_in_turn():
  """The smoke emotion disc under its rules as they are, the same again under another name, with
  the state donated (a `train.stages.base` constant), and with XLA's own input gradients: the
  first three end on identical parameters, the last (other rounding in the strided layers' input
  gradients) on different ones."""
  proc = _run("--stage", "emotion_disc", "--size", "smoke", "--rounds", "2", "--steps", "2",
              "--variant", "now:", "--variant", "again: TAP_GRAD_MIN_MACS=134217728",
              "--variant", "donated: DONATE_STATE_ON_CPU=1",
              "--variant", "xla input: PHASE_INPUT_MIN_POSITIONS=10**9")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = dict(re.findall(r"^  (\w[\w ]*?)\s+(\d+\.\d+ s .*)$", proc.stdout, re.M))
  assert set(rows) == {"now", "again", "donated", "xla input"}, proc.stdout
  for same in ("now", "again", "donated"):
    assert rows[same].endswith("max |param - now's| 0"), rows[same]
  diff = float(rows["xla input"].rsplit(" ", 1)[1])
  assert 0 < diff < 0.05
  assert proc.stdout.count("round ") == 2


@pytest.mark.parametrize("args, words", [
    (["--variant", "no colon"], "write it as 'NAME: CONST=VALUE"),
    (["--variant", "x: NOT_A_RULE=1"], "'NOT_A_RULE=1' is not CONST=VALUE"),
    (["--variant", "x: PHASE_INPUT_MIN_POSITIONS=many"], "'many' is not an integer expression"),
    (["--variant", "x:", "--variant", "x: GEMM_INPUT_MIN_CHANNELS=1"], "its own name"),
    (["--variant", "x:", "--rounds", "0"], "--rounds and --steps must be at least 1"),
    (["--variant", "x:", "--stage", "syncnet", "--sync-off"], "--sync-off only changes the emogen"),
])
def test_bad_settings_are_one_line_errors(args, words):
  proc = _run(*args, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
  assert "error: " in lines[-1] and words in lines[-1], lines[-3:]
  assert "Traceback" not in proc.stderr
