"""The six emotion classes (the original's label order, CREMA-D codes), their names, and mixes.

A user names an emotion by its code, noun or adjective, in any case: ``HAP``, ``happiness``,
``happy``. A *mix* gives several with weights that sum to 1, ``HAP:0.6,NEU:0.4``: the generator's
emotion input is a one-hot vector, and a mix feeds it the weighted vector instead (its first
emotion layer is linear, so the mix interpolates between the classes it was trained on).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from emogen_jax.errors import UserError

EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
EMOTION_NAMES = ("anger", "disgust", "fear", "happy", "neutral", "sad")
NUM_EMOTIONS = len(EMOTIONS)
# CREMA-D intensity codes: XX = unspecified.
INTENSITIES = ("XX", "LO", "MD", "HI")

# Every accepted spelling (lower case) -> label id: the code, nouns and adjectives.
_WORDS = (("anger", "angry"), ("disgust", "disgusted"), ("fear", "fearful"),
          ("happiness", "happy"), ("neutral", "neutrality"), ("sadness", "sad"))
ALIASES = {w: i for i, words in enumerate(_WORDS) for w in (EMOTIONS[i].lower(),) + words}
MIX_TOLERANCE = 1e-3  # how far the weights of a mix may sum from 1
HELP = ("an emotion: " + ", ".join(f"{c} ({'/'.join(w[:2])})" for c, w in zip(EMOTIONS, _WORDS))
        + "; a mix with weights summing to 1, e.g. HAP:0.6,NEU:0.4")


def emotion_id(name: str) -> int:
  """'HAP', 'happy', 'happiness' (any case) -> 3; anything else -> a UserError listing the names."""
  key = str(name).strip().lower()
  if key in ALIASES:
    return ALIASES[key]
  raise UserError(f"unknown emotion {name!r}; valid emotions are {', '.join(EMOTIONS)} "
                  "(or angry, disgusted, fearful, happy, neutral, sad)")


def emotion_weights(spec: str | Mapping[str, float]) -> np.ndarray:
  """One emotion or a mix -> its (6,) float32 weight vector summing to 1.

  spec: a name ('HAP', 'happy'), 'HAP:0.6,NEU:0.4', or a mapping {'HAP': 0.6, 'NEU': 0.4}.
  """
  if isinstance(spec, Mapping):
    items = [(str(k), v) for k, v in spec.items()]
  else:
    text = str(spec).strip()
    if ":" not in text and "," not in text:
      return np.eye(NUM_EMOTIONS, dtype=np.float32)[emotion_id(text)]
    items = []
    for part in text.split(","):
      name, sep, weight = part.partition(":")
      if not sep:
        raise UserError(f"emotion mix {text!r}: {part.strip()!r} has no weight; write NAME:WEIGHT "
                        "pairs separated by commas, e.g. HAP:0.6,NEU:0.4")
      items.append((name, weight))
  out = np.zeros(NUM_EMOTIONS, np.float64)
  seen = set()
  for name, weight in items:
    i = emotion_id(name)
    try:
      w = float(weight)
    except (TypeError, ValueError):
      raise UserError(f"emotion mix: weight {str(weight).strip()!r} of {name.strip()} is not a "
                      "number") from None
    if not 0.0 <= w <= 1.0:
      raise UserError(f"emotion mix: weight {w:g} of {name.strip()} must be between 0 and 1")
    if i in seen:
      raise UserError(f"emotion mix: {EMOTIONS[i]} is given twice")
    seen.add(i)
    out[i] = w
  if abs(out.sum() - 1.0) > MIX_TOLERANCE:
    raise UserError(f"emotion mix weights sum to {out.sum():g}; they must sum to 1 "
                    "(e.g. HAP:0.6,NEU:0.4)")
  return (out / out.sum()).astype(np.float32)


def parse_emotions(spec: str | Mapping[str, float]) -> list[np.ndarray]:
  """'all' -> the six one-hot vectors (rendered side by side); else [emotion_weights(spec)]."""
  if isinstance(spec, str) and spec.strip().lower() == "all":
    return list(np.eye(NUM_EMOTIONS, dtype=np.float32))
  try:
    return [emotion_weights(spec)]
  except UserError as e:
    if str(e).startswith("unknown emotion") and ":" not in str(spec):
      raise UserError(f"{e}, a mix such as HAP:0.6,NEU:0.4, or all") from None
    raise


def describe(weights) -> str:
  """(6,) weights -> 'HAP happy' for one emotion, 'HAP 60% NEU 40%' for a mix."""
  w = np.asarray(weights, np.float64)
  nonzero = [i for i in np.argsort(-w, kind="stable") if w[i] > 0]
  if len(nonzero) == 1:
    return f"{EMOTIONS[nonzero[0]]} {EMOTION_NAMES[nonzero[0]]}"
  return " ".join(f"{EMOTIONS[i]} {100 * w[i]:.0f}%" for i in nonzero)
