"""Audio features: parity with a direct librosa reference, decoding via real ffmpeg."""

from __future__ import annotations

import shutil
import subprocess

import librosa
import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal

from emogen_jax.data import audio
from emogen_jax.data import timing
from emogen_jax.data.media import ffmpeg_exe
from emogen_jax.errors import UserError


def _reference_mel(wav: np.ndarray) -> np.ndarray:
  """The original's recipe, spelled out with direct librosa/scipy calls in float64."""
  y = scipy.signal.lfilter([1.0, -0.97], [1.0], wav.astype(np.float64))
  d = librosa.stft(y, n_fft=800, hop_length=200, win_length=800, window="hann", center=True,
                   pad_mode="constant")
  basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
  s = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(d))) - 20
  return np.clip(8 * ((s + 100) / 100) - 4, -4, 4)


def _synth_speechlike(seconds: float = 2.0, sr: int = 16000, seed: int = 0) -> np.ndarray:
  """A voiced buzz with syllable-rate amplitude modulation and a pause, plus a little noise."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  f0 = 130 + 30 * np.sin(2 * np.pi * 0.7 * t)
  phase = 2 * np.pi * np.cumsum(f0) / sr
  buzz = sum(np.sin(k * phase) / k for k in range(1, 25))
  env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2 * (t % 1.0 < 0.7)
  return (0.3 * buzz * env + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def speech_16k(tmp_path_factory) -> tuple[str, np.ndarray]:
  """A 16 kHz int16 wav of speech (espeak-ng when installed) and its samples as float32."""
  d = tmp_path_factory.mktemp("speech")
  path = str(d / "speech16k.wav")
  if shutil.which("espeak-ng"):
    raw = str(d / "raw.wav")
    subprocess.run(["espeak-ng", "-w", raw, "Kids are talking by the door, it is eleven o'clock."],
                   check=True)
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", raw, "-ar", "16000", "-ac", "1",
                    "-c:a", "pcm_s16le", path], check=True)
    sr, pcm = scipy.io.wavfile.read(path)
    assert sr == 16000
  else:
    pcm = (_synth_speechlike() * 32767).astype(np.int16)
    scipy.io.wavfile.write(path, 16000, pcm)
  return path, pcm.astype(np.float32) / 32768.0


def test_constants():
  assert audio.SAMPLE_RATE == 16000 and audio.HOP == 200
  assert audio.SAMPLE_RATE // audio.HOP == timing.MEL_STEPS_PER_SECOND


@pytest.mark.parametrize("kind", ["speech", "synth"])
def test_melspectrogram_matches_librosa_reference(kind, speech_16k):
  wav = speech_16k[1] if kind == "speech" else _synth_speechlike(seconds=1.37, seed=3)
  mel = audio.melspectrogram(wav)
  ref = _reference_mel(wav)
  assert mel.dtype == np.float32
  assert mel.shape == (80, 1 + len(wav) // 200) == ref.shape
  assert np.max(np.abs(mel - ref)) <= 1e-4
  # Real content: the features span a good part of [-4, 4], not a constant.
  assert mel.min() < -3 and mel.max() > 0 and mel.std() > 0.5


def test_melspectrogram_zero_padding_not_reflect():
  """Centred with zero padding: the first/last steps differ from the old reflect padding."""
  wav = _synth_speechlike(seconds=1.0, seed=1) + 0.2
  ref_reflect = _reference_mel_pad(wav, "reflect")
  mel = audio.melspectrogram(wav)
  assert np.max(np.abs(mel[:, 3:-3] - ref_reflect[:, 3:-3])) <= 1e-4
  assert np.max(np.abs(mel[:, 0] - ref_reflect[:, 0])) > 1e-2


def _reference_mel_pad(wav, pad_mode):
  y = scipy.signal.lfilter([1.0, -0.97], [1.0], wav.astype(np.float64))
  d = librosa.stft(y, n_fft=800, hop_length=200, win_length=800, window="hann", center=True,
                   pad_mode=pad_mode)
  basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
  s = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(d))) - 20
  return np.clip(8 * ((s + 100) / 100) - 4, -4, 4)


def test_silence_is_floor():
  mel = audio.melspectrogram(np.zeros(1600, np.float32))
  assert mel.shape == (80, 9)
  np.testing.assert_array_equal(mel, -4.0)


def test_load_wav_pcm_exact(speech_16k):
  path, samples = speech_16k
  wav = audio.load_wav(path)
  assert wav.dtype == np.float32 and wav.ndim == 1
  assert wav.shape == samples.shape
  np.testing.assert_allclose(wav, samples, atol=1e-6)


def test_load_wav_resamples_and_downmixes(tmp_path, speech_16k):
  """A 44.1 kHz stereo file comes back mono at 16 kHz with the same content."""
  _, samples = speech_16k
  path = str(tmp_path / "stereo44k.wav")
  subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", speech_16k[0], "-ar", "44100",
                  "-ac", "2", "-c:a", "pcm_f32le", path], check=True)
  wav = audio.load_wav(path)
  assert abs(len(wav) - len(samples)) <= 2
  n = min(len(wav), len(samples))
  err = np.abs(audio.melspectrogram(wav[:n]) - audio.melspectrogram(samples[:n]))
  assert np.mean(err) < 0.02


def _aligned_error(decoded: np.ndarray, original: np.ndarray) -> tuple[int, float]:
  """Best integer lag (decoded vs original) and the relative RMS error at that lag."""
  n = min(len(decoded), len(original))
  best = None
  for lag in range(-2000, 2001):
    a = decoded[max(lag, 0):n + min(lag, 0)]
    b = original[max(-lag, 0):n - max(lag, 0)][:len(a)]
    a = a[:len(b)]
    err = np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2))
    if best is None or err < best[1]:
      best = (lag, float(err))
  return best


def test_load_wav_mp3_and_mp4_track(tmp_path, speech_16k):
  src, samples = speech_16k
  mp3 = str(tmp_path / "speech.mp3")
  subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", src, "-c:a", "libmp3lame",
                  "-b:a", "192k", mp3], check=True)
  mp4 = str(tmp_path / "talk.mp4")
  dur = len(samples) / 16000
  subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                  f"color=c=gray:s=64x64:r=25:d={dur:.3f}", "-i", src, "-c:v", "libx264",
                  "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "192k", "-shortest", mp4], check=True)
  for path in (mp3, mp4):
    wav = audio.load_wav(path)
    assert wav.dtype == np.float32
    assert abs(len(wav) - len(samples)) < 0.05 * 16000, path
    lag, rel = _aligned_error(wav[:16000], samples[:16000])
    # Gapless decoding: the codec delay is removed, so samples line up (within a few samples).
    assert abs(lag) <= 4, (path, lag)
    assert rel < 0.15, (path, rel)
    n = min(len(wav), len(samples))
    mel_err = np.abs(audio.melspectrogram(wav[:n]) - audio.melspectrogram(samples[:n]))
    assert np.median(mel_err) < 0.05, path


def test_load_wav_errors(tmp_path):
  with pytest.raises(UserError, match="missing.wav"):
    audio.load_wav(str(tmp_path / "missing.wav"))
  bad = tmp_path / "corrupt.wav"
  bad.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(UserError, match="corrupt.wav"):
    audio.load_wav(str(bad))
  silent_video = str(tmp_path / "noaudio.mp4")
  subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                  "color=c=gray:s=64x64:r=25:d=0.4", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                  silent_video], check=True)
  with pytest.raises(UserError, match="noaudio.mp4.*no audio"):
    audio.load_wav(silent_video)


def test_warm_up_does_librosas_deferred_imports_in_its_thread():
  """In a fresh process: before WarmUp, librosa's spectrum module (and scipy.signal) are not
  loaded; after WarmUp.join() they are, and ``seconds`` is set. (What the inference startup relies
  on to keep those imports out of the first batch.)"""
  import sys
  code = ("import sys, numpy as np\n"
          "from emogen_jax.data import audio\n"
          "mods = ('librosa.core.spectrum', 'scipy.signal')\n"
          "before = [m in sys.modules for m in mods]\n"
          "w = audio.WarmUp(); w.start(); w.join()\n"
          "after = [m in sys.modules for m in mods]\n"
          "print(before, after, w.seconds > 0, w.name, w.daemon)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split("\n")[-2] == "[False, False] [True, True] True emogen-audio-warm-up True", \
      out.stdout
