"""Helpers that make small media inputs for tests: a synthetic corpus, bad inputs, plain test videos.

Import them from any test module (`from tests._data_fixtures import ...`); they use real ffmpeg.
"""

from __future__ import annotations

import os
import subprocess

import cv2
import numpy as np

from data_tools import make_synthetic
from emogen_jax.data import video_io
from emogen_jax.data.media import ffmpeg_exe

HAAR_FILE = "haarcascade_frontalface_default.xml"


def make_small_corpus(out_dir: str, num_actors: int = 2, clips_per_actor: int = 6, seed: int = 0,
                      frames_range: tuple = (38, 50), size: int = 160, speech: str = "auto",
                      with_bad_examples: bool = False, jobs: int | None = None) -> list[str]:
  """A few-second synthetic corpus (2 actors x 6 clips: every emotion once per actor by default)."""
  return make_synthetic.make_corpus(str(out_dir), num_actors=num_actors, clips_per_actor=clips_per_actor,
                                    seed=seed, frames_range=frames_range, size=size, speech=speech,
                                    jobs=jobs, with_bad_examples=with_bad_examples)


def write_corrupt_video(path: str, seed: int = 0) -> str:
  """Random bytes under a video name."""
  return make_synthetic.write_corrupt_clip(str(path), seed)


def write_noface_video(path: str, seed: int = 0, frames_range: tuple = (38, 40)) -> str:
  """A valid 25 fps clip with audio that shows only background."""
  return make_synthetic.write_noface_clip(str(path), seed, frames_range=frames_range)


def write_unparseable_name_clip(out_dir: str, seed: int = 0) -> str:
  """A valid synthetic clip (face + speech) whose file name is not Actor_Sentence_EMO_INT."""
  spec = make_synthetic.ClipSpec(os.path.join(str(out_dir), make_synthetic.BAD_NAME),
                                 make_synthetic.make_actor(make_synthetic.FIRST_ACTOR, seed), "DFA", "HAP",
                                 "XX", seed, (38, 40), 160, "auto")
  return make_synthetic.write_clip(spec)


def make_test_video(path: str, fps: float = 30, seconds: float = 2.0, size: int = 64, audio: bool = True,
                    tone_hz: float = 440.0) -> str:
  """An ffmpeg test pattern (frame counter visible) at `fps`, optionally with a sine tone at 16 kHz."""
  cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc=size={size}x{size}:rate={fps}:duration={seconds}"]
  if audio:
    cmd += ["-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=16000:duration={seconds}"]
  cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-threads", "1"]
  cmd += ["-c:a", "aac", "-b:a", "64k"] if audio else []
  subprocess.run(cmd + [str(path)], check=True)
  return str(path)


def read_frames(path: str) -> np.ndarray:
  """All frames of a video as uint8 BGR (n, h, w, 3) via OpenCV."""
  frames = list(video_io.iter_video(str(path)))
  return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def probe(path: str) -> dict:
  """ffprobe's streams/format as a dict (uses the ffprobe next to ffmpeg)."""
  import json
  import shutil
  exe = shutil.which("ffprobe") or os.path.join(os.path.dirname(ffmpeg_exe()), "ffprobe")
  out = subprocess.run([exe, "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json",
                        str(path)], check=True, capture_output=True, text=True).stdout
  return json.loads(out)


def haar_boxes(frames: np.ndarray, min_neighbors: int = 6, min_size: int = 56) -> list:
  """Largest Haar face (x, y, w, h) per frame or None, on the equalised grey frame (faces >= min_size)."""
  cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, HAAR_FILE))
  boxes = []
  for f in frames:
    g = cv2.equalizeHist(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY))
    d = cascade.detectMultiScale(g, scaleFactor=1.1, minNeighbors=min_neighbors,
                                        minSize=(min_size, min_size))
    boxes.append(tuple(max(d, key=lambda r: r[2] * r[3])) if len(d) else None)
  return boxes
