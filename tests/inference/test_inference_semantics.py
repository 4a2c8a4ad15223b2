"""What reaches the generator at inference, and where its output goes, checked against an
independent computation.

The generator is replaced (``flax.linen.intercept_methods`` on ``Generator.__call__``, so the
public API runs unchanged around it) by a function whose output ENCODES its inputs:
  * rows 0-79, columns 0-15, channel 0: the mel window, (mel + 4) / 8;
  * the same block, channel 1: the mean |value| of face channels 0-2 (the masked half; must be 0);
  * rows 80-95: six 16-pixel blocks, block k = the k-th entry of the emotion one-hot;
  * everything else: face channels 3-5 (the reference half: the frame's own crop).
The test then reads every output frame back and compares it with what docs/design.md ("Time rules")
says it must be: chunk i of the mel starts at int(80 * i / fps) and the last one ends at the
last mel step; source frame i of a shorter video is played forwards, backwards, forwards...;
the face is pasted into the box of that source frame. Swapping the two input halves, shifting
the chunks by one, or pasting elsewhere changes the decoded values by far more than rounding.
"""

from __future__ import annotations

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emogen_jax.data import audio as audio_lib
from emogen_jax.data import face_detection
from emogen_jax.data.emotions import EMOTIONS
from emogen_jax.inference.api import TalkingFace
from emogen_jax.models import Generator
from tests import _infer_fixtures as F

FPS = 25.0
MEL_BLOCK = (slice(0, 80), slice(0, 16))
EMO_ROWS = slice(80, 96)


