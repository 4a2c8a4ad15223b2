"""Face detectors (real OpenCV Haar cascade on real face images) and the box helpers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from emogen_jax.data import face_detection as fd
from emogen_jax.errors import UserError

# skimage's astronaut (512x512): Eileen Collins' face spans about x 174..273, y 64..163.
ASTRONAUT_FACE = (174, 64, 273, 163)


def _astronaut():
  return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


def _iou(a, b):
  ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
  return inter / (area(a) + area(b) - inter)


def test_haar_finds_the_real_face_and_nothing_in_empty_images():
  det = fd.make_detector("haar")
  img = _astronaut()
  noise = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
  boxes = det.detect([img, np.zeros((360, 480, 3), np.uint8), noise,
                      cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR)])
  assert boxes[1] is None and boxes[2] is None and boxes[3] is None
  box = boxes[0]
  assert all(isinstance(v, int) for v in box)
  assert _iou(box, ASTRONAUT_FACE) > 0.6, box
  # The same face in a bigger frame (letterboxed, shifted) is found at the shifted place.
  big = np.zeros((720, 960, 3), np.uint8)
  big[100:612, 300:812] = img
  b2 = det.detect([big])[0]
  shifted = (ASTRONAUT_FACE[0] + 300, ASTRONAUT_FACE[1] + 100, ASTRONAUT_FACE[2] + 300, ASTRONAUT_FACE[3] + 100)
  assert _iou(b2, shifted) > 0.6, b2


def test_haar_min_face_skips_small_faces_and_finds_large_ones_alike():
  """min_size_frac (preprocess --min-face): a face filling the frame gets the same box with a
  coarse search as with the default 0.1; the whole astronaut (face ~20 % of the frame) is found
  by the default only."""
  img = _astronaut()
  close = img[24:234, 118:328]  # 210x210 around the face: it spans ~half of the frame
  fine, coarse = fd.HaarDetector(), fd.HaarDetector(min_size_frac=0.3)
  b_fine, b_coarse = fine.detect([close, img]), coarse.detect([close, img])
  assert b_fine[0] is not None and b_coarse[0] == b_fine[0], (b_fine, b_coarse)
  assert _iou(b_fine[1], ASTRONAUT_FACE) > 0.6 and b_coarse[1] is None, (b_fine, b_coarse)


def test_s3fd_needs_a_weights_file_and_never_downloads(tmp_path):
  with pytest.raises(UserError) as e:
    fd.make_detector("s3fd")
  msg = str(e.value)
  assert fd.S3FD_FILE in msg and "haar" in msg and "http" in msg
  with pytest.raises(UserError, match="not found"):
    fd.make_detector("s3fd", weights=str(tmp_path / fd.S3FD_FILE))
  with pytest.raises(UserError, match="unknown face detector"):
    fd.make_detector("dlib")


def test_s3fd_rejects_a_bad_weights_file(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("face_alignment")
  bad = tmp_path / fd.S3FD_FILE
  bad.write_bytes(b"not a checkpoint")
  with pytest.raises(UserError, match="cannot load S3FD weights"):
    fd.make_detector("s3fd", weights=str(bad))


def test_pad_and_clamp():
  shape = (100, 200, 3)
  # pads are (top, bottom, left, right)
  assert fd.pad_box((50, 20, 80, 60), (1, 10, 2, 3), shape) == (48, 19, 83, 70)
  assert fd.pad_box((5, 5, 195, 95), (10, 10, 10, 10), shape) == (0, 0, 200, 100)
  assert fd.clamp_box((-3.6, 2.4, 250, 99.6), shape) == (0, 2, 200, 100)
  assert fd.clamp_box((150, 50, 120, 40), shape) == (150, 50, 151, 51)  # degenerate -> 1 px


def test_smooth_boxes_is_a_forward_five_frame_mean():
  boxes = [(i * 10, 0, i * 10 + 20, 20) for i in range(7)]
  out = fd.smooth_boxes(boxes, window=5)
  # frame 0 averages frames 0..4 (x1 0,10,20,30,40 -> 20); the last frames average frames 2..6 (-> 40)
  assert [b[0] for b in out] == [20, 30, 40, 40, 40, 40, 40]
  assert [b[2] for b in out] == [40, 50, 60, 60, 60, 60, 60]
  assert fd.smooth_boxes(boxes[:3], window=5)[0] == (10, 0, 30, 20)  # shorter than the window
  assert fd.smooth_boxes(boxes, window=1) == boxes


def test_interpolate_boxes_fills_gaps_linearly():
  boxes = [None, (0, 0, 10, 10), None, None, (30, 0, 40, 10), None]
  out = fd.interpolate_boxes(boxes)
  assert out == [(0, 0, 10, 10), (0, 0, 10, 10), (10, 0, 20, 10), (20, 0, 30, 10), (30, 0, 40, 10),
                 (30, 0, 40, 10)]
  assert fd.interpolate_boxes([None, None]) == [None, None]


def test_crop_face_resizes_the_box_region():
  img = np.zeros((100, 120, 3), np.uint8)
  img[20:60, 30:70] = (10, 200, 90)
  crop = fd.crop_face(img, (30, 20, 70, 60), 96)
  assert crop.shape == (96, 96, 3)
  np.testing.assert_array_equal(crop[5:-5, 5:-5], np.broadcast_to((10, 200, 90), (86, 86, 3)))


def test_face_boxes_marks_missing_frames_and_detect_every_interpolates():
  img = cv2.resize(_astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
  frames = []
  for i in range(9):  # the face moving right by 2 px per frame; frame 4 blank
    m = np.float32([[1, 0, 2 * i], [0, 1, 0]])
    frames.append(cv2.warpAffine(img, m, (256, 256)))
  frames[4] = np.zeros_like(img)
  det = fd.make_detector("haar")
  boxes, found = fd.face_boxes(frames, det, pads=(0, 10, 0, 0), smooth=False)
  assert found.tolist() == [True] * 4 + [False] + [True] * 4
  raw = det.detect([frames[3], frames[5]])
  # the blank frame gets the mean of its neighbours' padded boxes
  for k in range(4):
    pad = 10 if k == 3 else 0
    assert abs(boxes[4][k] - (raw[0][k] + raw[1][k] + 2 * pad) / 2) <= 1
  assert boxes[0][3] == min(256, det.detect([frames[0]])[0][3] + 10)  # bottom pad
  every, found2 = fd.face_boxes(frames, det, pads=(0, 0, 0, 0), smooth=False, detect_every=2)
  full, _ = fd.face_boxes(frames, det, pads=(0, 0, 0, 0), smooth=False)
  # detect_every=2 runs frames 0,2,4,6,8: frame 4 is blank, so 3..5 are not "found"
  assert found2.tolist() == [True, True, True, False, False, False, True, True, True]
  for i in (1, 7):  # interpolated between two detections of a smoothly moving face
    assert max(abs(a - b) for a, b in zip(every[i], full[i])) <= 4
  smooth, _ = fd.face_boxes(frames, det, pads=(0, 0, 0, 0), smooth=True)
  assert smooth == fd.smooth_boxes(full, 5)


def test_s3fd_runs_from_a_local_weights_file(tmp_path):
  """The S3FD plumbing (weights file, BGR->RGB, batching, box scaling) with randomly initialised
  weights: the boxes are meaningless but must be well-formed and inside the frames."""
  torch = pytest.importorskip("torch")
  net_s3fd = pytest.importorskip("face_alignment.detection.sfd.net_s3fd")
  torch.manual_seed(0)
  path = tmp_path / fd.S3FD_FILE
  torch.save(net_s3fd.s3fd().state_dict(), str(path))
  det = fd.make_detector("s3fd", weights=str(path), batch_size=2, max_side=160)
  frames = [cv2.resize(_astronaut(), (240, 180)), np.zeros((180, 240, 3), np.uint8), _astronaut()[:180, :240]]
  boxes = det.detect(frames)
  assert len(boxes) == 3
  for b in boxes:
    if b is not None:
      x1, y1, x2, y2 = b
      assert all(isinstance(v, int) for v in b) and 0 <= x1 < x2 <= 240 and 0 <= y1 < y2 <= 180


def _moving_face(n: int):
  """n 360x480 frames of the astronaut's face moving along a known path, and its offsets."""
  img = _astronaut()
  head = img[0:260, 94:354]  # the face at x 80..179, y 64..163 of this crop
  frames, offsets = [], []
  for i in range(n):
    dx, dy = int(round(12 * np.sin(i / 3.0))), int(round(8 * np.cos(i / 4.0)))
    frame = np.full((360, 480, 3), 90, np.uint8)
    frame[50 + dy:310 + dy, 110 + dx:370 + dx] = head
    frames.append(frame)
    offsets.append((dx, dy))
  return frames, np.asarray(offsets, np.float64)


