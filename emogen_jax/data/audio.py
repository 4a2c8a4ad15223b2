"""Audio loading and the Wav2Lip/EmoGen mel-spectrogram features.

The features follow the original exactly (see docs/design.md "Time rules"): 16 kHz mono, pre-emphasis
0.97, STFT (n_fft 800, hop 200, Hann window 800, centred with zero padding), magnitude, 80-band
Slaney mel filterbank (55-7600 Hz), dB with a -20 dB reference, then a symmetric [-4, 4] scale.
That gives 80 mel steps per second (``timing.MEL_STEPS_PER_SECOND``); the frame/mel window rules
are in ``emogen_jax.data.timing``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import threading
import time

import numpy as np

from emogen_jax.data.media import ffmpeg_exe
from emogen_jax.errors import UserError

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
NUM_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0


def load_wav(path: str, sr: int = SAMPLE_RATE) -> np.ndarray:
  """Decodes the audio of any file ffmpeg reads (wav, mp3, a video's track) -> float32 (N,) mono at `sr`.

  Raises UserError naming the file when it is missing, has no audio stream, or cannot be decoded.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"audio file not found: {path}; check the path")
  cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", path, "-map", "0:a:0", "-vn",
         "-ac", "1", "-ar", str(int(sr)), "-f", "f32le", "-acodec", "pcm_f32le", "-"]
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
  err = proc.stderr.decode("utf-8", "replace").strip()
  if proc.returncode != 0:
    # ffmpeg says "Stream map '0:a:0' matches no streams" for a file without audio.
    if "matches no streams" in err:
      raise UserError(f"{path} has no audio stream; give a file with a speech track")
    last = err.splitlines()[-1] if err else f"ffmpeg exit status {proc.returncode}"
    raise UserError(f"cannot decode audio from {path} ({last}); give a valid audio/video file")
  wav = np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
  if wav.size == 0:
    raise UserError(f"{path} has an empty audio stream; give a file with a speech track")
  return wav


@functools.lru_cache(maxsize=None)
def _mel_basis() -> np.ndarray:
  """(80, 401) Slaney-normalised mel filterbank, built once per process (it never changes)."""
  import librosa
  return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=FMIN, fmax=FMAX).astype(np.float32)


def preemphasis(wav: np.ndarray, k: float = PREEMPHASIS) -> np.ndarray:
  """y[n] = x[n] - k x[n-1], with y[0] = x[0] (a causal first-order filter from rest)."""
  wav = np.asarray(wav, dtype=np.float32)
  out = np.empty_like(wav)
  if wav.size:
    out[0] = wav[0]
    out[1:] = wav[1:] - np.float32(k) * wav[:-1]
  return out


def melspectrogram(wav: np.ndarray) -> np.ndarray:
  """16 kHz float waveform (N,) -> normalised log-mel features, float32 (80, 1 + N // 200) in [-4, 4]."""
  import librosa
  wav = np.asarray(wav, dtype=np.float32)
  if wav.ndim != 1:
    raise ValueError(f"melspectrogram expects a mono waveform (N,), got shape {wav.shape}")
  spec = librosa.stft(preemphasis(wav), n_fft=N_FFT, hop_length=HOP, win_length=WIN, window="hann",
                      center=True, pad_mode="constant")
  mel = _mel_basis() @ np.abs(spec)
  db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
  scaled = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
  return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


class WarmUp(threading.Thread):
  """``melspectrogram`` once on a quarter second of silence, in a background thread.

  librosa's first STFT in a process spends 2-4 s on this 2-core CPU in the imports librosa defers
  until then (its spectrum and audio modules, scipy.signal); the second takes milliseconds.
  Started before the generator's checkpoint load and compile and joined after them, it moves that
  cost from the first batch into the startup, partly hidden behind them. ``start()``, ``join()``,
  then ``seconds``.
  """

  def __init__(self):
    super().__init__(name="emogen-audio-warm-up", daemon=True)
    self.seconds = 0.0

  def run(self) -> None:
    t0 = time.perf_counter()
    try:
      melspectrogram(np.zeros(SAMPLE_RATE // 4, np.float32))
    except Exception:  # a broken audio stack fails again, with its own message, on the real call
      pass
    self.seconds = time.perf_counter() - t0


def mel_steps(num_samples: int) -> int:
  """Mel steps ``melspectrogram`` gives for a waveform of ``num_samples`` (centred frames)."""
  return 1 + int(num_samples) // HOP
