"""Streaming inference: faceless frames, damaged videos, several faces, the soft paste-back, and the
stream equal frame for frame to the whole-video path it replaced (real ffmpeg, real videos)."""

import os
import threading
import time

import cv2
import numpy as np
import pytest

from emogen_jax.data import audio as audio_lib
from emogen_jax.data import face_detection, timing, video_io
from emogen_jax.evaluation import metrics
from emogen_jax.inference import cli as infer_cli
from emogen_jax.inference import renderer as infer
from emogen_jax.inference import stream
from tests import _infer_fixtures as F

FPS = 25.0
BACKGROUND = (90, 120, 60)  # the fixtures' background colour (BGR)
SHORT_GAP = range(3, 5)     # 2 faceless frames: boxes interpolated between the faces around them
LONG_GAP = range(8, 22)     # 14 faceless frames (> 0.5 s): passed through unchanged


def _faceless(frame):
  return np.full_like(frame, BACKGROUND)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from emogen_jax.inference.api import TalkingFace
  d = tmp_path_factory.mktemp("stream")
  ckpt = F.make_generator_checkpoint(str(d / "gen"))
  frames = F.face_frames(30)
  for k in list(SHORT_GAP) + list(LONG_GAP):
    frames[k] = _faceless(frames[k])
  gappy = video_io.write_video(str(d / "gappy.mp4"), frames, FPS) and str(d / "gappy.mp4")
  return {"dir": d, "ckpt": ckpt, "gappy": gappy, "tf": TalkingFace.load(ckpt, batch_size=8),
          "speech": F.write_speech(str(d / "speech.wav"), 1.3),
          "long_speech": F.write_speech(str(d / "long.wav"), 1.0)}


def test_track_boxes_streams_the_whole_list_rule():
  rng = np.random.default_rng(0)
  for _ in range(500):
    n, window, gap = int(rng.integers(0, 25)), int(rng.choice([1, 2, 5])), int(rng.integers(0, 4))
    raw = [None if rng.random() < 0.3 else tuple(int(v) for v in rng.integers(0, 99, 4))
           for _ in range(n)]
    got = [(b, s) for _, b, s, _ in face_detection.track_boxes(((i, b, 1) for i, b in enumerate(raw)),
                                                                 window, gap)]
    assert got == face_detection.boxes_with_gaps(raw, window, gap)
    full = [tuple(int(v) for v in rng.integers(0, 99, 4)) for _ in range(n)]
    assert face_detection.boxes_with_gaps(full, window, gap) == [
        (b, "found") for b in face_detection.smooth_boxes(full, window)]
  # a gap of 2 between two faces is filled, one of 3 is not
  a, b = (0, 0, 10, 10), (30, 0, 40, 10)
  rule = face_detection.boxes_with_gaps([a, None, None, b, None, None, None, a], 1, 2)
  assert [s for _, s in rule] == ["found", "interpolated", "interpolated", "found", "missing",
                                  "missing", "missing", "found"]
  assert rule[1][0] == (10, 0, 20, 10)


class _ScriptedDetector:
  """Frame i (a tiny array holding i) has the box (i, 0, i + 10, 10), or none where listed."""

  def __init__(self, faceless=()):
    self.faceless, self.seen = set(faceless), []

  def detect_faces(self, frames, track=False):
    out = []
    for f in frames:
      i = int(f[0, 0, 0])
      self.seen.append(i)
      out.append((None, 0) if i in self.faceless else ((i, 0, i + 10, 10), 1))
    return out