def test_tracking_follows_a_moving_face_as_closely_as_whole_searches():
  """detect_faces(track=True) searches each frame near the face before; on a face moving by up
  to 12 px per frame its boxes follow the true motion as well as whole-frame searches do."""
  frames, offsets = _moving_face(20)
  det = fd.HaarDetector()
  whole, tracked = det.detect_faces(frames), det.detect_faces(frames, track=True)
  assert all(b is not None for b, _ in whole + tracked)
  assert tracked[0] == whole[0]  # the first frame is searched whole
  assert min(_iou(a, b) for (a, _), (b, _) in zip(whole, tracked)) > 0.85

  def motion_error(found):
    boxes = np.asarray([b for b, _ in found], np.float64)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 - offsets
    return np.abs(centres - centres.mean(axis=0)).max()

  assert motion_error(tracked) <= max(4.0, motion_error(whole) + 1.0), \
      (motion_error(tracked), motion_error(whole))


def test_tracking_searches_whole_frames_where_the_face_is_not_near_and_at_each_call():
  img = _astronaut()
  close = img[24:234, 118:328]  # 210x210 around the face
  small = cv2.resize(close, (147, 147))  # 0.7 times: outside the sizes searched near a big face
  canvas = lambda width: np.full((360, width, 3), 90, np.uint8)
  left, right, both = canvas(640), canvas(640), canvas(480)
  left[20:230, 10:220] = close
  right[100:310, 420:630] = close
  both[20:230, 10:220] = close
  both[150:297, 323:470] = small
  det = fd.HaarDetector()
  # The face jumps across the frame: not near the box before, so the frame is searched whole.
  jump = det.detect_faces([left, right, left], track=True)
  assert [b for b, _ in jump] == [b for b, _ in det.detect_faces([left, right, left])]
  assert jump[1][0][0] > 400 and jump[2][0][2] < 260
  # A second face far from the tracked one is not looked for (nor counted) until the next
  # call, whose first frame is searched whole; a whole search counts both.
  assert [c for _, c in det.detect_faces([both] * 3)] == [2, 2, 2]
  tracked = det.detect_faces([both] * 3, track=True)
  assert [c for _, c in tracked] == [2, 1, 1]
  assert all(b[2] < 260 for b, _ in tracked)  # the larger face on the left throughout


