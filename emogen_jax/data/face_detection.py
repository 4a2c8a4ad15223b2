"""Face boxes for preprocessing and inference: detectors and the box helpers both share.

Two detectors sit behind one interface, ``make_detector(name, ...)``:

* ``"haar"``: OpenCV's frontal-face Haar cascade (ships inside opencv-python, works
  offline, no weights). Detection runs on a copy of the frame downscaled to at most
  ``max_side`` pixels (the slow part of preprocessing; a 96x96 crop needs no more),
  the largest face is kept. Along a video it can track (``detect_faces(frames, track=True)``):
  each frame is searched near the face of the frame before, a fifth of the cost of a whole search.
* ``"s3fd"``: the S3FD detector used by the original (through the ``face-alignment``
  package), from a weights file the user supplies; nothing is ever downloaded.

``detect(frames_bgr) -> list[box | None]`` with ``box = (x1, y1, x2, y2)`` ints in the
frame's pixel coordinates, ``None`` where no face was found; ``detect_faces`` gives
``(box | None, number of faces found)`` per frame (several: the box is the largest/best one).

Box helpers (same rules as the original's inference): ``pad_box`` with pads
(top, bottom, left, right) clamped to the image, ``smooth_boxes`` (mean over a
5-frame window), ``interpolate_boxes`` (fill frames without a box from their
neighbours), ``track_boxes`` (inference's streaming rule: short gaps filled, runs smoothed)
and ``crop_face`` (crop + resize to 96x96).
"""

from __future__ import annotations

import collections
import os
from typing import Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np

from emogen_jax.errors import UserError

Box = tuple  # (x1, y1, x2, y2) ints

S3FD_FILE = "s3fd-619a316812.pth"
S3FD_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
DETECTORS = ("haar", "s3fd")
# Where the Haar detector looks along a video: near the face of the frame before, or every whole
# frame (detect_faces(track=...)); inference and preprocessing offer both as --search.
SEARCHES = ("track", "full")
DETECT_BATCH = 16  # frames per detector call when streaming (S3FD batches them)


def _cascade(name: str):
  path = os.path.join(cv2.data.haarcascades, name)
  cascade = cv2.CascadeClassifier(path)
  if cascade.empty():  # pragma: no cover - broken OpenCV install
    raise UserError(f"cannot load the Haar cascade {path}; reinstall opencv-python")
  return cascade