def test_detect_every_looks_at_every_kth_and_the_last_frame_and_interpolates_between():
  pad = lambda b: face_detection.pad_box(b, (0, 0, 0, 0), (64, 64, 3))
  rng = np.random.default_rng(0)
  for n in list(range(0, 8)) + [15, 16, 17, 33, 34, 50]:  # around the detector's chunk of 16
    for k in (1, 2, 3, 5):
      faceless = {int(i) for i in rng.choice(max(n, 1), size=min(n, 3), replace=False)}
      det = _ScriptedDetector(faceless)
      frames = [np.full((64, 64, 3), i, np.int32) for i in range(n)]
      got = list(stream._detected(frames, det, (0, 0, 0, 0), every=k))
      heads = sorted({i for i in range(0, n, k)} | ({n - 1} if n else set()))
      assert det.seen == heads, (n, k)
      assert [int(f[0, 0, 0]) for f, _, _ in got] == list(range(n))
      for i, (_, box, count) in enumerate(got):
        if i in heads:
          assert count == (0 if i in faceless else 1)
          assert box == (None if i in faceless else pad((i, 0, i + 10, 10)))
          continue
        assert count is None  # not looked at
        left, right = max(h for h in heads if h < i), min(h for h in heads if h > i)
        if left in faceless or right in faceless:
          assert box is None
        else:  # on the line between the two detected boxes
          assert box == face_detection.interp_box(pad((left, 0, left + 10, 10)), left,
                                                  pad((right, 0, right + 10, 10)), right, i)


def test_detect_every_on_a_video_counts_the_frames_between_detections(setup):
  """--detect-every 2 on the gappy video (faceless 3-4 and 8-21): frames 0, 2, ..., 28 and 29 go
  through the detector. Between two faces a frame gets the interpolated box (1, 23, 25, 27);
  next to a faceless detection it gets none, so it joins that gap: 3 and 5 around frame 4
  (interpolated with it), and 7 with the long faceless stretch (passed through, although frame
  7 shows a face: nobody looked)."""
  tf = setup["tf"]
  got, _ = tf.generate(face=setup["gappy"], audio=setup["speech"], emotion="HAP", detect_every=2,
                       progress=False)
  src, _ = video_io.read_video(setup["gappy"])
  st = tf.last_stats
  assert (st.found, st.between, st.interpolated, st.missing) == (8, 4, 3, 15)
  for k in (1, 23, 3, 5):  # a generated face in an interpolated box
    assert np.abs(got[k].astype(int) - src[k]).mean() > 1
  for k in range(7, 22):
    np.testing.assert_array_equal(got[k], src[k])
  out = str(setup["dir"] / "gappy_every2.mp4")
  proc = _cli_in_process(setup, "--face", setup["gappy"], "--audio", setup["speech"], "--out", out,
                         "--detect-every", "2")
  assert ("8 with a face, 4 between detections (--detect-every), 3 interpolated, "
          "15 passed through") in proc["out"]


def test_prefetch_hands_over_errors_and_stops():
  def items():
    yield 1
    raise ValueError("broken source")
  with pytest.raises(ValueError, match="broken source"):
    list(stream.prefetch(items(), 1))
  produced = []

  def endless():
    for i in range(10 ** 6):
      produced.append(i)
      yield i
  it = stream.prefetch(endless(), 2)
  assert [next(it) for _ in range(3)] == [0, 1, 2]
  it.close()  # the thread stops: nothing is produced beyond the queue's bound
  assert len(produced) <= 3 + 2 + 1


def _whole_video_path(renderer, frames, wav, fps, emotion, per_batch):
  """The previous whole-video renderer: every frame decoded, detected and cropped up front."""
  chunks = timing.inference_mel_chunks(audio_lib.melspectrogram(wav), fps)
  frames = frames[:len(chunks)]
  # The stream's default detection: one detector call for these few frames, tracking.
  assert len(frames) <= face_detection.DETECT_BATCH
  det = [b for b, _ in face_detection.HaarDetector().detect_faces(frames, track=True)]
  boxes = face_detection.smooth_boxes([face_detection.pad_box(b, infer.DEFAULT_PADS, f.shape)
                                       for b, f in zip(det, frames)], 5)
  crops = np.stack([face_detection.crop_face(f, b, 96) for f, b in zip(frames, boxes)])
  out = []
  for s in range(0, len(chunks), per_batch):
    idx = range(s, min(s + per_batch, len(chunks)))
    src = [infer.pingpong_index(i, len(frames)) for i in idx]
    faces = renderer(chunks[s:s + len(idx)], crops[src], np.full(len(idx), emotion, np.int32))
    for k, j in enumerate(src):
      x1, y1, x2, y2 = boxes[j]
      f = frames[j].copy()
      f[y1:y2, x1:x2] = cv2.resize(faces[k], (x2 - x1, y2 - y1))
      out.append(f)
  return np.stack(out)


