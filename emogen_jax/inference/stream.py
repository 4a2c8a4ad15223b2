"""Streaming inference: decode, detect, generate, paste and encode with memory bounded by a constant.

    source thread     decode -> prepare (resize/rotate/crop) -> detect -> track boxes -> crop
    generator thread  fixed-size batches through the compiled generator, two calls at once
    caller            paste-back (+ labels) and whatever consumes the frames (the ffmpeg pipe)

The stages are joined by bounded queues, so at any time only a few batches of frames are alive
whatever the video's length, and the generator finds its next batch ready (decoding and detection
run while it computes). ``render_stream`` yields the output frames in order; the CLI pipes them to
one ffmpeg process, the notebook API collects them.

Frame/mel schedule (kept from the whole-video path): output frame i uses mel chunk i of
``timing.inference_chunk_starts`` and source frame ``pingpong_index(i, n)``, n = the number of source
frames the output uses. When the audio outlasts the video the source frames are needed again in
reverse order: they are then kept in memory up to 256 MiB, beyond that on disk (lossless PNGs
in a temporary folder).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import os
import queue
import tempfile
import threading
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from emogen_jax.data import face_detection
from emogen_jax.errors import UserError

ON_NO_FACE = ("keep", "error")
MAX_GAP_SECONDS = 0.5   # faceless runs up to this long between two faces get interpolated boxes


# ---------------------------------------------------------------------------- bounded queues


class _Failed:
  """Carries an exception raised in a producer thread to the consumer."""

  def __init__(self, exc: BaseException):
    self.exc = exc


_END = object()


def prefetch(items: Iterable, size: int) -> Iterator:
  """Iterates ``items`` in a thread, at most ``size`` ahead of the caller; re-raises its errors.

  Closing the returned generator (or an error in the caller) stops the thread.
  """
  q: queue.Queue = queue.Queue(maxsize=max(1, int(size)))
  stop = threading.Event()

  def put(x) -> bool:
    while not stop.is_set():
      try:
        q.put(x, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work():
    try:
      for x in items:
        if not put(x):
          return
      put(_END)
    except BaseException as e:  # handed to the consumer, which raises it
      put(_Failed(e))
    finally:
      close = getattr(items, "close", None)
      if close is not None:
        close()

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    while True:
      x = q.get()
      if x is _END:
        return
      if isinstance(x, _Failed):
        raise x.exc
      yield x
  finally:
    stop.set()
    thread.join()


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator[tuple]:
  """(item, fn(item)) for each item, in the items' order, with up to ``workers`` calls running at
  once in threads; reads ``items`` only as far as it needs (a bounded window, not all of them)."""
  workers = max(1, workers)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    window: collections.deque = collections.deque()
    for item in items:
      window.append((item, pool.submit(fn, item)))
      if len(window) >= workers:
        item0, fut = window.popleft()
        yield item0, fut.result()
    while window:
      item0, fut = window.popleft()
      yield item0, fut.result()


# ---------------------------------------------------------------------------- spilled frames


class FrameStore:
  """Source frames kept for the ping-pong loop: in memory up to ``memory_bytes`` (a short clip),
  beyond that as lossless PNGs in a temporary folder, so memory stays bounded for any length."""

  def __init__(self, memory_bytes: int = 256 * 2 ** 20):
    self._dir: tempfile.TemporaryDirectory | None = None
    self._memory: dict = {}
    self._room = int(memory_bytes)

  def _path(self, j: int) -> str:
    return os.path.join(self._dir.name, f"{j:08d}.png")

  def put(self, j: int, frame: np.ndarray) -> None:
    if frame.nbytes <= self._room:
      self._memory[j] = frame
      self._room -= frame.nbytes
      return
    if self._dir is None:
      self._dir = tempfile.TemporaryDirectory(prefix="emogen_frames_")
    ok, buf = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    try:
      with open(self._path(j), "wb") as f:
        f.write(buf.tobytes())
    except OSError as e:
      raise UserError(f"could not write source frame {j} (kept for the loop over the video) in "
                      f"{self._dir.name}: {e.strerror}; free space in the temporary folder") from None

  def get(self, j: int) -> np.ndarray:
    return self._memory[j] if j in self._memory else cv2.imread(self._path(j), cv2.IMREAD_COLOR)

  def close(self) -> None:
    self._memory.clear()
    if self._dir is not None:
      self._dir.cleanup()


# ---------------------------------------------------------------------------- the source stage


@dataclasses.dataclass
class Item:
  """One output frame on its way: source frame, face box (None: passed through), crop, mel."""
  index: int
  source: int
  frame: np.ndarray
  box: tuple | None
  crop: np.ndarray | None
  mel: np.ndarray


@dataclasses.dataclass
class StreamStats:
  """What the stream saw; read after it finished (the CLI reports it)."""
  source_frames: int = 0        # source frames used (decoded, up to the audio's length)
  header_frames: int | None = None
  truncated: bool = False       # fewer frames decoded than the header lists
  found: int = 0                # frames with a face of their own
  between: int = 0              # not run through the detector (detect_every): box interpolated
  interpolated: int = 0         # short faceless gaps: box interpolated between faces
  missing: int = 0              # no face: the source frame passes through unchanged
  multi_face: int = 0           # frames where several faces were found (the largest is used)
  first_multi_face: int | None = None
  output_frames: int = 0

  def warnings(self, face: str = "the face video") -> list[str]:
    out = []
    if self.truncated:
      out.append(f"{face}: only {self.source_frames} frames decode of the {self.header_frames} "
                 "its header lists (a truncated or damaged file); the output uses those")
    if self.multi_face:
      out.append(f"{face}: {self.multi_face} frame(s) show several faces (first: frame "
                 f"{self.first_multi_face}); the largest face is used (--box picks another; "
                 "frames searched only near the face are not counted: --search full counts all)")
    if self.missing:
      out.append(f"{face}: no face in {self.missing} source frame(s): passed through unchanged "
                 "(--on-no-face error stops instead)")
    return out


def pingpong_index(i: int, n: int) -> int:
  """Source frame of output frame i when n source frames are played forwards, backwards, forwards..."""
  if n <= 1:
    return 0
  period = 2 * n - 2
  j = i % period
  return j if j < n else period - j


def _detected(frames: Iterable[np.ndarray], detector, pads, every: int = 1,
              track: bool = True) -> Iterator[tuple]:
  """(frame, padded box or None, faces found) per frame, the detector called on small chunks.

  track: each chunk's first frame is searched whole, the others near the face before
  (``HaarDetector.detect_faces``), so a new larger face is taken up within a chunk.

  every=k: only frames 0, k, 2k, ... and the last go through the detector. A frame between two
  detected ones gets the box interpolated between theirs when both found a face, and None
  faces found (it was not looked at); when either found none it gets no box, a gap that the
  tracker fills or passes through like any faceless frame.
  """
  k = max(1, int(every))
  entries: list = []     # [frame, box, count, detected] in stream order, not yet detected
  last_head = None       # the latest detected entry already emitted (left end of the next span)
  between: list = []     # entries after last_head, waiting for the next detected one

  def detect(heads):
    found = detector.detect_faces([e[0] for e in heads], track=track)
    for e, (b, count) in zip(heads, found):
      e[1] = None if b is None else face_detection.pad_box(b, pads, e[0].shape)
      e[2] = count

  def emit(batch):
    nonlocal last_head
    for e in batch:
      if not e[3]:
        between.append(e)
        continue
      if between:
        if last_head is not None and last_head[1] is not None and e[1] is not None:
          span = len(between) + 1
          for n, m in enumerate(between, 1):
            m[1] = face_detection.interp_box(last_head[1], 0, e[1], span, n)
        yield from ((m[0], m[1], None) for m in between)
        between.clear()
      last_head = e
      yield e[0], e[1], e[2]

  def flush(batch):
    detect([e for e in batch if e[3]])
    yield from emit(batch)

  heads = 0
  for i, f in enumerate(frames):
    entries.append([f, None, 0, i % k == 0])
    heads += i % k == 0
    if heads == face_detection.DETECT_BATCH:
      yield from flush(entries)
      entries, heads = [], 0
  if entries:
    entries[-1][3] = True  # the last frame is always looked at: no span left open at the end
    yield from flush(entries)


def tracked_boxes(frames: Iterable[np.ndarray], opts, detector, fps: float) -> Iterator[tuple]:
  """(frame, box or None, status, faces found) per frame: detected, padded, gaps filled, smoothed.

  ``opts``: the FaceOptions (pads, smooth, on_no_face). Faceless runs of up to MAX_GAP_SECONDS
  between two faces get interpolated boxes unless ``on_no_face == "error"``.
  """
  max_gap = 0 if opts.on_no_face == "error" else int(round(MAX_GAP_SECONDS * fps))
  dets = _detected(frames, detector, tuple(int(p) for p in opts.pads), opts.detect_every,
                   track=opts.search == "track")
  return face_detection.track_boxes(dets, window=5 if opts.smooth else 1, max_gap=max_gap)


def source_items(open_frames: Callable[[], Iterator[np.ndarray]], prepare: Callable,
                 mel_chunk: Callable[[int], np.ndarray], num_out: int, opts, detector, fps: float,
                 *, header_frames: int | None = None, stats: StreamStats | None = None,
                 fixed_box: Callable | None = None, on_missing_error: Callable) -> Iterator[Item]:
  """Output items 0..num_out-1 in order: source frames streamed forwards, then ping-ponged.

  ``open_frames()`` gives a fresh iterator over the source frames (called a second time only when
  a video decodes fewer frames than its header lists and the loop needs them again).
  ``prepare(frame)`` resizes/rotates/crops one frame; ``fixed_box(frame)`` (the --box) replaces
  detection. Faceless frames pass through, or with ``opts.on_no_face == "error"`` the first one
  calls ``on_missing_error(index, frame)``, which raises.
  """
  stats = stats if stats is not None else StreamStats()
  stats.header_frames = header_frames
  # Looping needs the frames again; keep them on disk from the start when it is foreseeable.
  store = FrameStore() if header_frames is None or header_frames < num_out else None
  boxes: list = []

  def prepared(frames):
    for f in itertools.islice(frames, num_out):  # a short audio uses a prefix of the video
      yield prepare(f)

  try:
    frames = prepared(open_frames())
    if fixed_box is not None:
      tracked = ((f, fixed_box(f), "found", 1) for f in frames)
    else:
      tracked = tracked_boxes(frames, opts, detector, fps)
    n = 0
    for j, (frame, box, status, count) in enumerate(tracked):
      if box is None and opts.on_no_face == "error":
        on_missing_error(j, frame)
      if count is not None and count > 1:
        stats.multi_face += 1
        stats.first_multi_face = j if stats.first_multi_face is None else stats.first_multi_face
      if count is None and status == "found":
        status = "between"  # not run through the detector (detect_every > 1)
      setattr(stats, status, getattr(stats, status) + 1)
      boxes.append(box)
      if store is not None:
        store.put(j, frame)
      n = stats.source_frames = j + 1
      yield _item(j, j, frame, box, mel_chunk)
    if n == 0:
      raise UserError("the face input has no readable frame")
    # The decoder ran to its end (not cut by the audio) with fewer frames than announced.
    stats.truncated = bool(header_frames) and n < min(header_frames, num_out)
    if num_out > n:
      if store is None:  # the header promised enough frames: decode the ones there are again
        store = FrameStore()
        for j, f in enumerate(itertools.islice(prepared(open_frames()), n)):
          store.put(j, f)
      for i in range(n, num_out):
        j = pingpong_index(i, n)
        yield _item(i, j, store.get(j), boxes[j], mel_chunk)
    stats.output_frames = num_out
  finally:
    if store is not None:
      store.close()


def _item(i: int, j: int, frame: np.ndarray, box, mel_chunk) -> Item:
  crop = None if box is None else face_detection.crop_face(frame, box, 96)
  return Item(index=i, source=j, frame=frame, box=box, crop=crop, mel=mel_chunk(i))


# ---------------------------------------------------------------------------- generation


# Generator calls in flight at once, each in its own thread. On a CPU one call leaves part of the
# cores idle (host work around it, chains of small kernels): at full width two calls at once
# generate ~1.25x the frames per second of one after the other, the same faces to the bit
# (docs/design.md "CPU speed"). Each call keeps the compiled batch size.
GENERATOR_CALLS = 2


def generated(renderer, items: Iterable[Item], emotions: Sequence[int],
              calls: int = GENERATOR_CALLS) -> Iterator[list]:
  """Batches of (item, faces (num_emotions, 96, 96, 3) or None), in order; faces batched at the
  fixed size, up to ``calls`` generator calls running at once.

  A batch holds ``batch_size // num_emotions`` output frames with a face (each once per emotion),
  as the whole-video path did; faceless items ride along in order without a generator call.
  """
  num_emo = len(emotions)
  per_batch = max(1, renderer.batch_size // num_emo)
  emos = np.stack([np.asarray(e, np.float32) for e in emotions])  # (num_emotions, 6) weights

  def batches() -> Iterator[tuple]:
    """(all items, the items with a face) per generator call."""
    pending: list[Item] = []
    faced: list[Item] = []
    for it in items:
      pending.append(it)
      if it.box is not None:
        faced.append(it)
        if len(faced) == per_batch:
          yield pending, faced
          pending, faced = [], []
    if pending:
      yield pending, faced

  def generate(batch: tuple) -> list:
    pending, faced = batch
    faces = {}
    if faced:
      mels = np.repeat(np.stack([it.mel for it in faced]), num_emo, axis=0)
      crops = np.repeat(np.stack([it.crop for it in faced]), num_emo, axis=0)
      out = renderer(mels, crops, np.tile(emos, (len(faced), 1)))
      out = out.reshape((len(faced), num_emo) + out.shape[1:])
      faces = {it.index: out[k] for k, it in enumerate(faced)}
    return [(it, faces.get(it.index)) for it in pending]

  for _, done in ordered_map(generate, batches(), calls):
    yield done


def composed(batches: Iterable[list], emotions: Sequence[int], paste: Callable,
             label: Callable | None) -> Iterator[np.ndarray]:
  """Output frames: each emotion's face pasted into its source frame, panels side by side."""
  for batch in batches:
    for it, faces in batch:
      if faces is None:
        panels = [it.frame] * len(emotions)
      else:
        panels = [paste(it.frame, faces[e], it.box) for e in range(len(emotions))]
      if len(emotions) > 1:
        panels = [label(p, em) for p, em in zip(panels, emotions)]
        yield np.concatenate(panels, axis=1)
      else:
        yield panels[0]