class HaarDetector:
  """OpenCV Haar cascade, largest face per frame.

  Tuned on CREMA-D-like frames (one frontal face, 480x360): the frame is downscaled
  to ``max_side`` (320 keeps a face of ~100 px, plenty for a 96 px crop, and runs
  ~2x faster than full size), histogram-equalised (robust to dim studio light), and
  ``min_neighbors=5`` rejects most background false positives at that scale; a fine
  ``scale_factor=1.05`` pyramid keeps faces with unusual expressions (wide eyes, raised
  brows) that 1.1 misses in ~15% of frames; faces
  smaller than 10% of the short side are not searched for (talking-head framing; it
  saves about a third of the cost).
  Haar boxes are tight around eyes-to-mouth; ``expand`` grows them about the centre
  so that the chin and forehead are in the crop like S3FD's boxes.
  Frames where this finds nothing (0.3 % of the synthetic corpus' frames) are searched
  again with each of ``fallbacks`` in turn, (cascade file, scale factor, min neighbours):
  a finer pyramid of the same cascade, then OpenCV's "alt2" cascade; they cost nothing on
  frames the first pass finds (see scripts/bench_face_finding.py for the figures).
  """

  FALLBACKS = (("haarcascade_frontalface_default.xml", 1.03, 5),
               ("haarcascade_frontalface_alt2.xml", 1.05, 3))
  NEAR_MARGIN = 0.5   # detect_near: the region searched extends this much of the box each side
  NEAR_SCALE = 1.3    # detect_near: faces from 1/1.3 to 1.3 times the previous face's size

  def __init__(self, max_side: int = 320, scale_factor: float = 1.05, min_neighbors: int = 5,
               min_size_frac: float = 0.1, expand: float = 1.15, fallbacks=FALLBACKS):
    self.cascade = _cascade("haarcascade_frontalface_default.xml")
    self.fallbacks = [(_cascade(name), sf, mn) for name, sf, mn in fallbacks]
    self.max_side = max_side
    self.scale_factor = scale_factor
    self.min_neighbors = min_neighbors
    self.min_size_frac = min_size_frac
    self.expand = expand

  def detect_one(self, frame: np.ndarray) -> Optional[Box]:
    return self.detect_counted(frame)[0]

  def _gray(self, frame: np.ndarray) -> tuple:
    """The frame as the cascade sees it: grayscale, downscaled to max_side, equalised; and the scale."""
    h, w = frame.shape[:2]
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    scale = min(1.0, self.max_side / max(h, w))
    if scale < 1.0:
      gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                        interpolation=cv2.INTER_AREA)
    return cv2.equalizeHist(gray), scale

  def _pick(self, faces, weights, scale: float, offset, shape) -> tuple:
    """(the largest confident face as a frame box, how many confident faces); (None, 0) if none."""
    if len(faces) == 0:
      return None, 0
    # Largest face among the confident ones: a weak background hit can be bigger than
    # the real face, so candidates scoring under half the best score are dropped first.
    weights = np.asarray(weights, np.float64).reshape(-1)
    best = weights.max()
    keep = [f for f, wt in zip(faces, weights) if wt >= best - 0.5 * abs(best)]
    x, y, bw, bh = np.asarray(max(keep, key=lambda r: r[2] * r[3]), np.float64)
    x, y, bw, bh = (x + offset[0]) / scale, (y + offset[1]) / scale, bw / scale, bh / scale
    cx, cy = x + bw / 2, y + bh / 2
    bw, bh = bw * self.expand, bh * self.expand
    return clamp_box((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), shape), len(keep)

  def detect_counted(self, frame: np.ndarray) -> tuple:
    """(the largest confident face's box or None, how many confident faces were found)."""
    gray, scale = self._gray(frame)
    min_size = max(16, int(self.min_size_frac * min(gray.shape)))
    for cascade, sf, mn in [(self.cascade, self.scale_factor, self.min_neighbors)] + self.fallbacks:
      faces, _, weights = cascade.detectMultiScale3(gray, scaleFactor=sf, minNeighbors=mn,
                                                    minSize=(min_size, min_size),
                                                    outputRejectLevels=True)
      if len(faces):
        break
    return self._pick(faces, weights, scale, (0, 0), frame.shape)

  def detect_near(self, frame: np.ndarray, previous: Box) -> tuple:
    """The face near ``previous`` (a box of the frame before): (box, count) or (None, 0).

    Only the region around the previous box (NEAR_MARGIN of its size on each side) is searched,
    and only for faces from 1/NEAR_SCALE to NEAR_SCALE times its size: the same cascade and
    pyramid steps, a small part of the windows (~6 against ~32 ms per 480x360 frame).
    """
    gray, scale = self._gray(frame)
    gh, gw = gray.shape
    x1, y1, x2, y2 = (v * scale for v in previous)
    mx, my = self.NEAR_MARGIN * (x2 - x1), self.NEAR_MARGIN * (y2 - y1)
    rx1, ry1 = max(0, int(x1 - mx)), max(0, int(y1 - my))
    rx2, ry2 = min(gw, int(np.ceil(x2 + mx))), min(gh, int(np.ceil(y2 + my)))
    raw = min(x2 - x1, y2 - y1) / self.expand  # the cascade's own box is smaller than ours
    lo = max(16, int(self.min_size_frac * min(gh, gw)), int(raw / self.NEAR_SCALE))
    hi = int(np.ceil(raw * self.NEAR_SCALE))
    if hi < lo or min(rx2 - rx1, ry2 - ry1) < lo:
      return None, 0
    faces, _, weights = self.cascade.detectMultiScale3(
        gray[ry1:ry2, rx1:rx2], scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
        minSize=(lo, lo), maxSize=(hi, hi), outputRejectLevels=True)
    return self._pick(faces, weights, scale, (rx1, ry1), frame.shape)

  def detect_faces(self, frames: Sequence[np.ndarray], track: bool = False) -> list:
    """(box | None, faces found) per frame.

    track=True: the frames are consecutive (or evenly spaced) frames of one video. The first is
    searched whole; each next one near the previous frame's face (``detect_near``), and whole
    again where the face is not there. A larger face entering the picture is taken up at the
    next call's first frame, and faces elsewhere are not counted on the frames searched near.
    """
    out, previous = [], None
    for f in frames:
      found = self.detect_near(f, previous) if track and previous is not None else (None, 0)
      if found[0] is None:
        found = self.detect_counted(f)
      out.append(found)
      previous = found[0]
    return out

  def detect(self, frames: Sequence[np.ndarray]) -> list:
    return [b for b, _ in self.detect_faces(frames)]


