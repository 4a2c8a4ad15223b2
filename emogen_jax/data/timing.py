"""The time rules that tie video frames to mel-spectrogram steps, in one place.

Training data runs at FPS = 25 video frames and MEL_STEPS_PER_SECOND = 80 mel steps per second
(16 kHz audio, hop 200), so a frame spans 3.2 mel steps. A network sees a window of
FRAMES_PER_WINDOW = 5 frames (0.2 s) and a mel window of MEL_WINDOW = 16 steps (0.2 s).

- The mel window of frame f starts at step int(80 * f / fps) (``mel_start``).
- A training target window starting at frame f needs frames f..f+4; SyncNet pairs it with the mel
  window of f; the generator gives frame f+i the mel window of frame f+i-1, i = 0..4, so it needs
  f >= 1 and the window of f+3 inside the mel (``window_fits``).
- Inference gives output frame i the chunk starting at int(i * 80 / fps), taking chunks while they
  fit and one last chunk that ends at the last mel step (``inference_chunk_starts``,
  ``inference_mel_chunks``).

The functions take Python ints and numpy arrays; ``mel_start`` and ``window_fits`` also take
integer tf tensors (the input pipeline), at the training rate.
"""

from __future__ import annotations

import numpy as np

from emogen_jax.errors import UserError

FPS = 25                     # video frame rate of the training data
MEL_STEPS_PER_SECOND = 80    # 16 kHz audio, hop 200
FRAMES_PER_WINDOW = 5        # frames a network sees at once (0.2 s)
MEL_WINDOW = 16              # mel steps a network sees at once (0.2 s)


def mel_start(frame, fps: float = FPS):
  """First mel step of video frame ``frame`` (>= 0): int(80 * frame / fps).

  Integer arrays and tensors use exact integer division (the training rate must be an integer)."""
  if isinstance(frame, (int, np.integer)):
    return int(MEL_STEPS_PER_SECOND * int(frame) / fps)
  return (MEL_STEPS_PER_SECOND * frame) // int(fps)


def window_fits(frame, mel_steps):
  """Whether the mel window of ``frame`` lies inside ``mel_steps`` steps (training rate)."""
  return mel_start(frame) + MEL_WINDOW <= mel_steps


def mel_window(mel: np.ndarray, frame: int, fps: float = FPS) -> np.ndarray:
  """(80, T) mel -> the (80, 16) window of video frame ``frame``; ValueError when it runs off
  either end."""
  start = mel_start(frame, fps)
  if frame < 0 or start + MEL_WINDOW > mel.shape[1]:
    raise ValueError(f"mel window of frame {frame} (steps {start}..{start + MEL_WINDOW}) is outside "
                     f"the {mel.shape[1]} mel steps")
  return mel[:, start:start + MEL_WINDOW]


def num_mel_frames(num_frames: int, mel_steps: int, fps: float = FPS) -> int:
  """How many leading frames (of ``num_frames``) have their whole mel window inside the mel."""
  n = 0
  while n < num_frames and mel_start(n, fps) + MEL_WINDOW <= mel_steps:
    n += 1
  return n


def mel_windows(mel: np.ndarray, n: int, fps: float = FPS) -> np.ndarray:
  """(80, T) -> (n, 80, 16) float32: the mel windows of frames 0..n-1."""
  return np.stack([mel_window(mel, f, fps) for f in range(n)]).astype(np.float32)


def inference_chunk_starts(steps: int, fps: float) -> list[int]:
  """First mel step of each output frame's (80, 16) chunk, for a mel of ``steps`` steps: chunk i
  starts at int(i * 80 / fps) while it fits, then one final chunk ends at the last mel step (the
  original's rule). Inference streams these; UserError when not even one chunk fits."""
  if fps <= 0:
    raise UserError(f"fps must be positive, got {fps}")
  if steps < MEL_WINDOW:
    raise UserError(f"audio too short: {steps} mel steps, need at least {MEL_WINDOW} "
                    f"({MEL_WINDOW / MEL_STEPS_PER_SECOND:.2f} s); give a longer speech track")
  # i * (80 / fps), the multiplier computed once, as the original computes it (it can differ from
  # 80 * i / fps in the last bit, and so in the integer part, for some rates).
  mult = MEL_STEPS_PER_SECOND / float(fps)
  starts = []
  i = 0
  while int(i * mult) + MEL_WINDOW <= steps:
    starts.append(int(i * mult))
    i += 1
  starts.append(steps - MEL_WINDOW)
  return starts


def inference_mel_chunks(mel: np.ndarray, fps: float) -> np.ndarray:
  """(80, T) mel -> (N, 80, 16) chunks for output frames 0..N-1, starting at
  ``inference_chunk_starts`` (the last aligned to the end of the audio)."""
  starts = inference_chunk_starts(mel.shape[1], fps)
  return np.stack([mel[:, s:s + MEL_WINDOW] for s in starts]).astype(np.float32)
