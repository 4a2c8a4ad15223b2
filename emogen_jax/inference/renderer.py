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
from emogen_jax.data import emotions as emotions_lib
from emogen_jax.data import timing
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


def parse_emotions(emotion) -> list[np.ndarray]:
  """'HAP' / 'happy' -> [its one-hot (6,)]; 'HAP:0.6,NEU:0.4' -> [the weighted vector]; 'all' ->
  the six one-hots in EMOTIONS order (rendered side by side); unknown -> one-line UserError."""
  return emotions_lib.parse_emotions(emotion)


# ---------------------------------------------------------------------------- the model


def load_generator(checkpoint: str, dtype=None):
  """(Generator module, variables, meta) from a converted checkpoint or a training workdir."""
  return checkpoints.load(checkpoint, "generator", dtype=dtype)


class Renderer:
  """Runs the generator with one jitted function of FIXED batch shape (the last batch is padded).

  ``__call__(mels (n, 80, 16), crops (n, 96, 96, 3) uint8 BGR, emotions) -> (n, 96, 96, 3) uint8``,
  emotions: (n,) label ids or (n, 6) weight vectors (a one-hot, or a mix summing to 1).
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
        spec((b, emotions_lib.NUM_EMOTIONS), jnp.float32)).compile()
    self.compile_seconds = time.perf_counter() - t0

  def __call__(self, mels: np.ndarray, crops: np.ndarray, emotions: np.ndarray) -> np.ndarray:
    n = len(mels)
    b = self.batch_size
    emotions = np.asarray(emotions)
    if emotions.ndim == 1:  # label ids -> their one-hot vectors
      emotions = np.eye(emotions_lib.NUM_EMOTIONS, dtype=np.float32)[emotions.astype(np.int64)]
    elif not np.issubdtype(emotions.dtype, np.floating):  # a mix cast to ints would lose its weights
      raise TypeError(f"emotion weight vectors must be floats, got {emotions.dtype}")
    outs = []
    for s in range(0, n, b):
      m, c, e = mels[s:s + b], crops[s:s + b], emotions[s:s + b]
      k = len(m)
      if k < b:  # pad to the fixed shape so that nothing recompiles
        m = np.concatenate([m, np.zeros((b - k,) + m.shape[1:], m.dtype)])
        c = np.concatenate([c, np.zeros((b - k,) + c.shape[1:], c.dtype)])
        e = np.concatenate([e, np.zeros((b - k,) + e.shape[1:], e.dtype)])
      out = self._forward(self.variables, np.asarray(m, np.float32), np.asarray(c, np.uint8),
                          np.asarray(e, np.float32))
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


# A frame whose short side is below this after resize_factor cannot hold a usable face.
MIN_FRAME_SIDE = FACE_SIZE // 2


def _check_box(flag: str, values, edge_ok: bool) -> None:
  """4 pixels top < bottom, left < right, none negative (edge_ok: -1 = the edge for bottom/right)."""
  if values is None:
    return
  if len(values) != 4:
    raise UserError(f"{flag} takes 4 numbers (top bottom left right), got {list(values)}")
  top, bottom, left, right = (int(v) for v in values)
  text = f"{flag} {top} {bottom} {left} {right}"
  edge = lambda v: edge_ok and v == -1
  if min(top, left) < 0 or (bottom < 0 and not edge(bottom)) or (right < 0 and not edge(right)):
    raise UserError(f"{text}: pixels must not be negative" + (" (except -1 = the edge for bottom "
                    "and right)" if edge_ok else ""))
  if (not edge(bottom) and top >= bottom) or (not edge(right) and left >= right):
    raise UserError(f"{text} is inverted or empty: the order is top bottom left right, with "
                    "top < bottom and left < right")


def check_face_options(opts: FaceOptions) -> None:
  """The options that can be checked before any frame is read (one-line UserErrors)."""
  if len(opts.pads) != 4:
    raise UserError(f"--pads takes 4 numbers (top bottom left right), got {list(opts.pads)}")
  if min(int(p) for p in opts.pads) < 0:
    raise UserError(f"--pads {' '.join(str(int(p)) for p in opts.pads)}: pads must not be negative "
                    "(they are pixels ADDED around the detected face: top bottom left right)")
  _check_box("--box", opts.box, edge_ok=False)
  _check_box("--crop", opts.crop, edge_ok=True)
  if int(opts.resize_factor) < 1:
    raise UserError(f"--resize-factor must be a positive integer, got {opts.resize_factor}")


def check_frame_size(opts: FaceOptions, frame_shape) -> None:
  """resize_factor must leave a frame big enough to find a face in (else 'no face' would mislead)."""
  h, w = frame_shape[:2]
  f = int(opts.resize_factor)
  if f > 1 and min(h, w) // f < MIN_FRAME_SIDE:
    raise UserError(f"--resize-factor {f} shrinks the {w}x{h} frame to {w // f}x{h // f}, too "
                    f"small for a face (short side under {MIN_FRAME_SIDE} px); use at most "
                    f"{max(1, min(h, w) // MIN_FRAME_SIDE)}")


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
  emotions: list          # (6,) emotion weight vectors; several -> side by side
  fps: float

  @property
  def num_frames(self) -> int:
    return len(self.mel_chunks)

  def source_index(self, i: int) -> int:
    return pingpong_index(i, len(self.frames))


def make_job(frames: Sequence[np.ndarray], fps: float, wav: np.ndarray, emotions: Sequence,
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
             emotions=[np.asarray(e, np.float32) for e in emotions], fps=float(fps))


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
      emos = np.tile(np.stack(job.emotions), (len(idx), 1))
      faces = renderer(mels, crops, emos).reshape((len(idx), num_emo, FACE_SIZE, FACE_SIZE, 3))
      for k, j in enumerate(src):
        panels = [paste(job.frames[j], faces[k, e], job.boxes[j]) for e in range(num_emo)]
        if num_emo > 1:
          panels = [label(p, emotions_lib.describe(em)) for p, em in zip(panels, job.emotions)]
        yield np.concatenate(panels, axis=1) if num_emo > 1 else panels[0]
      bar.update(len(idx))
  finally:
    bar.close()
