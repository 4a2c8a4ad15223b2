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
  """The smoke emotion disc under its rules as they are, the same again under another name, and
  with XLA's own input gradients: the identical pair ends on identical parameters, the third
  (other rounding in the strided layers' input gradients) on different ones."""
  proc = _run("--stage", "emotion_disc", "--size", "smoke", "--rounds", "2", "--steps", "2",
              "--variant", "now:", "--variant", "again: TAP_GRAD_MIN_MACS=134217728",
              "--variant", "xla input: PHASE_INPUT_MIN_POSITIONS=10**9")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = dict(re.findall(r"^  (\w[\w ]*?)\s+(\d+\.\d+ s .*)$", proc.stdout, re.M))
  assert set(rows) == {"now", "again", "xla input"}, proc.stdout
  assert rows["now"].endswith("max |param - now's| 0")
  assert rows["again"].endswith("max |param - now's| 0")
  diff = float(rows["xla input"].rsplit(" ", 1)[1])
  assert 0 < diff < 0.05
  assert proc.stdout.count("round ") == 2


@pytest.mark.parametrize("variant, words", [
    ("no colon", "write it as 'NAME: CONST=VALUE"),
    ("x: NOT_A_RULE=1", "'NOT_A_RULE=1' is not CONST=VALUE"),
    ("x: PHASE_INPUT_MIN_POSITIONS=many", "'many' is not an integer expression"),
])
def test_bad_variants_are_one_line_errors(variant, words):
  proc = _run("--variant", variant, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
  assert "error: " in lines[-1] and words in lines[-1], lines[-3:]
  assert "Traceback" not in proc.stderr
