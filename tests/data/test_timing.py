"""The frame/mel time rules (emogen_jax.data.timing), with the numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from emogen_jax.data import audio
from emogen_jax.data import timing
from emogen_jax.errors import UserError


def test_constants():
  assert timing.MEL_STEPS_PER_SECOND == 80 and timing.MEL_WINDOW == 16
  assert timing.FPS == 25 and timing.FRAMES_PER_WINDOW == 5


def test_mel_start_is_the_same_rule_for_ints_arrays_and_tensors():
  frames = np.arange(0, 400)
  expected = [int(80 * f / 25) for f in frames]
  assert [timing.mel_start(int(f)) for f in frames] == expected
  assert timing.mel_start(frames).tolist() == expected
  assert timing.mel_start(tf.constant(frames, tf.int32)).numpy().tolist() == expected
  fits = timing.window_fits(tf.constant(frames, tf.int32), 100).numpy()
  assert fits.tolist() == [e + 16 <= 100 for e in expected]


def test_num_mel_frames_and_windows():
  mel = np.arange(80 * 65, dtype=np.float32).reshape(80, 65)
  # frame 15 starts at int(80*15/25) = 48: 48 + 16 = 64 <= 65 fits; frame 16 starts at 51: 67 > 65
  assert timing.num_mel_frames(20, 65) == 16
  assert timing.num_mel_frames(10, 65) == 10
  w = timing.mel_windows(mel, 16)
  assert w.shape == (16, 80, 16)
  np.testing.assert_array_equal(w[15], mel[:, 48:64])


def test_mel_window_index_math():
  mel = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)
  assert [timing.mel_start(f) for f in range(6)] == [0, 3, 6, 9, 12, 16]
  assert timing.mel_start(7, fps=30) == 18  # int(560 / 30)
  w = timing.mel_window(mel, 5)
  assert w.shape == (80, 16)
  np.testing.assert_array_equal(w, mel[:, 16:32])
  # Frame 26 -> start 83: window 83..99 fits exactly; 27 -> 86 runs off the end.
  np.testing.assert_array_equal(timing.mel_window(mel, 26), mel[:, 83:99])
  with pytest.raises(ValueError, match="frame 27"):
    timing.mel_window(mel, 27)
  with pytest.raises(ValueError):
    timing.mel_window(mel, -1)


def test_mel_window_tracks_the_frame_time():
  """A click at time t shows up in the window of the frame at t (80 steps/s, 25 fps)."""
  wav = np.zeros(16000 * 2, np.float32)
  t = 1.0  # frame 25 -> mel step 80
  wav[int(t * 16000):int(t * 16000) + 400] = np.sin(np.arange(400) * 0.5)
  mel = audio.melspectrogram(wav)
  energy = mel.mean(0)
  loud = np.argmax(energy)
  assert abs(loud - 80 - 1) <= 2
  win = timing.mel_window(mel, 25)
  assert win.mean(0)[:4].max() > energy[:60].max() + 1


def test_inference_mel_chunks():
  mel = np.arange(80 * 50, dtype=np.float32).reshape(80, 50)
  chunks = timing.inference_mel_chunks(mel, 25)
  starts = [int(c[0, 0]) for c in chunks]
  # start int(3.2 i) while it fits (<= 34), then one chunk aligned to the end (34).
  expected = [int(i * 3.2) for i in range(100) if int(i * 3.2) + 16 <= 50] + [34]
  assert starts == expected
  assert chunks.shape == (len(expected), 80, 16)
  np.testing.assert_array_equal(chunks[-1], mel[:, -16:])
  chunks30 = timing.inference_mel_chunks(mel, 30)
  assert [int(c[0, 0]) for c in chunks30][:4] == [0, 2, 5, 8]
  with pytest.raises(UserError, match="too short"):
    timing.inference_mel_chunks(mel[:, :10], 25)