def test_stream_equals_the_whole_video_path_with_pingpong(setup):
  d, tf = setup["dir"], setup["tf"]
  video = F.write_face_video(str(d / "face.mp4"), 9, FPS)  # 9 frames, 22 output frames: ping-pong
  wav = audio_lib.load_wav(setup["long_speech"])
  got, fps = tf.generate(face=video, audio=setup["long_speech"], emotion="SAD", blend="box",
                         progress=False)
  src, _ = video_io.read_video(video)
  want = _whole_video_path(tf.renderer, src, wav, FPS, 5, tf.renderer.batch_size)
  assert fps == FPS and len(got) == 22 > 2 * 9
  np.testing.assert_array_equal(got, want)
  assert tf.last_stats.found == 9 and tf.last_stats.output_frames == 22


def test_faceless_stretch_passes_through_and_short_gaps_are_interpolated(setup):
  tf = setup["tf"]
  got, _ = tf.generate(face=setup["gappy"], audio=setup["speech"], emotion="HAP", progress=False)
  src, _ = video_io.read_video(setup["gappy"])
  st = tf.last_stats
  assert len(got) == st.output_frames == 30 and st.source_frames == 30
  assert (st.found, st.interpolated, st.missing) == (30 - 16, 2, 14)
  for k in LONG_GAP:  # the source frame, unchanged
    np.testing.assert_array_equal(got[k], src[k])
  for k in list(SHORT_GAP) + [0, 7, 25]:  # a generated face inside an (interpolated) box
    assert np.abs(got[k].astype(int) - src[k]).mean() > 1
  # the same with the CLI: the count is reported, the video has every frame
  out = str(setup["dir"] / "gappy_out.mp4")
  proc = _cli_in_process(setup, "--face", setup["gappy"], "--audio", setup["speech"], "--out", out)
  assert "no face in 14 source frame(s): passed through unchanged" in proc["err"]
  assert "14 with a face, 2 interpolated, 14 passed through" in proc["out"]
  enc = list(video_io.iter_video(out))
  assert len(enc) == 30
  assert np.abs(enc[12].astype(int) - src[12]).mean() < 3  # H.264 only


def _cli_in_process(setup, *args):
  import contextlib
  import io
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = infer_cli.main(["--checkpoint", setup["ckpt"], "--batch-size", "8", *args])
  assert rc == 0, err.getvalue()
  return {"out": out.getvalue(), "err": err.getvalue()}


