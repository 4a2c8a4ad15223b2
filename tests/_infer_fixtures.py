"""Small inputs for the inference/evaluation tests: a tiny generator checkpoint, a face clip, speech."""

from __future__ import annotations

import os
import shutil
import subprocess

import cv2
import numpy as np

from tests._model_fixtures import random_variables

TINY_WIDTH = 0.125


def make_generator_checkpoint(path: str, width: float = TINY_WIDTH, seed: int = 0) -> str:
  """A random small-width Generator saved as a model checkpoint (meta records width)."""
  import jax.numpy as jnp
  from emogen_jax.models import Generator
  from emogen_jax.models import checkpoints
  variables = random_variables(Generator(width=width), jnp.zeros((1, 80, 16, 1)),
                               jnp.zeros((1, 96, 96, 6)), jnp.zeros((1,), jnp.int32), train=False,
                               seed=seed, fresh=True)
  return checkpoints.save_models(path, {"generator": variables}, width=width, source="test")


def make_model_checkpoint(path: str, kind: str, width: float = TINY_WIDTH, seed: int = 0) -> str:
  """A random small SyncNet or EmotionDiscriminator checkpoint."""
  import jax.numpy as jnp
  from emogen_jax.models import EmotionDiscriminator, SyncNet
  from emogen_jax.models import checkpoints
  if kind == "syncnet":
    variables = random_variables(SyncNet(width=width), jnp.zeros((1, 80, 16, 1)),
                                 jnp.zeros((1, 48, 96, 15)), train=False, seed=seed, fresh=True)
  elif kind == "emotion_disc":
    variables = random_variables(EmotionDiscriminator(width=width), jnp.zeros((1, 5, 96, 96, 3)),
                                 seed=seed, fresh=True)
  else:
    raise ValueError(kind)
  return checkpoints.save_models(path, {kind: variables}, width=width, source="test")


def face_image(size: tuple[int, int] = (128, 160)) -> np.ndarray:
  """A BGR (h, w) picture with a real, Haar-detectable face (the astronaut of skimage)."""
  from skimage import data
  rgb = data.astronaut()[0:300, 100:350]  # head and shoulders
  h, w = size
  img = np.full((h, w, 3), (90, 120, 60), np.uint8)
  face = cv2.resize(rgb[:, :, ::-1], (int(w * 0.75), int(h * 0.95)))
  fh, fw = face.shape[:2]
  y, x = (h - fh) // 2, (w - fw) // 2
  img[y:y + fh, x:x + fw] = face
  return img


def face_frames(n: int, size: tuple[int, int] = (128, 160)) -> list[np.ndarray]:
  """n frames of the face drifting by a few pixels (so boxes change from frame to frame)."""
  base = face_image(size)
  out = []
  for i in range(n):
    dx, dy = int(round(3 * np.sin(i / 3.0))), int(round(2 * np.cos(i / 4.0)))
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    out.append(cv2.warpAffine(base, m, (size[1], size[0]), borderMode=cv2.BORDER_REPLICATE))
  return out


def write_face_video(path: str, n: int = 12, fps: float = 25.0, size=(128, 160)) -> str:
  from emogen_jax.data import video_io
  video_io.write_video(path, face_frames(n, size), fps)
  return path


def write_face_image(path: str, size=(128, 160)) -> str:
  cv2.imwrite(path, face_image(size))
  return path


def synth_speech(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
  """A voiced buzz with syllable-like loudness changes (exactly ``seconds`` long)."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(round(seconds * sr))) / sr
  f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
  phase = 2 * np.pi * np.cumsum(f0) / sr
  voice = sum(np.sin(k * phase) / k for k in range(1, 8))
  env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)))
  return (0.3 * voice * env / 2).astype(np.float32)


def write_speech(path: str, seconds: float, sr: int = 16000) -> str:
  from emogen_jax.data import video_io
  video_io.write_wav(path, synth_speech(seconds, sr), sr)
  return path


def write_espeak(path: str, text: str = "Don't forget a jacket.") -> str | None:
  """A spoken sentence from espeak-ng (None when it is not installed)."""
  exe = shutil.which("espeak-ng")
  if exe is None:
    return None
  subprocess.run([exe, "-w", path, text], check=True, capture_output=True)
  return path if os.path.getsize(path) > 1000 else None


def make_dataset(data_dir: str, clips: list[dict], splits: dict[str, list[str]]) -> str:
  """A preprocessed ``emogen_clips`` dataset built from in-memory clips (no detection, no video).

  Each clip: {"clip_id", "crops": (N, 96, 96, 3) uint8 BGR, "mel": (80, T), "emotion": code,
  optional "valid": (N,) bool, "actor"}. Written as the preprocess cache, then built by its
  stage 2 (data_tools.preprocess.build_dataset), so the evaluation reads real TFDS shards.
  """
  import pickle
  from data_tools import preprocess
  cache = os.path.join(data_dir, "cache")
  os.makedirs(os.path.join(cache, "clips"), exist_ok=True)
  for c in clips:
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for f in c["crops"]]
    actor, sentence = c["clip_id"].split("_")[:2]
    rec = {"status": "ok", "clip_id": c["clip_id"], "frames": jpegs,
           "valid": np.asarray(c.get("valid", np.ones(len(jpegs), bool))),
           "mel": np.asarray(c["mel"], np.float32), "emotion": c["emotion"], "intensity": "XX",
           "actor": c.get("actor", actor), "sentence": sentence}
    with open(os.path.join(cache, "clips", f"{c['clip_id']}.pkl"), "wb") as f:
      pickle.dump(rec, f)
  import json
  with open(os.path.join(cache, "splits.json"), "w") as f:
    json.dump(splits, f)
  preprocess.build_dataset(data_dir, cache, log=lambda *a: None)
  return data_dir


def face_crops(n: int, seed: int = 0) -> np.ndarray:
  """(n, 96, 96, 3) uint8 BGR face crops (the drifting face, cut around its centre)."""
  frames = face_frames(n)
  return np.stack([cv2.resize(f[14:94, 40:120], (96, 96)) for f in frames])