def _load_problem(e: Exception) -> str:
  """One short clause for a failed weights load: torch lists every key it missed, kilobytes long."""
  text = str(e)
  if "state_dict" in text:
    counts = [f"{text.split(label, 1)[1].split(chr(10), 1)[0].count(chr(34)) // 2} {word}"
              for label, word in (("Missing key(s) in state_dict:", "missing"),
                                  ("Unexpected key(s) in state_dict:", "unexpected"))
              if label in text]
    return "not S3FD weights: " + (", ".join(counts) + " tensor names" if counts
                                   else "tensor shapes differ")
  first = (text.strip().splitlines() or [type(e).__name__])[0]
  return f"{type(e).__name__}: {first[:150]}"


class S3FDDetector:
  """S3FD through face-alignment, weights from a local file; the largest face per frame."""

  def __init__(self, weights: str, device: str = "cpu", batch_size: int = 16,
               threshold: float = 0.5, max_side: int = 480):
    try:
      import torch
      from face_alignment.detection.sfd import sfd_detector
    except ImportError as e:
      raise UserError("the s3fd detector needs torch and face-alignment: "
                      "pip install -e '.[torch]' (or use --detector haar)") from e
    try:
      self.detector = sfd_detector.SFDDetector(device=device, path_to_detector=weights,
                                               filter_threshold=threshold)
    except Exception as e:
      raise UserError(f"cannot load S3FD weights from {weights} ({_load_problem(e)}); expected the "
                      f"file {S3FD_FILE} from {S3FD_URL}") from None
    self.torch = torch
    self.device = device
    self.batch_size = batch_size
    self.max_side = max_side

  def detect(self, frames: Sequence[np.ndarray]) -> list:
    return [b for b, _ in self.detect_faces(frames)]

  def detect_faces(self, frames: Sequence[np.ndarray], track: bool = False) -> list:
    """(largest box or None, number of faces over the threshold) per frame.

    ``track`` is accepted for the common interface and changes nothing: S3FD looks at whole
    frames, many at once.
    """
    out = []
    for i in range(0, len(frames), self.batch_size):
      chunk = frames[i:i + self.batch_size]
      h, w = chunk[0].shape[:2]
      scale = min(1.0, self.max_side / max(h, w))
      small = [cv2.resize(f, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
               if scale < 1.0 else f for f in chunk]
      # face-alignment's batch_detect expects RGB (it flips to BGR itself).
      rgb = np.stack([f[:, :, ::-1] for f in small]).transpose(0, 3, 1, 2)
      batch = self.torch.from_numpy(np.ascontiguousarray(rgb)).float()
      for dets in self.detector.detect_from_batch(batch):
        if len(dets) == 0:
          out.append((None, 0))
          continue
        best = max(dets, key=lambda d: (d[2] - d[0]) * (d[3] - d[1]))
        out.append((clamp_box(np.asarray(best[:4]) / scale, (h, w)), len(dets)))
    return out


def make_detector(name: str = "haar", weights: Optional[str] = None, device: str = "cpu",
                  batch_size: int = 16, **kwargs):
  """A face detector by name: "haar" (offline default) or "s3fd" (needs ``weights``)."""
  if name == "haar":
    return HaarDetector(**kwargs)
  if name == "s3fd":
    if not weights:
      raise UserError(f"the s3fd detector needs its weights file {S3FD_FILE} (download it from "
                      f"{S3FD_URL} and pass its path, e.g. --s3fd-weights {S3FD_FILE}); "
                      "--detector haar works offline without weights")
    if not os.path.isfile(weights):
      raise UserError(f"S3FD weights file {weights} not found; download {S3FD_FILE} from "
                      f"{S3FD_URL}, or use --detector haar (offline)")
    return S3FDDetector(weights, device=device, batch_size=batch_size, **kwargs)
  raise UserError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")


# ---------------------------------------------------------------------------- box helpers


def clamp_box(box, shape) -> Box:
  """Rounds (x1, y1, x2, y2) to ints inside an image of ``shape`` (h, w, ...), at least 1 px."""
  h, w = shape[:2]
  x1, y1, x2, y2 = (int(round(float(v))) for v in box)
  x1 = min(max(0, x1), w - 1)
  y1 = min(max(0, y1), h - 1)
  x2 = min(max(x1 + 1, x2), w)
  y2 = min(max(y1 + 1, y2), h)
  return (x1, y1, x2, y2)


def pad_box(box, pads, shape) -> Box:
  """Grows a box by ``pads`` = (top, bottom, left, right) pixels, clamped to the image."""
  top, bottom, left, right = pads
  x1, y1, x2, y2 = box
  return clamp_box((x1 - left, y1 - top, x2 + right, y2 + bottom), shape)


def interpolate_boxes(boxes: Sequence[Optional[Box]]) -> list:
  """Fills ``None`` boxes by linear interpolation between the nearest found ones.

  Frames before the first (after the last) found box copy it. All ``None`` -> all ``None``.
  """
  known = [i for i, b in enumerate(boxes) if b is not None]
  if not known:
    return [None] * len(boxes)
  arr = np.asarray([boxes[i] for i in known], np.float64)
  idx = np.arange(len(boxes))
  cols = [np.interp(idx, known, arr[:, k]) for k in range(4)]
  return [tuple(int(round(c[i])) for c in cols) for i in idx]


def smooth_boxes(boxes: Sequence[Box], window: int = 5) -> list:
  """Mean of each box with the following ``window - 1`` ones (the original's smoothing).

  Like the original, frame i averages boxes[i:i+window]; the last frames, which lack
  ``window`` successors, use the final ``window`` boxes. Unlike the original this is
  not done in place (the tail windows average raw, not already smoothed, boxes).
  """
  n = len(boxes)
  if n == 0 or window <= 1:
    return [tuple(int(v) for v in b) for b in boxes]
  arr = np.asarray(boxes, np.float64)
  w = min(window, n)
  out = []
  for i in range(n):
    s = min(i, n - w)
    out.append(tuple(int(v) for v in np.mean(arr[s:s + w], axis=0)))
  return out


def boxes_with_gaps(raw: Sequence[Optional[Box]], window: int = 5, max_gap: int = 0) -> list:
  """The whole-list rule ``track_boxes`` streams: (box or None, status) per frame.

  Runs of at most ``max_gap`` frames without a box BETWEEN two boxes get linearly interpolated
  boxes ("interpolated"); other frames without a box stay None ("missing"). Each run of
  consecutive boxes is then smoothed on its own by ``smooth_boxes(run, window)``; with no gap
  at all this is exactly ``smooth_boxes(raw, window)``.
  """
  n = len(raw)
  boxes = list(raw)
  status = ["found" if b is not None else "missing" for b in raw]
  known = [i for i, b in enumerate(raw) if b is not None]
  for a, b in zip(known[:-1], known[1:]):
    if 1 < b - a <= max_gap + 1:
      for i in range(a + 1, b):
        boxes[i] = interp_box(raw[a], a, raw[b], b, i)
        status[i] = "interpolated"
  out, i = [], 0
  while i < n:
    if boxes[i] is None:
      out.append(None)
      i += 1
      continue
    j = i
    while j < n and boxes[j] is not None:
      j += 1
    out.extend(smooth_boxes(boxes[i:j], window))
    i = j
  return list(zip(out, status))


def interp_box(b0, i0: int, b1, i1: int, i: int) -> Box:
  """The box of frame i on the straight line from b0 (frame i0) to b1 (frame i1), in pixels."""
  return tuple(int(round(float(np.interp(i, [i0, i1], [v0, v1])))) for v0, v1 in zip(b0, b1))


def track_boxes(detections: Iterable[tuple], window: int = 5, max_gap: int = 0) -> Iterator[tuple]:
  """Streams ``boxes_with_gaps``: (item, box, count) in -> (item, box or None, status, count) out.

  Holds at most ``max_gap + window`` items (the look-ahead the gap filling and the smoothing
  window need), so any number of frames streams through in constant memory.
  """
  buf: collections.deque = collections.deque()  # [item, box, status, count]; status None = open gap
  hist: collections.deque = collections.deque(maxlen=max(1, window - 1))  # emitted boxes of the run
  run_len = 0        # boxes emitted in the current run of consecutive boxes
  last = None        # (index, box) of the latest frame with a box of its own or interpolated
  gap: list = []     # buffer entries of the open faceless run, still waiting for a box
  gap_len = 0        # length of the current faceless run (also the part already closed)
  index = 0
  ended = False

  def close_gap(fill_to=None):
    for e in gap:
      if fill_to is None:
        e[1], e[2] = None, "missing"
      else:
        e[1], e[2] = interp_box(last[1], last[0], fill_to[1], fill_to[0], e[4]), "interpolated"
    gap.clear()

  def emit_ready():
    nonlocal run_len
    while buf:
      e = buf[0]
      if e[2] is None:
        return
      if e[1] is None:
        buf.popleft()
        hist.clear()
        run_len = 0
        yield e[0], None, e[2], e[3]
        continue
      # The window of the smoothing: e and the boxes after it, up to the run's end.
      ahead = []
      run_end = False
      for f in buf:
        if f[2] is None:
          break
        if f[1] is None:
          run_end = True
          break
        ahead.append(f[1])
        if len(ahead) == window:
          break
      else:
        run_end = ended
      if len(ahead) < window and not run_end:
        return
      seq = list(hist) + ahead
      p = len(hist)
      w = min(window, run_len + len(ahead)) if run_end else window
      s = min(p, len(seq) - w) if run_end else p
      box = tuple(int(v) for v in np.mean(np.asarray(seq[s:s + w], np.float64), axis=0))
      buf.popleft()
      hist.append(e[1])
      run_len += 1
      yield e[0], box, e[2], e[3]

  for item, box, count in detections:
    entry = [item, box, "found" if box is not None else None, count, index]
    buf.append(entry)
    if box is None:
      gap.append(entry)
      gap_len += 1
      if last is None or gap_len > max_gap:  # before the first face, or too long: no box
        close_gap()
    else:
      if gap:
        close_gap(fill_to=(index, box))
      last = (index, box)
      gap_len = 0
    index += 1
    yield from emit_ready()
  ended = True
  close_gap()
  yield from emit_ready()


def crop_face(frame: np.ndarray, box: Box, size: int = 96) -> np.ndarray:
  """frame[y1:y2, x1:x2] resized to (size, size) (cv2 default bilinear, as the original)."""
  x1, y1, x2, y2 = box
  return cv2.resize(frame[y1:y2, x1:x2], (size, size))


def face_boxes(frames: Iterable[np.ndarray], detector, pads=(0, 10, 0, 0), smooth: bool = True,
               detect_every: int = 1, window: int = 5, track: bool = False):
  """Detect, pad + clamp, fill gaps, smooth: one box per frame and which were detected.

  Returns ``(boxes, found)``: ``boxes`` a list of boxes (``None`` for every frame when no
  face was found anywhere), ``found`` a bool array, False where the frame had no face of
  its own (its box is interpolated from neighbours). With ``detect_every=k`` only every
  k-th frame (and the last) is run through the detector and the rest are interpolated;
  they count as found when both neighbours found a face. ``frames`` may be any iterable
  (a decoder): it is read once and no frame is kept but the latest, so memory does not
  grow with the clip's length. ``track``: the detector searches near the face before
  (``HaarDetector.detect_faces``), each batch of DETECT_BATCH detections starting with a whole frame.
  """
  k = max(1, int(detect_every))
  raw: list = []        # padded box (or None) of each detected frame, None elsewhere
  ok: dict = {}         # detected frame index -> a face was found
  pending: list = []    # (index, frame) waiting for the detector (batched: S3FD runs 16 at once)
  last = None           # (index, frame) of the latest frame not run through the detector

  def flush():
    found = detector.detect_faces([f for _, f in pending], track=track)
    for (i, frame), (b, _) in zip(pending, found):
      raw[i] = None if b is None else pad_box(b, pads, frame.shape)
      ok[i] = b is not None
    pending.clear()

  n = 0
  for i, frame in enumerate(frames):
    raw.append(None)
    n = i + 1
    if i % k == 0:
      pending.append((i, frame))
      last = None
      if len(pending) == DETECT_BATCH:
        flush()
    else:
      last = (i, frame)
  if n == 0:
    return [], np.zeros((0,), bool)
  if last is not None:  # the last frame is always detected
    pending.append(last)
  flush()
  idx = sorted(ok)
  found = np.zeros((n,), bool)
  if k == 1:
    found[:] = [b is not None for b in raw]
  else:
    for a, b in zip(idx[:-1], idx[1:]):
      found[a:b + 1] = ok[a] and ok[b]
      found[a] = ok[a]
    found[idx[-1]] = ok[idx[-1]]
  filled = interpolate_boxes(raw)
  if filled[0] is None:
    return filled, found
  if smooth:
    filled = smooth_boxes(filled, window)
  return filled, found