def test_truncated_video_is_reported_with_both_counts(setup):
  d = setup["dir"]
  rng = np.random.default_rng(0)  # grain: every frame costs about as many bytes
  frames = [np.clip(f + rng.integers(-12, 13, f.shape), 0, 255).astype(np.uint8)
            for f in F.face_frames(41)]
  path = video_io.write_video(str(d / "whole.mp4"), frames, FPS) and str(d / "whole.mp4")
  data = open(path, "rb").read()
  cut = str(d / "cut.mp4")
  with open(cut, "wb") as f:  # the header (moov, at the front) still lists 41 frames
    f.write(data[:len(data) // 2])
  decodable = sum(1 for _ in video_io.iter_video(cut))
  _, _, header = video_io.open_video(cut)
  assert header == 41 and 0 < decodable < 41
  tf = setup["tf"]
  frames, _ = tf.generate(face=cut, audio=setup["long_speech"], emotion="NEU", progress=False)
  assert len(frames) == 22  # the decodable frames, ping-ponged
  (warning,) = [w for w in tf.last_stats.warnings("cut.mp4") if "decode" in w]
  assert f"only {decodable} frames decode of the 41 its header lists" in warning


def test_largest_of_several_faces_is_used_and_reported(setup):
  big = F.face_image((200, 250))
  small = cv2.resize(big, (175, 140))  # 0.7 times the size
  frame = np.full((200, 445, 3), BACKGROUND, np.uint8)
  frame[:, :250] = big
  frame[30:170, 260:435] = small
  det = face_detection.HaarDetector()
  (box, count), = det.detect_faces([frame])
  assert count == 2 and box[2] <= 250  # the large face on the left
  frame = frame[:, ::-1].copy()  # mirrored: now the large face is on the right
  (box, count), = det.detect_faces([frame])
  assert count == 2 and box[0] >= 195
  tf = setup["tf"]
  tf.generate(face=[frame] * 3, audio=F.synth_speech(0.3), emotion="NEU", progress=False,
              search="full")
  assert tf.last_stats.multi_face == 3
  assert any("several faces" in w and "largest" in w for w in tf.last_stats.warnings())
  # Tracking searches the first frame whole and the next two near its (large) face only.
  tf.generate(face=[frame] * 3, audio=F.synth_speech(0.3), emotion="NEU", progress=False)
  assert tf.last_stats.multi_face == 1
  assert any("--search full counts all" in w for w in tf.last_stats.warnings())


def test_feathered_paste_has_a_lower_seam_and_keeps_everything_outside_the_box():
  frame = F.face_image((128, 160))
  face = np.full((96, 96, 3), 230, np.uint8)  # a face much brighter than the frame: a strong seam
  box = (40, 20, 120, 110)
  hard = infer.paste(frame, face, box, "box")
  soft = infer.paste(frame, face, box, "feather")
  x1, y1, x2, y2 = box
  outside = np.ones(frame.shape[:2], bool)
  outside[y1:y2, x1:x2] = False
  np.testing.assert_array_equal(soft[outside], frame[outside])
  np.testing.assert_array_equal(hard[outside], frame[outside])
  # the middle of the box is the generated face itself
  np.testing.assert_array_equal(soft[60:70, 75:85], hard[60:70, 75:85])
  seam_box, seam_soft = metrics.seam_energy(hard, box), metrics.seam_energy(soft, box)
  assert seam_soft < 0.25 * seam_box
  assert metrics.seam_energy(frame, box) < seam_soft  # the picture's own edges are lower still


def test_ordered_map_keeps_order_and_reads_ahead_only_its_window():
  """Results in the items' order although later calls finish first; two calls run at once; the
  items are read only one ahead of what was handed out (not the whole split at the start)."""
  read, running, peak = [], [0], [0]
  lock = threading.Lock()

  def items():
    for i in range(7):
      read.append(i)
      yield i

  def slow_square(i):
    with lock:
      running[0] += 1
      peak[0] = max(peak[0], running[0])
    time.sleep(0.02 * (7 - i))
    with lock:
      running[0] -= 1
    return i * i

  out = []
  for item, r in stream.ordered_map(slow_square, items(), workers=2):
    out.append((item, r))
    assert len(read) <= len(out) + 1
  assert out == [(i, i * i) for i in range(7)]
  assert peak[0] == 2


def test_generator_calls_run_two_at_once_and_come_back_in_order():
  """stream.generated keeps GENERATOR_CALLS calls in flight; the batches come back in the items'
  order with each item's own faces, the faceless items in their places."""
  lock, running, peak = threading.Lock(), [0], [0]

  class SlowRenderer:
    batch_size = 4

    def __call__(self, mels, crops, emotions):
      with lock:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
      time.sleep(0.05 if crops[0, 0, 0, 0] == 0 else 0.01)  # the first call ends last
      with lock:
        running[0] -= 1
      return crops + 1  # each face tells which crop it came from

  items = [stream.Item(index=i, source=i, frame=None, box=None if i % 5 == 3 else (0, 0, 1, 1),
                       crop=None if i % 5 == 3 else np.full((96, 96, 3), i, np.uint8),
                       mel=np.zeros((80, 16), np.float32)) for i in range(18)]
  batches = list(stream.generated(SlowRenderer(), iter(items), [np.eye(6)[3]]))
  assert stream.GENERATOR_CALLS == 2 and peak[0] == 2
  out = [pair for batch in batches for pair in batch]
  assert [it.index for it, _ in out] == list(range(18))
  for it, faces in out:
    if it.box is None:
      assert faces is None
    else:
      assert faces.shape == (1, 96, 96, 3) and (faces == it.index + 1).all()
