"""A procedurally rendered, CREMA-D-like talking-face corpus for tests, benchmarks and the quickstart.

Each "actor" is a distinct drawn face (skin tone, face shape, eye spacing, hair and background
colours, voice). Each clip ``<Actor>_<Sentence>_<EMO>_<INT>.mp4`` is 25 fps H.264 (yuv420p) with an
AAC speech track muxed by ffmpeg, like CREMA-D after the 25 fps conversion. What makes the corpus
useful for training rather than only for plumbing:

* lip sync: the mouth opening of frame f follows the loudness of the audio in [f/25, (f+1)/25) s,
  the span the mel window of frame f starts with, so in-sync and shifted audio differ visibly;
* emotion: brow angle/height, eye openness, mouth-corner curvature and a faint colour tint follow
  the emotion label, scaled by the intensity, consistently across actors;
* detection: the face is drawn so that OpenCV's frontal-face Haar cascade finds it, and it drifts
  and bobs a little so that boxes and crops change from frame to frame.

Speech comes from espeak-ng when it is installed (voice and pitch per actor, the clip's CREMA-D
sentence, rate/pitch per emotion), else from a synthesised syllabic buzz with pauses.

    python -m data_tools.make_synthetic --out /tmp/synth --actors 4 --clips-per-actor 12
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave

import cv2
import numpy as np

from emogen_jax.data.audio import load_wav
from emogen_jax.data.emotions import EMOTIONS
from emogen_jax.data.media import ffmpeg_exe
from emogen_jax.data import files
from emogen_jax.errors import ArgumentParser, UserError, cli_main

FPS = 25
SAMPLE_RATE = 16000
FIRST_ACTOR = 1001
# The 12 CREMA-D sentences, by their file-name codes.
SENTENCES = {
    "IEO": "It's eleven o'clock.",
    "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
SENTENCE_CODES = tuple(SENTENCES)
# How strongly the expression departs from neutral, per CREMA-D intensity code.
INTENSITY_SCALE = {"LO": 0.55, "MD": 0.8, "XX": 0.85, "HI": 1.0}


@dataclasses.dataclass(frozen=True)
class Expression:
  """Facial cues of one emotion at full intensity (neutral = all zeros).

  brow_raise: + up / - down (fraction of eye size); brow_tilt: + inner ends up (sad/fear),
  - inner ends down (anger); eye_open: multiplier offset on eye height; smile: + corners up,
  - corners down; mouth_width: offset on mouth width; jaw: resting mouth opening (a dropped jaw,
  added to the loudness-driven opening); tint: BGR colour offset on the skin.
  """
  brow_raise: float = 0.0
  brow_tilt: float = 0.0
  eye_open: float = 0.0
  smile: float = 0.0
  mouth_width: float = 0.0
  jaw: float = 0.0
  tint: tuple = (0, 0, 0)


EXPRESSIONS = {
    "ANG": Expression(brow_raise=-0.55, brow_tilt=-1.0, eye_open=-0.35, smile=-0.25, mouth_width=-0.12,
                      tint=(-12, -8, 22)),
    "DIS": Expression(brow_raise=-0.3, brow_tilt=-0.35, eye_open=-0.25, smile=-0.7, mouth_width=0.05,
                      tint=(0, 14, 0)),
    "FEA": Expression(brow_raise=0.5, brow_tilt=0.35, eye_open=0.25, smile=-0.3, mouth_width=0.3,
                      jaw=0.35, tint=(22, 6, -10)),
    "HAP": Expression(brow_raise=0.25, brow_tilt=0.0, eye_open=-0.2, smile=1.0, mouth_width=0.25,
                      tint=(-4, 4, 12)),
    "NEU": Expression(),
    "SAD": Expression(brow_raise=0.15, brow_tilt=0.9, eye_open=-0.3, smile=-0.8, mouth_width=-0.08,
                      tint=(14, -6, -10)),
}


@dataclasses.dataclass(frozen=True)
class Actor:
  """Per-actor look and voice, drawn deterministically from the actor id and the corpus seed."""
  actor_id: int
  skin: tuple  # BGR
  hair: tuple
  background: tuple
  face_w: float  # half-width of the head, fraction of the frame
  face_h: float  # half-height
  eye_spacing: float  # fraction of face_w from the centre line
  eye_size: float
  lip: tuple
  voice: str
  pitch: int
  speed: int


_SKINS = ((150, 180, 225), (120, 160, 210), (95, 135, 190), (70, 105, 160), (60, 85, 130),
          (170, 195, 235), (110, 140, 185))
_HAIRS = ((20, 20, 25), (30, 50, 90), (40, 70, 120), (15, 15, 15), (60, 90, 140), (90, 90, 95))
_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f3", "en-gb+f2", "en-us+m3", "en+f4")


def make_actor(actor_id: int, seed: int) -> Actor:
  rng = np.random.default_rng([seed, actor_id])
  k = actor_id - FIRST_ACTOR
  skin = np.array(_SKINS[k % len(_SKINS)], float) + rng.uniform(-10, 10, 3)
  hair = np.array(_HAIRS[(k * 5 + 1) % len(_HAIRS)], float) + rng.uniform(-8, 8, 3)
  # A background that contrasts with the hair and skin (bright-ish, varied hue).
  hue = rng.uniform(0, 180)
  bg = cv2.cvtColor(np.uint8([[[hue, rng.uniform(40, 110), rng.uniform(150, 215)]]]), cv2.COLOR_HSV2BGR)[0, 0]
  return Actor(
      actor_id=actor_id,
      skin=tuple(np.clip(skin, 0, 255).tolist()),
      hair=tuple(np.clip(hair, 0, 255).tolist()),
      background=tuple(float(v) for v in bg),
      face_w=float(rng.uniform(0.24, 0.29)),
      face_h=float(rng.uniform(0.31, 0.35)),
      eye_spacing=float(rng.uniform(0.36, 0.44)),
      eye_size=float(rng.uniform(0.9, 1.1)),
      lip=tuple(np.clip(np.array((70, 70, 150), float) + rng.uniform(-20, 20, 3), 0, 255).tolist()),
      voice=_VOICES[k % len(_VOICES)],
      pitch=int(rng.integers(25, 75)),
      speed=int(rng.integers(150, 185)),
  )


# ---------------------------------------------------------------------------------------------
# Drawing.


def render_frame(actor: Actor, expr: Expression, strength: float, mouth_open: float, center: tuple,
                 scale: float, size: int, face: bool = True) -> np.ndarray:
  """One BGR uint8 frame (size, size, 3).

  mouth_open in [0, 1]; center = (cx, cy) of the head as fractions of the frame; scale ~1 (head
  size). Drawn at 2x and downsampled (anti-aliasing, softer edges closer to a camera image).
  """
  ss = 2
  n = size * ss
  img = np.empty((n, n, 3), np.uint8)
  img[:] = np.array(actor.background, np.uint8)
  # A soft vertical gradient on the background, so it is not a flat field.
  grad = np.linspace(-18, 18, n, dtype=np.float32)[:, None, None]
  img = np.clip(img.astype(np.float32) + grad, 0, 255).astype(np.uint8)
  if not face:
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)

  s = scale * n
  cx, cy = center[0] * n, center[1] * n
  fw, fh = actor.face_w * s, actor.face_h * s

  def p(x, y):  # face-relative coordinates (-1..1 of the half-axes) -> integer pixel position
    return (int(round(cx + x * fw)), int(round(cy + y * fh)))

  def ax(a, b):
    return (max(1, int(round(a * fw))), max(1, int(round(b * fh))))

  aa = cv2.LINE_AA
  skin = np.array(actor.skin, float) + strength * np.array(expr.tint, float)
  skin = tuple(np.clip(skin, 0, 255).tolist())
  shade = tuple(v * 0.72 for v in skin)
  dark = (25, 22, 28)
  # Hair behind the head, neck and shoulders.
  cv2.ellipse(img, p(0, -0.12), ax(1.12, 1.02), 0, 0, 360, actor.hair, -1, aa)
  cv2.rectangle(img, p(-0.38, 0.7), p(0.38, 1.6), shade, -1, aa)
  cv2.ellipse(img, p(0, 1.75), ax(1.6, 0.55), 0, 180, 360, tuple(v * 0.5 for v in actor.hair), -1, aa)
  # Head; a fringe of hair over the forehead.
  cv2.ellipse(img, p(0, 0), ax(1.0, 1.0), 0, 0, 360, skin, -1, aa)
  cv2.ellipse(img, p(0, -0.78), ax(0.95, 0.36), 0, 180, 360, actor.hair, -1, aa)
  # Ears.
  for side in (-1, 1):
    cv2.ellipse(img, p(side * 0.98, 0.0), ax(0.12, 0.2), 0, 0, 360, shade, -1, aa)

  # Brows: thick dark bars; height and inner/outer tilt from the emotion.
  raise_ = strength * expr.brow_raise * 0.12
  tilt = strength * expr.brow_tilt * 0.09
  brow_y = -0.42 - raise_
  # Eyes: white, iris, pupil; upper lid height sets the openness.
  es = actor.eye_size
  eye_y = -0.18
  socket = tuple(v * 0.55 for v in skin)
  white = tuple(min(215.0, v * 1.0 + 45) for v in skin)
  eye_w = 0.2 * es
  eye_h = 0.1 * es * max(0.25, 1.0 + strength * expr.eye_open)
  for side in (-1, 1):
    ex = side * actor.eye_spacing
    # A dark socket around each eye and whites only a little brighter than the skin: the cascade
    # keys on an eye band darker than the cheeks, which bright cartoon eye-whites would break.
    # The socket reaches up to the brow wherever the brow is, so raised brows keep the band dark.
    top = brow_y - 0.02
    cv2.ellipse(img, p(ex, (top + eye_y + 0.12) / 2), ax(eye_w * 1.45, (eye_y + 0.12 - top) / 2), 0, 0, 360,
                socket, -1, aa)
    cv2.ellipse(img, p(ex, eye_y), ax(eye_w, eye_h), 0, 0, 360, white, -1, aa)
    cv2.circle(img, p(ex, eye_y), max(2, int(0.1 * es * fw)), (60, 45, 40), -1, aa)
    cv2.circle(img, p(ex, eye_y), max(1, int(0.045 * es * fw)), (5, 5, 5), -1, aa)
    cv2.ellipse(img, p(ex, eye_y), ax(eye_w, eye_h), 0, 0, 360, dark, max(1, int(0.02 * fw)), aa)

  # Brows: drawn over the sockets.
  thick = max(2, int(0.075 * fh))
  for side in (-1, 1):
    inner = (side * (actor.eye_spacing - 0.2), brow_y - tilt)
    outer = (side * (actor.eye_spacing + 0.24), brow_y + tilt + 0.02)
    mid = (side * (actor.eye_spacing + 0.02), brow_y - 0.035 - 0.3 * abs(tilt))
    pts = np.array([p(*inner), p(*mid), p(*outer)], np.int32)
    cv2.polylines(img, [pts], False, actor.hair if sum(actor.hair) < 240 else dark, thick, aa)

  # Nose: a shaded bridge and nostrils (the light bridge between dark eyes helps the detector).
  cv2.line(img, p(0.0, -0.1), p(0.06, 0.22), shade, max(1, int(0.03 * fw)), aa)
  for side in (-1, 1):
    cv2.ellipse(img, p(side * 0.08, 0.26), ax(0.05, 0.03), 0, 0, 360, tuple(v * 0.5 for v in skin), -1, aa)

  # Mouth: corners curve with the emotion; the opening follows the loudness.
  mw = 0.34 * (1.0 + strength * expr.mouth_width)
  my = 0.52
  curve = strength * expr.smile * 0.12
  gap = 0.02 + 0.26 * float(np.clip(mouth_open + strength * expr.jaw, 0.0, 1.3))
  xs = np.linspace(-1, 1, 17)
  # Upper and lower lip lines: corners at my - curve, centre at my; the lower lip drops by `gap`.
  upper = [(x * mw, my - curve * x * x - gap * 0.25 * (1 - x * x)) for x in xs]
  lower = [(x * mw, my - curve * x * x + gap * (1 - x * x)) for x in xs]
  inside = np.array([p(*q) for q in upper + lower[::-1]], np.int32)
  cv2.fillPoly(img, [inside], (20, 15, 35), aa)
  lipw = max(2, int(0.05 * fh))
  cv2.polylines(img, [np.array([p(*q) for q in upper], np.int32)], False, actor.lip, lipw, aa)
  cv2.polylines(img, [np.array([p(*q) for q in lower], np.int32)], False, actor.lip, lipw, aa)
  if gap > 0.06:  # teeth under the upper lip
    teeth = [(x * mw * 0.8, my - curve * x * x - gap * 0.25 * (1 - x * x) + 0.03) for x in xs[3:-3]]
    cv2.polylines(img, [np.array([p(*q) for q in teeth], np.int32)], False, (225, 225, 230),
                  max(1, int(0.035 * fh)), aa)
  img = cv2.GaussianBlur(img, (0, 0), 1.2)
  return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def head_track(n_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Smooth head drift and bob: centres (n, 2) as frame fractions and scales (n,)."""
  t = np.arange(n_frames) / FPS
  base = np.array([0.5, 0.47]) + rng.uniform(-0.03, 0.03, 2)
  centers = np.tile(base, (n_frames, 1))
  for axis in range(2):
    for _ in range(2):
      amp, freq, phase = rng.uniform(0.006, 0.018), rng.uniform(0.2, 1.1), rng.uniform(0, 2 * np.pi)
      centers[:, axis] += amp * np.sin(2 * np.pi * freq * t + phase)
  centers += rng.normal(0, 0.002, centers.shape)  # a little hand-held jitter
  scales = 1.0 + rng.uniform(-0.04, 0.04) + 0.025 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t
                                                           + rng.uniform(0, 2 * np.pi))
  return centers, scales


