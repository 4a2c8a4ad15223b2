"""Package-level basics: the user-facing error contract and the emotion codes."""

import pytest

from emogen_jax.data import emotions
from emogen_jax.errors import UserError, cli_main


def test_emotion_codes_follow_original_label_order():
  assert [emotions.emotion_id(c) for c in ("ANG", "dis", "Fea", "HAP", "neu", "SAD")] == list(range(6))
  assert emotions.emotion_id("happy") == 3


def test_unknown_emotion_lists_valid_ones():
  with pytest.raises(UserError, match="ANG, DIS, FEA, HAP, NEU, SAD"):
    emotions.emotion_id("JOY")


def test_cli_main_turns_user_error_into_one_line_and_exit_2(capsys):
  @cli_main
  def main():
    raise UserError("file 'x.mp4' not found; check the path")

  assert main() == 2
  err = capsys.readouterr().err
  assert err == "error: file 'x.mp4' not found; check the path\n"


def _run_install(repo, tmp_path):
  """scripts/install.sh of ``repo`` with a python that records (and fakes) every pip call."""
  import os
  import subprocess
  import sys
  log = tmp_path / "pip_calls.txt"
  wrapper = tmp_path / "python"
  wrapper.write_text("#!/usr/bin/env bash\n"
                     f'if [ "${{1:-}}" = "-m" ] && [ "${{2:-}}" = pip ]; then echo "$*" >> {log}; exit 0; fi\n'
                     f'exec {sys.executable} "$@"\n')
  wrapper.chmod(0o755)
  proc = subprocess.run(["bash", str(repo / "scripts" / "install.sh")], capture_output=True, text=True,
                        env={**os.environ, "PYTHON": str(wrapper)}, timeout=120)
  assert proc.returncode == 0, proc.stderr
  return log.read_text().splitlines() if log.exists() else []


def test_install_script_skips_pip_when_this_checkout_and_its_requirements_are_installed(tmp_path):
  """scripts/quickstart.sh runs install.sh every time: with everything in place it must not ask
  pip (~9 s); another checkout of the same code (not the installed one) does get installed."""
  import pathlib
  import shutil
  from importlib import metadata
  repo = pathlib.Path(__file__).resolve().parents[1]
  origin = " ".join(d.read_text("direct_url.json") or "" for d in metadata.distributions(name="emogen_jax"))
  if str(repo) not in origin:
    pytest.skip("emogen_jax is not installed from this checkout (pip install -e .)")
  assert _run_install(repo, tmp_path) == []
  other = tmp_path / "other_checkout"
  (other / "scripts").mkdir(parents=True)
  shutil.copy(repo / "scripts" / "install.sh", other / "scripts")
  shutil.copy(repo / "setup.cfg", other)
  calls = _run_install(other, tmp_path)
  assert calls and calls[-1] == "-m pip install -q -e .[test,torch]", calls
