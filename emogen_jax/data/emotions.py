"""The six emotion classes, in the original's label order (CREMA-D codes)."""

from __future__ import annotations

from emogen_jax.errors import UserError

EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
EMOTION_NAMES = ("anger", "disgust", "fear", "happy", "neutral", "sad")
NUM_EMOTIONS = len(EMOTIONS)
# CREMA-D intensity codes: XX = unspecified.
INTENSITIES = ("XX", "LO", "MD", "HI")


def emotion_id(code: str) -> int:
  """'HAP' (any case, or the full name 'happy') -> 3; unknown codes raise a UserError listing valid ones."""
  c = code.strip().upper()
  if c in EMOTIONS:
    return EMOTIONS.index(c)
  names = [n.upper() for n in EMOTION_NAMES]
  if c in names:
    return names.index(c)
  raise UserError(f"unknown emotion {code!r}; valid emotions are {', '.join(EMOTIONS)}")