# ---------------------------------------------------------------------------------------------
# Speech.

# Rate (words per minute offset) and pitch offsets per emotion, as actors do.
_PROSODY = {"ANG": (15, 5, 1.2), "DIS": (-10, -5, 1.0), "FEA": (20, 20, 0.9), "HAP": (10, 15, 1.1),
            "NEU": (0, 0, 1.0), "SAD": (-25, -15, 0.8)}


def _espeak(text: str, voice: str, pitch: int, speed: int, tmp_dir: str) -> np.ndarray | None:
  """espeak-ng speech -> float32 at 16 kHz, or None when espeak-ng is not installed."""
  exe = shutil.which("espeak-ng")
  if exe is None:
    return None
  path = os.path.join(tmp_dir, "speech.wav")
  subprocess.run([exe, "-v", voice, "-p", str(int(np.clip(pitch, 0, 99))), "-s", str(int(speed)),
                  "-g", "4", "-w", path, text], check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  # ffmpeg resamples 22.05 kHz -> 16 kHz (and avoids importing scipy.signal in every worker).
  return load_wav(path, SAMPLE_RATE)


def synth_speech(seconds: float, pitch_hz: float, rng: np.random.Generator) -> np.ndarray:
  """A syllabic voiced signal without a TTS engine: a harmonic buzz through vowel-like resonances,
  syllables of 0.1-0.25 s with random loudness, separated by short gaps and longer word pauses."""
  import scipy.signal
  n = int(seconds * SAMPLE_RATE)
  env = np.zeros(n, np.float32)
  formants = np.zeros((n, 2), np.float32)
  pos = int(rng.uniform(0.1, 0.2) * SAMPLE_RATE)
  vowels = ((700, 1200), (300, 2300), (500, 900), (400, 2000), (600, 1700))
  while pos < n - int(0.12 * SAMPLE_RATE):
    dur = int(rng.uniform(0.1, 0.25) * SAMPLE_RATE)
    dur = min(dur, n - pos)
    shape = np.sin(np.linspace(0, np.pi, dur)) ** 1.5
    env[pos:pos + dur] = rng.uniform(0.3, 1.0) * shape
    formants[pos:pos + dur] = vowels[rng.integers(len(vowels))]
    pos += dur + int((rng.uniform(0.12, 0.3) if rng.random() < 0.3 else rng.uniform(0.02, 0.06)) * SAMPLE_RATE)
  t = np.arange(n) / SAMPLE_RATE
  f0 = pitch_hz * (1 + 0.08 * np.sin(2 * np.pi * 1.3 * t))
  phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
  buzz = sum(np.sin(k * phase) / k for k in range(1, 30)).astype(np.float32)
  out = np.zeros(n, np.float32)
  for band in range(2):  # two fixed resonators, weighted per syllable by its vowel
    for centre in (500, 1500) if band == 0 else (900, 2200):
      b, a = scipy.signal.iirpeak(centre, 3.0, fs=SAMPLE_RATE)
      w = np.exp(-((formants[:, band] - centre) / 400.0) ** 2)
      out += w * scipy.signal.lfilter(b, a, buzz).astype(np.float32)
  out = out * env + 0.002 * rng.standard_normal(n).astype(np.float32)
  return (0.5 * out / max(1e-6, np.abs(out).max())).astype(np.float32)


def mouth_openings(wav: np.ndarray, n_frames: int) -> np.ndarray:
  """Per-frame mouth opening in [0, 1] from the loudness of [f/25, (f+1)/25) s (slightly widened).

  Frame f's mel window starts at f/25 s, so the opening at f is the loudness the SyncNet hears at
  the start of its window. A log scale with a floor 30 dB under the clip's peak closes the mouth in
  pauses and opens it on syllables.
  """
  hop = SAMPLE_RATE // FPS
  pad = hop // 4
  rms = np.empty(n_frames, np.float32)
  for f in range(n_frames):
    seg = wav[max(0, f * hop - pad):(f + 1) * hop + pad]
    rms[f] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if seg.size else 0.0
  db = 20 * np.log10(np.maximum(rms, 1e-6))
  peak = db.max()
  return np.clip((db - (peak - 30.0)) / 24.0, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Clips.


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  path: str
  actor: Actor
  sentence: str
  emotion: str
  intensity: str
  seed: int
  frames_range: tuple
  size: int
  speech: str  # "auto" | "espeak" | "synth"
  face: bool = True


def clip_plan(num_actors: int, clips_per_actor: int) -> list[tuple[int, str, str, str]]:
  """(actor_id, sentence, emotion, intensity) per clip; each actor's first 6k clips cover every
  emotion k times, and no (actor, sentence, emotion) repeats (at most 72 clips per actor)."""
  if num_actors < 1 or clips_per_actor < 1:
    raise UserError(f"need at least 1 actor and 1 clip per actor, got {num_actors} and {clips_per_actor}")
  if clips_per_actor > len(SENTENCES) * len(EMOTIONS):
    raise UserError(f"at most {len(SENTENCES) * len(EMOTIONS)} clips per actor (12 sentences x 6 "
                    f"emotions), got {clips_per_actor}")
  if num_actors > 999:
    raise UserError(f"at most 999 actors, got {num_actors}")
  plan = []
  for a in range(num_actors):
    for k in range(clips_per_actor):
      sentence = SENTENCE_CODES[k % len(SENTENCES)]
      emotion = EMOTIONS[(k + k // len(SENTENCES) + a) % len(EMOTIONS)]
      if emotion == "NEU" or sentence != "IEO":
        intensity = "XX"  # as in CREMA-D: only IEO is spoken at graded intensities
      else:
        intensity = ("LO", "MD", "HI")[(k // len(SENTENCES) + a) % 3]
      plan.append((FIRST_ACTOR + a, sentence, emotion, intensity))
  return plan


def _clip_audio(spec: ClipSpec, rng: np.random.Generator, tmp_dir: str) -> np.ndarray:
  d_rate, d_pitch, gain = _PROSODY[spec.emotion]
  scale = INTENSITY_SCALE[spec.intensity]
  speech = None
  max_s = spec.frames_range[1] / FPS - 0.25
  if spec.speech in ("auto", "espeak"):
    speed = spec.actor.speed + scale * d_rate
    pitch = spec.actor.pitch + scale * d_pitch
    speech = _espeak(SENTENCES[spec.sentence], spec.actor.voice, pitch, speed, tmp_dir)
    if speech is None and spec.speech == "espeak":
      raise UserError("espeak-ng not found; install it (apt-get install espeak-ng) or use --speech synth")
    if speech is not None:
      speech = speech[_voiced_span(speech)]
      if len(speech) > max_s * SAMPLE_RATE:  # too long for the clip: say it faster
        speed = min(450, speed * len(speech) / (max_s * SAMPLE_RATE) * 1.05)
        speech = _espeak(SENTENCES[spec.sentence], spec.actor.voice, pitch, speed, tmp_dir)
        speech = speech[_voiced_span(speech)]
  if speech is None:
    seconds = rng.uniform(spec.frames_range[0] / FPS - 0.4, max_s)
    pitch_hz = 110 + 2.0 * spec.actor.pitch + 1.5 * scale * d_pitch
    speech = synth_speech(max(0.5, seconds), pitch_hz, rng)
  speech = speech / max(1e-6, np.abs(speech).max()) * 0.6 * gain
  lead = rng.uniform(0.08, 0.2)
  n_frames = int(np.ceil((len(speech) / SAMPLE_RATE + lead + rng.uniform(0.08, 0.2)) * FPS))
  n_frames = int(np.clip(n_frames, *spec.frames_range))
  wav = np.zeros(n_frames * SAMPLE_RATE // FPS, np.float32)
  start = int(lead * SAMPLE_RATE)
  seg = speech[:max(0, len(wav) - start)]
  wav[start:start + len(seg)] = seg
  wav += 0.001 * rng.standard_normal(len(wav)).astype(np.float32)  # room noise
  return np.clip(wav, -1, 1)


def _voiced_span(x: np.ndarray) -> slice:
  """Trims leading/trailing near-silence of TTS output."""
  idx = np.flatnonzero(np.abs(x) > 0.01 * max(1e-6, np.abs(x).max()))
  return slice(idx[0], idx[-1] + 1) if idx.size else slice(0, len(x))


def _write_wav(path: str, wav: np.ndarray) -> None:
  """16-bit mono PCM at 16 kHz."""
  with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(SAMPLE_RATE)
    w.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())


def write_clip(spec: ClipSpec) -> str:
  """Renders one clip to spec.path (mp4, H.264 yuv420p + AAC) and returns the path."""
  cv2.setNumThreads(1)
  digest = int(hashlib.sha256(os.path.basename(spec.path).encode()).hexdigest()[:8], 16)
  rng = np.random.default_rng([spec.seed, digest])
  with tempfile.TemporaryDirectory(prefix="synth_clip_") as tmp:
    wav = _clip_audio(spec, rng, tmp)
    n_frames = len(wav) * FPS // SAMPLE_RATE
    wav_path = os.path.join(tmp, "audio.wav")
    _write_wav(wav_path, wav)
    opening = mouth_openings(wav, n_frames)
    centers, scales = head_track(n_frames, rng)
    expr = EXPRESSIONS[spec.emotion]
    strength = INTENSITY_SCALE[spec.intensity]
    frames = np.stack([
        render_frame(spec.actor, expr, strength, opening[f], tuple(centers[f]), float(scales[f]),
                     spec.size, face=spec.face) for f in range(n_frames)])
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
           "-s", f"{spec.size}x{spec.size}", "-r", str(FPS), "-i", "-", "-i", wav_path,
           "-map", "0:v:0", "-map", "1:a:0", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
           "-pix_fmt", "yuv420p", "-threads", "1", "-c:a", "aac", "-b:a", "64k"]
    with files.atomic_file(spec.path) as out:  # a killed run leaves no partial clip
      proc = subprocess.run(cmd + [out], input=frames.tobytes(), stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"ffmpeg failed writing {spec.path}: {proc.stderr.decode(errors='replace')[-500:]}")
  return spec.path


def write_corrupt_clip(path: str, seed: int = 0, nbytes: int = 20000) -> str:
  """A file with a video name and random bytes (what a truncated download looks like to ffmpeg)."""
  with open(path, "wb") as f:
    f.write(np.random.default_rng(seed).bytes(nbytes))
  return path


def write_noface_clip(path: str, seed: int = 0, frames_range: tuple = (38, 60), size: int = 160,
                      speech: str = "synth") -> str:
  """A valid 25 fps clip with speech but only background (no face to detect)."""
  actor = make_actor(FIRST_ACTOR, seed)
  return write_clip(ClipSpec(path, actor, "IEO", "NEU", "XX", seed, tuple(frames_range), size, speech,
                             face=False))


BAD_CORRUPT = "1000_DFA_ANG_XX.mp4"  # parseable name, undecodable content
BAD_NOFACE = "1000_IEO_NEU_XX.mp4"  # parseable name, no face in any frame
BAD_NAME = "not_a_crema_name.mp4"  # a good clip whose name does not parse


def make_corpus(out_dir: str, num_actors: int = 4, clips_per_actor: int = 12, seed: int = 0,
                frames_range: tuple = (38, 60), size: int = 160, speech: str = "auto",
                jobs: int | None = None, with_bad_examples: bool = False) -> list[str]:
  """Writes the corpus into out_dir and returns the paths of the good clips (sorted).

  with_bad_examples also writes BAD_CORRUPT, BAD_NOFACE and BAD_NAME (not in the returned list).
  """
  lo, hi = (int(v) for v in frames_range)
  if not 16 <= lo <= hi:
    raise UserError(f"frames range must satisfy 16 <= min <= max, got {frames_range}")
  if size < 64 or size % 2:
    raise UserError(f"frame size must be an even number >= 64 (H.264 4:2:0), got {size}")
  if speech not in ("auto", "espeak", "synth"):
    raise UserError(f"speech must be auto, espeak or synth, got {speech!r}")
  os.makedirs(out_dir, exist_ok=True)
  specs = []
  for actor_id, sentence, emotion, intensity in clip_plan(num_actors, clips_per_actor):
    name = f"{actor_id}_{sentence}_{emotion}_{intensity}.mp4"
    specs.append(ClipSpec(os.path.join(out_dir, name), make_actor(actor_id, seed), sentence, emotion,
                          intensity, seed, (lo, hi), size, speech))
  extra = []
  if with_bad_examples:
    write_corrupt_clip(os.path.join(out_dir, BAD_CORRUPT), seed)
    extra.append(ClipSpec(os.path.join(out_dir, BAD_NOFACE), make_actor(FIRST_ACTOR, seed), "IEO", "NEU",
                          "XX", seed, (lo, hi), size, speech, face=False))
    extra.append(dataclasses.replace(specs[0], path=os.path.join(out_dir, BAD_NAME)))
  jobs = jobs or os.cpu_count() or 1
  todo = specs + extra
  if jobs > 1 and len(todo) > 1:
    # spawn, not fork: the caller may have threads (TF, JAX) that a fork would copy mid-lock.
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(todo))) as pool:
      pool.map(write_clip, todo, chunksize=1)
  else:
    for s in todo:
      write_clip(s)
  return sorted(s.path for s in specs)


@cli_main
def main(argv=None):
  parser = ArgumentParser(
      prog="python -m data_tools.make_synthetic",
      description="Render a synthetic CREMA-D-like corpus: <Actor>_<Sentence>_<EMO>_<INT>.mp4 at 25 fps "
                  "with speech, mouths in sync with the audio and expressions per emotion.")
  parser.add_argument("--out", required=True, help="output directory (created)")
  parser.add_argument("--actors", type=int, default=4, help="number of actors (ids 1001..)")
  parser.add_argument("--clips-per-actor", type=int, default=12, help="clips per actor (<= 72)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--min-frames", type=int, default=38)
  parser.add_argument("--max-frames", type=int, default=60)
  parser.add_argument("--size", type=int, default=160, help="frame side in pixels (even)")
  parser.add_argument("--speech", choices=("auto", "espeak", "synth"), default="auto",
                      help="espeak-ng TTS (auto: when installed) or a synthesised syllabic signal")
  parser.add_argument("--jobs", type=int, default=None, help="parallel workers (default: all cores)")
  parser.add_argument("--with-bad-examples", action="store_true",
                      help=f"also write a corrupt file ({BAD_CORRUPT}), a clip without a face "
                           f"({BAD_NOFACE}) and a clip with an unparseable name ({BAD_NAME})")
  args = parser.parse_args(argv)
  out = files.check_output_dir(args.out, "--out", "corpus folder")
  t0 = time.time()
  with files.made_dirs(out):  # removed again if the run fails before writing a clip
    paths = make_corpus(out, args.actors, args.clips_per_actor, args.seed,
                        (args.min_frames, args.max_frames), args.size, args.speech, args.jobs,
                        args.with_bad_examples)
  extra = " (+3 bad examples)" if args.with_bad_examples else ""
  print(f"wrote {len(paths)} clips{extra} to {args.out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
  sys.exit(main())
