"""A small preprocessed synthetic corpus shared by the face-detection / preprocess / input-pipeline tests.

Built once per test session (memoised here rather than as a pytest fixture, so that test
modules importing it share one build) under a temporary directory:

* 3 actors x 3 clips of the synthetic corpus (data_tools.make_synthetic), 24-32 frames;
* the corpus's bad inputs: a corrupt file, a faceless clip, an unparseable name;
* ``PARTIAL``: a good clip re-encoded with frames BLANK_FRAMES blanked (no face there):
  kept, with those frames invalid;
* ``FPS30``: a good clip re-encoded at 30 fps (skipped as not_25fps).

then ``python -m data_tools.preprocess`` (the real CLI, in a subprocess) into data/.
"""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np

from data_tools import make_synthetic
from emogen_jax.data.media import ffmpeg_exe
from tests import REPO

NUM_ACTORS = 3
CLIPS_PER_ACTOR = 3
FRAMES_RANGE = (24, 32)
SIZE = 128
PARTIAL = "1002_WSI_NEU_XX"
BLANK_FRAMES = (12, 13)
FPS30 = "1003_TSI_ANG_XX"


def run_preprocess(args, timeout=300, check=True) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "data_tools.preprocess", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"preprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


def reencode(src: str, dst: str, blank=(), fps: float | None = None) -> str:
  """Copies a clip (frames through OpenCV, audio stream copied), blanking some frames or
  resampling the video to another frame rate."""
  cap = cv2.VideoCapture(src)
  frames = []
  while True:
    ok, f = cap.read()
    if not ok:
      break
    frames.append(f)
  cap.release()
  for i in blank:
    frames[i] = np.full_like(frames[i], frames[i][2, 2])  # the background colour, no face
  h, w = frames[0].shape[:2]
  vf = ["-vf", f"fps={fps}"] if fps else []
  cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
         "-s", f"{w}x{h}", "-r", "25", "-i", "-", "-i", src, "-map", "0:v", "-map", "1:a", *vf,
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-threads", "1", "-c:a", "copy", dst]
  subprocess.run(cmd, input=np.stack(frames).tobytes(), check=True)
  return dst


def make_corpus(root: str) -> dict:
  """{"src", "good" (paths of the synthetic good clips)}: the test corpus written under ``root``,
  with one clip whose frames 12-13 show no face and one re-timed to 30 fps."""
  src = os.path.join(root, "src")
  good = make_synthetic.make_corpus(src, num_actors=NUM_ACTORS, clips_per_actor=CLIPS_PER_ACTOR,
                                    seed=0, frames_range=FRAMES_RANGE, size=SIZE, speech="synth",
                                    with_bad_examples=True)
  reencode(good[3], os.path.join(src, PARTIAL + ".mp4"), blank=BLANK_FRAMES)
  reencode(good[6], os.path.join(src, FPS30 + ".mp4"), fps=30)
  return {"src": src, "good": good}


def preprocess_corpus(corpus: dict, root: str) -> dict:
  """{"src", "good", "data_dir", "cache_dir", "stdout"}: ``corpus`` preprocessed with defaults."""
  data_dir = os.path.join(root, "data")
  proc = run_preprocess(["--src", corpus["src"], "--data-dir", data_dir, "--jobs", "2"])
  return {**corpus, "data_dir": data_dir, "cache_dir": os.path.join(data_dir, "cache"),
          "stdout": proc.stdout}


def load_cached_clip(cache_dir: str, clip_id: str) -> dict:
  import pickle
  with open(os.path.join(cache_dir, "clips", f"{clip_id}.pkl"), "rb") as f:
    return pickle.load(f)


def decode_jpeg_cv2(data: bytes) -> np.ndarray:
  return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