def test_face_boxes_track_like_whole_searches():
  """face_boxes(track=True), preprocessing's --search track: the padded, smoothed boxes of a
  moving face within 3 px of those of whole-frame searches; and the frames after the first of a
  detector call are searched near the face before (a larger face entering elsewhere is not taken
  up until the next call), where whole searches take the larger face at once."""
  frames, _ = _moving_face(20)
  det = fd.HaarDetector()
  whole, found_whole = fd.face_boxes(frames, det)
  tracked, found_tracked = fd.face_boxes(frames, det, track=True)
  assert found_whole.all() and found_tracked.all()
  assert np.abs(np.subtract(whole, tracked)).max() <= 3
  close = _astronaut()[24:234, 118:328]
  small_only = np.full((360, 480, 3), 90, np.uint8)
  small_only[150:297, 323:470] = cv2.resize(close, (147, 147))
  both = small_only.copy()
  both[20:230, 10:220] = close
  plain = dict(pads=(0, 0, 0, 0), smooth=False)
  whole, _ = fd.face_boxes([small_only, both, both], det, **plain)
  tracked, _ = fd.face_boxes([small_only, both, both], det, track=True, **plain)
  assert whole[0] == tracked[0] and whole[0][0] > 300  # the small face, alone in the frame
  assert all(b[2] < 260 for b in whole[1:]) and all(b[0] > 300 for b in tracked[1:])
