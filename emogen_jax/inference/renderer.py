"""The inference core: a face video or image + any speech audio -> generated frames.

Per docs/design.md "Time rules" and "Data flow": one face box per frame (pads top, bottom, left, right; averaged over a
5-frame window unless --nosmooth), crops resized to 96x96, generator input = [zeros, the frame's
own crop], mel chunk i starts at int(i * 80 / fps) (the last one aligned to the end of the audio),
the generated crop is resized back into the frame and the audio is muxed with ffmpeg.

When the audio is longer than the video, the video is played forwards then backwards
("ping-pong") so that the loop has no jump; frame i of the output shows source frame
``pingpong_index(i, num_frames)``. ``--emotion all`` renders the six emotions side by side.

The core (``Renderer``, ``prepare_frames``, ``face_boxes_for``, ``render_frames``) is shared with
the command line (``emogen_jax.inference.cli``) and the notebook API (``emogen_jax.inference.api``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Iterator, Sequence

import cv2
import numpy as np

from emogen_jax.data import audio as audio_lib
from emogen_jax.data import face_detection
from emogen_jax.data import timing
from emogen_jax.data.emotions import EMOTION_NAMES, EMOTIONS, emotion_id
from emogen_jax.errors import UserError
from emogen_jax.models import checkpoints

FACE_SIZE = 96
DEFAULT_PADS = (0, 10, 0, 0)
DEFAULT_IMAGE_FPS = 25.0


class NoFaceError(UserError):
  """No face was found in source frame ``frame_index`` (the frame itself is kept for inspection)."""

  def __init__(self, frame_index: int, frame: np.ndarray):
    self.frame_index = frame_index
    self.frame = frame
    super().__init__(f"no face found in frame {frame_index}; try larger --pads, a fixed --box T B L R, "
                     "or --detector s3fd")


def parse_emotions(emotion: str) -> list[int]:
  """'HAP' -> [3]; 'all' -> the six labels in EMOTIONS order; unknown -> UserError listing valid ones."""
  if emotion.strip().lower() == "all":
    return list(range(len(EMOTIONS)))
  try:
    return [emotion_id(emotion)]
  except UserError:
    raise UserError(f"unknown emotion {emotion!r}; valid emotions are {', '.join(EMOTIONS)} or all")


# ---------------------------------------------------------------------------- the model


def load_generator(checkpoint: str, dtype=None):
  """(Generator module, variables, meta) from a converted checkpoint or a training workdir."""
  return checkpoints.load(checkpoint, "generator", dtype=dtype)


class Renderer:
  """Runs the generator with one jitted function of FIXED batch shape (the last batch is padded).

  ``__call__(mels (n, 80, 16), crops (n, 96, 96, 3) uint8 BGR, emotions (n,)) -> (n, 96, 96, 3) uint8``.
  ``trace_count`` counts how often the function was traced (compiled); it stays 1 for any n.
  """

  def __init__(self, model, variables, batch_size: int = 16):
    import jax
    import jax.numpy as jnp
    if batch_size < 1:
      raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    self.batch_size = int(batch_size)
    self.trace_count = 0
    self.variables = jax.device_put(variables)

    def forward(variables, mel, crops, emotion):
      self.trace_count += 1  # Python side effect: runs only while tracing.
      ref = crops.astype(jnp.float32) / 255.0
      face = jnp.concatenate([jnp.zeros_like(ref), ref], axis=-1)  # [masked target, reference]
      out = model.apply(variables, mel[..., None], face, emotion, train=False)
      return jnp.clip(jnp.round(out.astype(jnp.float32) * 255.0), 0, 255).astype(jnp.uint8)

    # Compiled ahead of time for the one fixed shape: nothing can recompile later, and the
    # compile time is reported apart from the generation speed.
    t0 = time.perf_counter()
    b = self.batch_size
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
    self._forward = jax.jit(forward).lower(
        self.variables, spec((b, 80, 16), jnp.float32), spec((b, FACE_SIZE, FACE_SIZE, 3), jnp.uint8),
        spec((b,), jnp.int32)).compile()
    self.compile_seconds = time.perf_counter() - t0

  def __call__(self, mels: np.ndarray, crops: np.ndarray, emotions: np.ndarray) -> np.ndarray:
    n = len(mels)
    b = self.batch_size
    outs = []
    for s in range(0, n, b):
      m, c, e = mels[s:s + b], crops[s:s + b], emotions[s:s + b]
      k = len(m)
      if k < b:  # pad to the fixed shape so that nothing recompiles
        m = np.concatenate([m, np.zeros((b - k,) + m.shape[1:], m.dtype)])
        c = np.concatenate([c, np.zeros((b - k,) + c.shape[1:], c.dtype)])
        e = np.concatenate([e, np.zeros((b - k,), e.dtype)])
      out = self._forward(self.variables, np.asarray(m, np.float32), np.asarray(c, np.uint8),
                          np.asarray(e, np.int32))
      outs.append(np.asarray(out)[:k])
    return np.concatenate(outs) if outs else np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)


# ---------------------------------------------------------------------------- frames and boxes


@dataclasses.dataclass
class FaceOptions:
  """How source frames are prepared and where the face is (the CLI's flags)."""
  pads: Sequence[int] = DEFAULT_PADS        # top, bottom, left, right (pixels)
  smooth: bool = True                       # average boxes over 5 frames
  resize_factor: int = 1                    # divide the frame size by this first
  crop: Sequence[int] | None = None         # top, bottom, left, right of the frame to keep; -1 = edge
  box: Sequence[int] | None = None          # fixed face box top, bottom, left, right (no detection)
  rotate: bool = False                      # rotate frames 90 degrees clockwise
  static: bool = False                      # use only the first frame as a still
  detector: str = "haar"
  s3fd_weights: str | None = None


def prepare_frames(frames: Sequence[np.ndarray], opts: FaceOptions) -> list[np.ndarray]:
  """Resize (by the factor), rotate, then crop the source frames (the original's order)."""
  if opts.resize_factor < 1:
    raise UserError(f"--resize-factor must be a positive integer, got {opts.resize_factor}")
  if opts.static:
    frames = frames[:1]
  out = []
  for f in frames:
    if opts.resize_factor > 1:
      h, w = f.shape[:2]
      f = cv2.resize(f, (max(1, w // opts.resize_factor), max(1, h // opts.resize_factor)))
    if opts.rotate:
      f = cv2.rotate(f, cv2.ROTATE_90_CLOCKWISE)
    if opts.crop is not None:
      h, w = f.shape[:2]
      top, bottom, left, right = (int(v) for v in opts.crop)
      bottom = h if bottom == -1 else bottom
      right = w if right == -1 else right
      if not (0 <= top < bottom <= h and 0 <= left < right <= w):
        raise UserError(f"--crop {' '.join(map(str, opts.crop))} is outside the {w}x{h} frame; "
                        "give top bottom left right in pixels (-1 = the frame edge)")
      f = f[top:bottom, left:right]
    out.append(np.ascontiguousarray(f))
  return out


def pingpong_index(i: int, n: int) -> int:
  """Source frame of output frame i when n source frames are played forwards, backwards, forwards..."""
  if n <= 1:
    return 0
  period = 2 * n - 2
  j = i % period
  return j if j < n else period - j


def face_boxes_for(frames: Sequence[np.ndarray], opts: FaceOptions, detector=None) -> list[tuple]:
  """One (x1, y1, x2, y2) box per frame: the fixed --box, or detected, padded and smoothed.

  Raises NoFaceError for the first frame without a face (nothing is interpolated silently).
  """
  if opts.box is not None:
    top, bottom, left, right = (int(v) for v in opts.box)
    h, w = frames[0].shape[:2]
    if not (0 <= top < bottom <= h and 0 <= left < right <= w):
      raise UserError(f"--box {top} {bottom} {left} {right} is outside the {w}x{h} frame; give "
                      "top bottom left right in pixels of the (resized/rotated/cropped) frame")
    return [(left, top, right, bottom)] * len(frames)
  if detector is None:
    detector = face_detection.make_detector(opts.detector, weights=opts.s3fd_weights)
  if len(opts.pads) != 4:
    raise UserError(f"--pads takes 4 numbers (top bottom left right), got {list(opts.pads)}")
  dets = detector.detect(list(frames))
  boxes = []
  for k, (frame, b) in enumerate(zip(frames, dets)):
    if b is None:
      raise NoFaceError(k, frame)
    boxes.append(face_detection.pad_box(b, tuple(int(p) for p in opts.pads), frame.shape))
  if opts.smooth:
    boxes = face_detection.smooth_boxes(boxes, 5)
  return boxes


def paste(frame: np.ndarray, face: np.ndarray, box) -> np.ndarray:
  """A copy of ``frame`` with the 96x96 ``face`` resized into ``box`` (x1, y1, x2, y2)."""
  x1, y1, x2, y2 = box
  out = frame.copy()
  out[y1:y2, x1:x2] = cv2.resize(face, (x2 - x1, y2 - y1))
  return out


def label(frame: np.ndarray, text: str) -> np.ndarray:
  """Writes ``text`` in the top-left corner, white on a dark band, scaled to the frame."""
  out = frame.copy()
  h = out.shape[0]
  scale = max(0.35, h / 480.0)
  thick = max(1, int(round(scale * 2)))
  (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
  cv2.rectangle(out, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), -1)
  cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
              cv2.LINE_AA)
  return out


# ---------------------------------------------------------------------------- the core


@dataclasses.dataclass
class Job:
  """Everything needed to render: prepared frames, boxes, crops, mel chunks and emotions."""
  frames: list            # prepared source frames (BGR uint8)
  boxes: list             # one box per source frame
  crops: np.ndarray       # (num_source, 96, 96, 3) uint8
  mel_chunks: np.ndarray  # (num_output, 80, 16)
  emotions: list          # label ids; several -> side by side
  fps: float

  @property
  def num_frames(self) -> int:
    return len(self.mel_chunks)

  def source_index(self, i: int) -> int:
    return pingpong_index(i, len(self.frames))


def make_job(frames: Sequence[np.ndarray], fps: float, wav: np.ndarray, emotions: Sequence[int],
             opts: FaceOptions, detector=None) -> Job:
  """Prepares frames, mel chunks (audio must cover one 16-step window) and face boxes/crops."""
  if not frames:
    raise UserError("no face frame was given")
  mel = audio_lib.melspectrogram(np.asarray(wav, np.float32))
  chunks = timing.inference_mel_chunks(mel, fps)  # UserError when shorter than one window
  frames = prepare_frames(frames, opts)
  # Only the source frames the output uses need a face (a short audio uses a prefix).
  frames = frames[:min(len(frames), len(chunks))]
  boxes = face_boxes_for(frames, opts, detector)
  crops = np.stack([face_detection.crop_face(f, b, FACE_SIZE) for f, b in zip(frames, boxes)])
  return Job(frames=list(frames), boxes=boxes, crops=crops, mel_chunks=chunks,
             emotions=list(emotions), fps=float(fps))


def render_frames(renderer: Renderer, job: Job, progress: bool = True) -> Iterator[np.ndarray]:
  """Yields the output frames (BGR uint8) in order; several emotions are placed side by side."""
  from tqdm import tqdm
  num_emo = len(job.emotions)
  # Items are (output frame, emotion) pairs; a batch holds whole output frames where it can.
  per_batch = max(1, renderer.batch_size // num_emo)
  bar = tqdm(total=job.num_frames, unit="frame", desc="generating", disable=not progress,
             file=sys.stderr)
  try:
    for s in range(0, job.num_frames, per_batch):
      idx = range(s, min(s + per_batch, job.num_frames))
      src = [job.source_index(i) for i in idx]
      mels = np.repeat(job.mel_chunks[s:s + len(idx)], num_emo, axis=0)
      crops = np.repeat(job.crops[src], num_emo, axis=0)
      emos = np.tile(np.asarray(job.emotions, np.int32), len(idx))
      faces = renderer(mels, crops, emos).reshape((len(idx), num_emo, FACE_SIZE, FACE_SIZE, 3))
      for k, j in enumerate(src):
        panels = [paste(job.frames[j], faces[k, e], job.boxes[j]) for e in range(num_emo)]
        if num_emo > 1:
          panels = [label(p, f"{EMOTIONS[em]} {EMOTION_NAMES[em]}") for p, em in zip(panels, job.emotions)]
        yield np.concatenate(panels, axis=1) if num_emo > 1 else panels[0]
      bar.update(len(idx))
  finally:
    bar.close()