def _encode(mel, face, emotion):
  """The stand-in generator: (N, 80, 16, 1), (N, 96, 96, 6), (N,) or (N, 6) -> (N, 96, 96, 3)."""
  lead = face.shape[:-3]
  mel = jnp.asarray(mel).reshape((-1, 80, 16))
  face = jnp.asarray(face).reshape((-1, 96, 96, 6)).astype(jnp.float32)
  emotion = jnp.asarray(emotion)
  one_hot = (jax.nn.one_hot(emotion.reshape(-1), 6) if emotion.ndim == 1 else emotion.reshape(-1, 6))
  n = face.shape[0]
  one_hot = jnp.repeat(one_hot, n // one_hot.shape[0], axis=0)  # clip mode: one emotion per clip
  out = face[..., 3:6]
  out = out.at[:, :80, :16, 0].set((mel + 4.0) / 8.0)
  out = out.at[:, :80, :16, 1].set(jnp.mean(jnp.abs(face[..., :3]), axis=(1, 2, 3))[:, None, None])
  for k in range(6):
    out = out.at[:, 80:96, 16 * k:16 * (k + 1), :].set(one_hot[:, k, None, None, None])
  return out.reshape(lead + (96, 96, 3))


def _interceptor(next_fun, args, kwargs, context):
  if isinstance(context.module, Generator) and context.method_name == "__call__":
    return _encode(*args[:3])
  return next_fun(*args, **kwargs)


def expected_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
  """docs/design.md: chunk i starts at int(i * 80 / fps) while 16 steps fit, then one ends at the last step."""
  out, i = [], 0
  while int(i * 80 / fps) + 16 <= mel.shape[1]:
    s = int(i * 80 / fps)
    out.append(mel[:, s:s + 16])
    i += 1
  out.append(mel[:, -16:])
  return out


def pingpong_order(num_out: int, num_src: int) -> list[int]:
  """0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... (one period written out, repeated)."""
  period = list(range(num_src)) + list(range(num_src - 2, 0, -1))
  return [period[i % len(period)] for i in range(num_out)]


def _mel_pixels(chunk: np.ndarray) -> np.ndarray:
  return np.clip(np.round((chunk + 4.0) / 8.0 * 255.0), 0, 255)


@pytest.fixture(scope="module")
def talking_face(tmp_path_factory):
  ckpt = F.make_generator_checkpoint(str(tmp_path_factory.mktemp("sem") / "gen"))
  with nn.intercept_methods(_interceptor):
    tf = TalkingFace.load(ckpt, batch_size=4)
    yield tf


def _generate(tf, **kwargs):
  # blend="box": the face pasted as the original's rectangle, so each output pixel of the box
  # is the generator's (the default feathered paste mixes the box's rim with the source).
  with nn.intercept_methods(_interceptor):
    return tf.generate(fps=FPS, progress=False, blend="box", **kwargs)


def _decode_and_check(face: np.ndarray, crop: np.ndarray, chunks, i: int, emotion: int):
  """Checks one 96x96 output face against output frame i's expected inputs."""
  got_mel = face[MEL_BLOCK + (0,)].astype(np.float64)
  err = np.abs(got_mel - _mel_pixels(chunks[i])).max()
  assert err <= 1, (i, err)
  # ... and the neighbouring chunks do not fit (a shift by one frame is caught).
  for j in (i - 1, i + 1):
    if 0 <= j < len(chunks) and not np.array_equal(chunks[j], chunks[i]):
      assert np.abs(got_mel - _mel_pixels(chunks[j])).max() > 3, (i, j)
  assert (face[MEL_BLOCK + (1,)] == 0).all(), f"frame {i}: the masked half is not all zeros"
  np.testing.assert_array_equal(face[:80, 16:], crop[:80, 16:], err_msg=f"frame {i}: reference half")
  np.testing.assert_array_equal(face[MEL_BLOCK + (2,)], crop[MEL_BLOCK + (2,)])
  blocks = [int(face[EMO_ROWS, 16 * k:16 * (k + 1)].mean().round()) for k in range(6)]
  assert blocks == [255 if k == emotion else 0 for k in range(6)], (i, blocks)


def test_inputs_chunks_pingpong_emotion_and_paste(talking_face):
  rng = np.random.default_rng(0)
  src = [rng.integers(0, 256, (140, 130, 3), dtype=np.uint8) for _ in range(4)]
  top, bottom, left, right = 30, 126, 20, 116          # a 96x96 box: the crop is the box itself
  wav = F.synth_speech(0.53)                           # 43 mel steps: the last chunk is not on the grid
  mel = audio_lib.melspectrogram(wav)
  chunks = expected_chunks(mel, FPS)
  order = pingpong_order(len(chunks), len(src))
  assert len(chunks) == 10 and order == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
  assert int(80 * 9 / FPS) + 16 > mel.shape[1]        # so chunk 9 is the end-aligned one

  out, fps = _generate(talking_face, face=src, audio=wav, emotion="SAD",
                       box=(top, bottom, left, right))
  assert fps == FPS and len(out) == len(chunks)
  for i, frame in enumerate(out):
    s = src[order[i]]
    _decode_and_check(frame[top:bottom, left:right], s[top:bottom, left:right], chunks, i,
                      EMOTIONS.index("SAD"))
    outside = np.ones(s.shape[:2], bool)
    outside[top:bottom, left:right] = False
    np.testing.assert_array_equal(frame[outside], s[outside], err_msg=f"frame {i} outside the box")


def test_all_emotions_side_by_side_in_order(talking_face):
  rng = np.random.default_rng(1)
  src = [rng.integers(0, 256, (140, 130, 3), dtype=np.uint8) for _ in range(3)]
  box = (30, 126, 20, 116)
  wav = F.synth_speech(0.3)
  chunks = expected_chunks(audio_lib.melspectrogram(wav), FPS)
  out, _ = _generate(talking_face, face=src, audio=wav, emotion="all", box=box)
  assert out.shape == (len(chunks), 140, 6 * 130, 3)
  order = pingpong_order(len(chunks), len(src))
  for i, frame in enumerate(out):
    for e in range(6):
      panel = frame[:, 130 * e:130 * (e + 1)]
      _decode_and_check(panel[30:126, 20:116], src[order[i]][30:126, 20:116], chunks, i, e)


def test_face_is_pasted_into_the_detected_box(talking_face):
  frames = F.face_frames(7)
  wav = F.synth_speech(0.6)
  chunks = expected_chunks(audio_lib.melspectrogram(wav), FPS)
  out, _ = _generate(talking_face, face=frames, audio=wav, emotion="HAP")
  # Expected boxes: the detector's raw boxes, padded by the default (top 0, bottom 10, left 0,
  # right 0) and clamped, then averaged over the box and its next four (the last ones over the final five).
  # Raw boxes as inference finds them: the first frame searched whole, the others near the face
  # before (one detector call for these seven frames).
  raw = [b for b, _ in face_detection.make_detector("haar").detect_faces(frames, track=True)]
  h, w = frames[0].shape[:2]
  padded = [(max(0, x1), max(0, y1), min(w, x2), min(h, y2 + 10)) for x1, y1, x2, y2 in raw]
  boxes = []
  for i in range(len(frames)):
    s = min(i, len(frames) - 5)
    boxes.append(tuple(int(v) for v in np.mean(padded[s:s + 5], axis=0)))
  order = pingpong_order(len(chunks), len(frames))
  assert len(out) == len(chunks) > len(frames)
  for i, frame in enumerate(out):
    x1, y1, x2, y2 = boxes[order[i]]
    src = frames[order[i]]
    crop = cv2.resize(src[y1:y2, x1:x2], (96, 96))
    face = np.asarray(_encode(chunks[i][None, :, :, None],
                              np.concatenate([np.zeros_like(crop), crop], -1)[None] / 255.0,
                              np.array([EMOTIONS.index("HAP")])))[0]
    face = np.clip(np.round(face * 255.0), 0, 255).astype(np.uint8)
    expected = src.copy()
    expected[y1:y2, x1:x2] = cv2.resize(face, (x2 - x1, y2 - y1))
    diff = np.abs(frame.astype(int) - expected.astype(int))
    assert diff.max() <= 2, (i, diff.max(), boxes[order[i]])
