"""The synthetic corpus: names, container facts, detectability, lip sync with the audio, emotion cues."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data_tools import make_synthetic
from emogen_jax.data import audio
from emogen_jax.data.emotions import EMOTIONS
from tests import _data_fixtures as fx

NAME = re.compile(r"^(\d{4})_([A-Z]{3})_(ANG|DIS|FEA|HAP|NEU|SAD)_(XX|LO|MD|HI)\.mp4$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """3 actors x 6 clips (every emotion once per actor) plus the bad examples."""
  out = tmp_path_factory.mktemp("synth")
  paths = fx.make_small_corpus(out, num_actors=3, clips_per_actor=6, frames_range=(38, 44),
                               with_bad_examples=True, jobs=2)
  clips = {}
  for p in paths:
    frames = fx.read_frames(p)
    # Detect on every other frame (the cascade dominates the test time); odd frames reuse the box
    # of the frame before, the head moves by about a pixel per frame.
    dets = fx.haar_boxes(frames[::2])
    boxes = [dets[i // 2] if i % 2 == 0 else None for i in range(len(frames))]
    clips[p] = dict(frames=frames, boxes=boxes, dets=dets, wav=audio.load_wav(p))
  return str(out), paths, clips


def test_names_and_counts(corpus):
  out, paths, _ = corpus
  assert len(paths) == 18
  names = [os.path.basename(p) for p in paths]
  assert all(NAME.match(n) for n in names), names
  parsed = [NAME.match(n).groups() for n in names]
  assert {a for a, *_ in parsed} == {"1001", "1002", "1003"}
  for actor in ("1001", "1002", "1003"):
    assert sorted(e for a, _, e, _ in parsed if a == actor) == sorted(EMOTIONS)
  assert all(s in make_synthetic.SENTENCES for _, s, _, _ in parsed)
  # CREMA-D convention: graded intensities only on IEO, never on NEU.
  assert all(i == "XX" for _, s, e, i in parsed if s != "IEO" or e == "NEU")
  on_disk = set(os.listdir(out))
  assert {make_synthetic.BAD_CORRUPT, make_synthetic.BAD_NOFACE, make_synthetic.BAD_NAME} <= on_disk
  assert len(on_disk) == 21


def test_plan_balanced_and_unique():
  plan = make_synthetic.clip_plan(2, 72)
  assert len(set(plan)) == 144 and len({(a, s, e) for a, s, e, _ in plan}) == 144
  first12 = [e for a, _, e, _ in plan if a == 1001][:12]
  assert all(first12.count(e) == 2 for e in EMOTIONS)
  with pytest.raises(make_synthetic.UserError, match="at most 72"):
    make_synthetic.clip_plan(1, 73)


def test_container_facts(corpus):
  _, paths, clips = corpus
  for p in paths[:6]:
    info = fx.probe(p)
    v = [s for s in info["streams"] if s["codec_type"] == "video"][0]
    a = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p"
    assert v["r_frame_rate"] == "25/1" and (v["width"], v["height"]) == (160, 160)
    n = int(v["nb_read_frames"])
    assert 38 <= n <= 44 and n == len(clips[p]["frames"])
    assert len(a) == 1 and a[0]["codec_name"] == "aac"
    # The audio covers the video (AAC pads at most one 1024-sample frame at the end).
    wav_s = len(clips[p]["wav"]) / 16000
    assert n / 25 - 0.01 <= wav_s <= n / 25 + 0.08, (p, wav_s, n / 25)
    assert np.abs(clips[p]["wav"]).max() > 0.2


def test_haar_detects_faces(corpus):
  _, paths, clips = corpus
  dets = [b is not None for p in paths for b in clips[p]["dets"]]
  rate = float(np.mean(dets))
  assert rate >= 0.9, rate
  # Faces move: box centres vary across the frames of a clip.
  boxes = [b for b in clips[paths[0]]["dets"] if b is not None]
  centres = np.array([(x + w / 2, y + h / 2) for x, y, w, h in boxes])
  assert centres.std(0).max() > 1.0


def _mouth_darkness(frames, boxes):
  """Dark-pixel count in the mouth part of the Haar box (carried over frames without a box)."""
  first = next(b for b in boxes if b is not None)
  out, last = [], first
  for f, b in zip(frames, boxes):
    last = b if b is not None else last
    x, y, w, h = last
    g = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)
    out.append((g[y + int(0.68 * h):y + h, x + int(0.3 * w):x + int(0.7 * w)] < 50).sum())
  return np.array(out, np.float64)


def _loudness(wav, n):
  """dB loudness of [f/25, (f+1)/25) s per frame."""
  rms = np.array([np.sqrt(np.mean(wav[f * 640:(f + 1) * 640] ** 2) + 1e-12) for f in range(n)])
  return 20 * np.log10(rms + 1e-5)


def test_mouth_follows_audio_at_lag_zero(corpus):
  _, paths, clips = corpus
  corr = {lag: [] for lag in range(-4, 5)}
  for p in paths:
    c = clips[p]
    m = _mouth_darkness(c["frames"], c["boxes"])
    a = _loudness(c["wav"], len(m))
    for lag in corr:  # mouth at frame f + lag vs audio at frame f
      mm, aa = (m[lag:], a[:len(a) - lag]) if lag >= 0 else (m[:lag], a[-lag:])
      corr[lag].append(np.corrcoef(mm, aa)[0, 1])
  mean = {lag: float(np.mean(v)) for lag, v in corr.items()}
  assert max(mean, key=mean.get) == 0, mean
  assert mean[0] > 0.7, mean
  assert mean[0] - max(mean[-2], mean[2]) > 0.4, mean
  # Loudness varies strongly (syllables and pauses) in every clip.
  for p in paths:
    a = _loudness(clips[p]["wav"], len(clips[p]["frames"]))
    assert np.percentile(a, 90) - np.percentile(a, 10) > 20


def test_expressions_are_consistent_across_actors(corpus):
  """Leave-one-actor-out nearest centroid on identity-normalised median crops gets most emotions."""
  _, paths, clips = corpus
  feats = {}
  for p in paths:
    actor, _, emo, _ = NAME.match(os.path.basename(p)).groups()
    crops = [cv2.resize(cv2.cvtColor(f[y:y + h, x:x + w], cv2.COLOR_BGR2GRAY), (48, 48)).astype(np.float64)
             for f, b in zip(clips[p]["frames"][::2], clips[p]["dets"]) if b is not None for x, y, w, h in [b]]
    feats.setdefault(actor, {})[emo] = np.median(crops, 0)
  norm = {a: {e: v - np.mean(list(d.values()), 0) for e, v in d.items()} for a, d in feats.items()}
  correct = 0
  for a in norm:
    cents = {e: np.mean([norm[b][e] for b in norm if b != a], 0) for e in EMOTIONS}
    for e, v in norm[a].items():
      correct += min(cents, key=lambda k: np.sum((v - cents[k]) ** 2)) == e
  assert correct >= 13, correct  # of 18; chance is 3 (2 reference actors per fold: noisy)


def test_render_cues_numbers():
  """Direct render checks: a smile lifts the mouth corners, an open mouth is darker, the tint shows."""
  actor = make_synthetic.make_actor(1001, 0)
  neu = make_synthetic.EXPRESSIONS["NEU"]
  closed = make_synthetic.render_frame(actor, neu, 1.0, 0.0, (0.5, 0.47), 1.0, 160)
  opened = make_synthetic.render_frame(actor, neu, 1.0, 1.0, (0.5, 0.47), 1.0, 160)
  g0, g1 = (cv2.cvtColor(x, cv2.COLOR_BGR2GRAY)[95:125, 60:100] for x in (closed, opened))
  assert (g1 < 50).sum() > (g0 < 50).sum() + 100
  ang = make_synthetic.render_frame(actor, make_synthetic.EXPRESSIONS["ANG"], 1.0, 0.0, (0.5, 0.47), 1.0, 160)
  assert np.abs(ang.astype(int) - closed.astype(int)).mean() > 2
  # Deterministic pixels for the same arguments.
  np.testing.assert_array_equal(closed, make_synthetic.render_frame(actor, neu, 1.0, 0.0, (0.5, 0.47), 1.0, 160))
  noface = make_synthetic.render_frame(actor, neu, 1.0, 0.0, (0.5, 0.47), 1.0, 160, face=False)
  assert fx.haar_boxes(noface[None]) == [None]


def test_mouth_openings_timing():
  wav = np.zeros(16000, np.float32)
  wav[10 * 640:14 * 640] = 0.5 * np.sin(np.arange(4 * 640) * 0.3)
  o = make_synthetic.mouth_openings(wav, 25)
  assert o[10:14].min() > 0.9 and o[:9].max() == 0 and o[15:].max() == 0


def test_bad_examples(corpus):
  out, _, _ = corpus
  assert len(fx.read_frames(os.path.join(out, make_synthetic.BAD_CORRUPT))) == 0
  noface = fx.read_frames(os.path.join(out, make_synthetic.BAD_NOFACE))
  assert len(noface) >= 38 and all(b is None for b in fx.haar_boxes(noface))
  assert len(audio.load_wav(os.path.join(out, make_synthetic.BAD_NOFACE))) > 16000
  assert not NAME.match(make_synthetic.BAD_NAME)
  assert len(fx.read_frames(os.path.join(out, make_synthetic.BAD_NAME))) >= 38


def test_deterministic_and_synth_speech(corpus, tmp_path):
  _, paths, clips = corpus
  again = make_synthetic.make_corpus(str(tmp_path / "again"), num_actors=1, clips_per_actor=1, jobs=1,
                                     frames_range=(38, 44))
  ref = [p for p in paths if os.path.basename(p) == os.path.basename(again[0])][0]
  np.testing.assert_array_equal(fx.read_frames(again[0]), clips[ref]["frames"])
  np.testing.assert_array_equal(audio.load_wav(again[0]), clips[ref]["wav"])
  # The TTS-free fallback is speech-like too: syllables and pauses, mouth in sync.
  synth = make_synthetic.make_corpus(str(tmp_path / "synth"), num_actors=1, clips_per_actor=1, jobs=1,
                                     speech="synth")[0]
  wav = audio.load_wav(synth)
  frames = fx.read_frames(synth)
  a = _loudness(wav, len(frames))
  assert np.percentile(a, 90) - np.percentile(a, 10) > 20
  m = _mouth_darkness(frames, fx.haar_boxes(frames[:1]) * len(frames))
  assert np.corrcoef(m, a)[0, 1] > 0.6


def test_cli(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  r = subprocess.run([sys.executable, "-m", "data_tools.make_synthetic", "--help"], capture_output=True,
                     text=True, env=env)
  assert r.returncode == 0 and "--clips-per-actor" in r.stdout
  r = subprocess.run([sys.executable, "-m", "data_tools.make_synthetic", "--out", str(tmp_path),
                      "--clips-per-actor", "100"], capture_output=True, text=True, env=env)
  assert r.returncode == 2 and r.stderr.startswith("error: at most 72 clips per actor")
  r = subprocess.run([sys.executable, "-m", "data_tools.make_synthetic", "--out", str(tmp_path / "c"),
                      "--actors", "1", "--clips-per-actor", "2", "--jobs", "1"], capture_output=True,
                     text=True, env=env)
  assert r.returncode == 0, r.stderr
  assert "wrote 2 clips" in r.stdout and len(os.listdir(tmp_path / "c")) == 2
