"""The inference core: a face video or image + any speech audio -> generated frames.

Per docs/design.md "Time rules" and "Data flow": one face box per frame (pads top, bottom, left, right; averaged over a
5-frame window unless --nosmooth), crops resized to 96x96, generator input = [zeros, the frame's
own crop], mel chunk i starts at int(i * 80 / fps) (the last one aligned to the end of the audio),
the generated crop is feathered (``--blend feather``, default) or pasted as the original's hard
rectangle (``--blend box``) back into the frame and the audio is muxed with ffmpeg. Frames without
a face pass through unchanged (``--on-no-face keep``, default; short gaps between two faces get
interpolated boxes) or stop the run (``--on-no-face error``).

When the audio is longer than the video, the video is played forwards then backwards
("ping-pong") so that the loop has no jump; frame i of the output shows source frame
``pingpong_index(i, num_frames)``. ``--emotion all`` renders the six emotions side by side.

The core (``Renderer``, ``Source``, ``render_stream``, which streams through
``emogen_jax.inference.stream`` in constant memory) is shared with the command line
(``emogen_jax.inference.cli``) and the notebook API (``emogen_jax.inference.api``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import sys
import time
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from emogen_jax.data import audio as audio_lib
from emogen_jax.data import emotions as emotions_lib
from emogen_jax.data.emotions import parse_emotions  # noqa: F401  (part of the core's API)
from emogen_jax.data import face_detection
from emogen_jax.data import timing
from emogen_jax.data import video_io
from emogen_jax.errors import UserError
from emogen_jax.inference import stream
from emogen_jax.inference.stream import pingpong_index  # noqa: F401  (part of the core's API)
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


BLENDS = ("feather", "box")
FEATHER_FRACTION = 0.15  # feather width as a share of the box's shorter side


@dataclasses.dataclass
class FaceOptions:
  """How source frames are prepared, where the face is and how it goes back (the CLI's flags)."""
  pads: Sequence[int] = DEFAULT_PADS        # top, bottom, left, right (pixels)
  smooth: bool = True                       # average boxes over 5 frames
  resize_factor: int = 1                    # divide the frame size by this first
  crop: Sequence[int] | None = None         # top, bottom, left, right of the frame to keep; -1 = edge
  box: Sequence[int] | None = None          # fixed face box top, bottom, left, right (no detection)
  rotate: bool = False                      # rotate frames 90 degrees clockwise
  static: bool = False                      # use only the first frame as a still
  detector: str = "haar"
  detect_every: int = 1                     # run the detector on every k-th frame (and the last)
  search: str = "track"                     # track: near the face before; full: every whole frame
  s3fd_weights: str | None = None
  on_no_face: str = "keep"                  # keep: pass faceless frames through; error: stop
  blend: str = "feather"                    # feather: soft-edged paste; box: the hard rectangle

  def check(self) -> None:
    """One-line errors for values no frame can satisfy (``check_face_options``)."""
    check_face_options(self)


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
  if int(opts.detect_every) < 1:
    raise UserError(f"--detect-every must be a positive integer (1: every frame), got "
                    f"{opts.detect_every}")
  if opts.search not in face_detection.SEARCHES:
    raise UserError(f"--search must be one of {', '.join(face_detection.SEARCHES)}, got {opts.search!r}")
  if opts.on_no_face not in stream.ON_NO_FACE:
    raise UserError(f"--on-no-face must be one of {', '.join(stream.ON_NO_FACE)}, "
                    f"got {opts.on_no_face!r}")
  if opts.blend not in BLENDS:
    raise UserError(f"--blend must be one of {', '.join(BLENDS)}, got {opts.blend!r}")


def check_frame_size(opts: FaceOptions, frame_shape) -> None:
  """resize_factor must leave a frame big enough to find a face in (else 'no face' would mislead)."""
  h, w = frame_shape[:2]
  f = int(opts.resize_factor)
  if f > 1 and min(h, w) // f < MIN_FRAME_SIDE:
    raise UserError(f"--resize-factor {f} shrinks the {w}x{h} frame to {w // f}x{h // f}, too "
                    f"small for a face (short side under {MIN_FRAME_SIDE} px); use at most "
                    f"{max(1, min(h, w) // MIN_FRAME_SIDE)}")


def prepare_frame(f: np.ndarray, opts: FaceOptions) -> np.ndarray:
  """Resize (by the factor), rotate, then crop one source frame (the original's order)."""
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
  return np.ascontiguousarray(f)


def prepare_frames(frames: Sequence[np.ndarray], opts: FaceOptions) -> list[np.ndarray]:
  """``prepare_frame`` over a list (only the first frame with ``static``)."""
  opts.check()
  return [prepare_frame(f, opts) for f in (frames[:1] if opts.static else frames)]


def fixed_box(opts: FaceOptions, shape) -> tuple:
  """The --box (top, bottom, left, right) as (x1, y1, x2, y2), checked against the frame ``shape``."""
  top, bottom, left, right = (int(v) for v in opts.box)
  h, w = shape[:2]
  if not (0 <= top < bottom <= h and 0 <= left < right <= w):
    raise UserError(f"--box {top} {bottom} {left} {right} is outside the {w}x{h} frame; give "
                    "top bottom left right in pixels of the (resized/rotated/cropped) frame")
  return (left, top, right, bottom)


def face_boxes_for(frames: Sequence[np.ndarray], opts: FaceOptions, detector=None) -> list:
  """One (x1, y1, x2, y2) box per frame (None: passed through), by the rules of the stream.

  With ``on_no_face="error"`` the first frame without a face raises NoFaceError.
  """
  opts.check()
  if opts.box is not None:
    return [fixed_box(opts, f.shape) for f in frames]
  if detector is None:
    detector = face_detection.make_detector(opts.detector, weights=opts.s3fd_weights)
  out = []
  for k, (f, box, status, _) in enumerate(stream.tracked_boxes(frames, opts, detector, DEFAULT_IMAGE_FPS)):
    if box is None and opts.on_no_face == "error":
      raise NoFaceError(k, f)
    out.append(box)
  return out


@functools.lru_cache(maxsize=64)
def feather_mask(w: int, h: int) -> np.ndarray:
  """(h, w, 1) float32 weights of the generated face: 1 inside, a linear ramp to 0 at the border.

  The ramp is FEATHER_FRACTION of the shorter side wide, so the pasted face fades into the source
  frame instead of ending at a hard rectangle; every pixel outside the box keeps the source.
  """
  f = max(1.0, FEATHER_FRACTION * min(w, h))
  ramp = lambda n: np.clip((np.minimum(np.arange(n), np.arange(n)[::-1]) + 0.5) / f, 0.0, 1.0)
  return (ramp(h)[:, None] * ramp(w)[None, :]).astype(np.float32)[..., None]


def paste(frame: np.ndarray, face: np.ndarray, box, blend: str = "feather") -> np.ndarray:
  """A copy of ``frame`` with the 96x96 ``face`` resized into ``box`` (x1, y1, x2, y2).

  ``blend="box"`` replaces the rectangle; ``"feather"`` mixes it in with ``feather_mask``.
  """
  x1, y1, x2, y2 = box
  out = frame.copy()
  face = cv2.resize(face, (x2 - x1, y2 - y1))
  if blend == "box":
    out[y1:y2, x1:x2] = face
  else:
    m = feather_mask(x2 - x1, y2 - y1)
    src = out[y1:y2, x1:x2].astype(np.float32)
    out[y1:y2, x1:x2] = np.clip(np.rint(src + m * (face.astype(np.float32) - src)), 0, 255).astype(np.uint8)
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


def emotion_label(frame: np.ndarray, emotion: np.ndarray) -> np.ndarray:
  return label(frame, emotions_lib.describe(emotion))


# ---------------------------------------------------------------------------- the core


@dataclasses.dataclass
class Source:
  """Where the face frames come from: ``open()`` gives a fresh iterator over them (BGR uint8).

  ``header_frames`` is the count the container announces (None: unknown, e.g. frames in memory).
  """
  open: Callable[[], Iterator[np.ndarray]]
  fps: float
  header_frames: int | None = None

  @classmethod
  def of_frames(cls, frames: Sequence[np.ndarray], fps: float) -> Source:
    if not len(frames):
      raise UserError("no face frame was given")
    return cls(open=lambda: iter(frames), fps=float(fps), header_frames=len(frames))

  @classmethod
  def of_path(cls, path: str, image_fps: float | None = None) -> Source:
    """A video (its own rate; ``image_fps`` must agree when given) or a still image (``image_fps``)."""
    frames_of, fps, count = video_io.open_face_input(path)
    if fps is None:
      fps = image_fps or DEFAULT_IMAGE_FPS
    elif image_fps is not None and abs(image_fps - fps) > 1e-3:
      raise UserError(f"--fps {image_fps:g} given for a {fps:g} fps video; --fps is for still images. "
                      f"Convert the video first (ffmpeg -i {path} -r {image_fps:g} face.mp4)")
    return cls(open=frames_of, fps=float(fps), header_frames=count)


def render_stream(renderer: Renderer, source: Source, wav: np.ndarray, emotions: Sequence[int],
                  opts: FaceOptions, detector=None, stats: stream.StreamStats | None = None,
                  progress: bool = True, on_missing_error=None) -> Iterator[np.ndarray]:
  """Output frames (BGR uint8) in order, streamed: memory stays constant whatever the length.

  Decoding + detection run in one thread, the generator in another, the caller pastes (see
  ``emogen_jax.inference.stream``). ``stats`` is filled as the stream goes (counts of faces
  found, interpolated, passed through, ...). Several emotions are placed side by side.
  """
  from tqdm import tqdm
  opts.check()
  check_frame_size(opts, next(iter(source.open())).shape)
  mel = audio_lib.melspectrogram(np.asarray(wav, np.float32))
  starts = timing.inference_chunk_starts(mel.shape[1], source.fps)  # UserError when too short
  mel_chunk = lambda i: mel[:, starts[i]:starts[i] + timing.MEL_WINDOW]
  num_out = len(starts)
  if opts.box is None and detector is None:
    detector = face_detection.make_detector(opts.detector, weights=opts.s3fd_weights)
  if on_missing_error is None:
    def on_missing_error(k, frame):
      raise NoFaceError(k, frame)
  open_frames = source.open
  if opts.static:
    open_frames = lambda: itertools.islice(source.open(), 1)
  items = stream.source_items(
      open_frames, lambda f: prepare_frame(f, opts), mel_chunk, num_out, opts, detector,
      source.fps, header_frames=1 if opts.static else source.header_frames, stats=stats,
      fixed_box=None if opts.box is None else lambda f: fixed_box(opts, f.shape),
      on_missing_error=on_missing_error)
  # Look-ahead of two batches on each side of the generator: it never waits for a frame, and
  # no more than a few batches of frames are alive at any time.
  per_batch = max(1, renderer.batch_size // len(emotions))
  items = stream.prefetch(items, 2 * per_batch)
  batches = stream.prefetch(stream.generated(renderer, items, emotions), 2)
  bar = tqdm(total=num_out, unit="frame", desc="generating", disable=not progress, file=sys.stderr)
  try:
    for frame in stream.composed(batches, emotions, lambda f, face, b: paste(f, face, b, opts.blend),
                                 emotion_label):
      bar.update(1)
      yield frame
  finally:
    bar.close()
    batches.close()
    items.close()
