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
