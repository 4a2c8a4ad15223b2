"""Preprocessing: synthetic videos -> per-clip cache -> TFDS shards, checked against the sources."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_tools import preprocess as pp
from emogen_jax.data import audio, face_detection
from emogen_jax.errors import UserError
from tests import _pipeline_fixtures as fx


@pytest.fixture(scope="module")
def data(preprocessed_data):
  return preprocessed_data


def _report(data_dir):
  with open(os.path.join(data_dir, "preprocess_report.json")) as f:
    return json.load(f)


def _records(data_dir, split):
  import tensorflow_datasets as tfds
  b = tfds.builder_from_directory(os.path.join(data_dir, "emogen_clips", "1.0.0"))
  return {ex["clip_id"].decode(): ex for ex in tfds.as_numpy(b.as_dataset(split=split))}


def test_report_counts_every_clip_and_reason(data):
  r = _report(data["data_dir"])
  n_good = fx.NUM_ACTORS * fx.CLIPS_PER_ACTOR + 1  # + the partially faceless clip
  assert sum(r["clips_written"].values()) == n_good
  assert r["skipped_by_reason"] == {"bad_name": 1, "no_face": 1, "not_25fps": 1, "unreadable": 1}
  assert r["clips_found"] == n_good + 4
  assert r["clips_with_missing_faces"] >= 1  # the blanked clip (Haar may also miss a synthetic frame)
  with open(os.path.join(data["cache_dir"], "clips", fx.PARTIAL + ".json")) as f:
    partial = json.load(f)
  assert partial["num_frames"] - partial["num_valid"] >= len(fx.BLANK_FRAMES)
  assert r["frames_per_clip"]["min"] >= fx.FRAMES_RANGE[0] and r["frames_per_clip"]["max"] <= fx.FRAMES_RANGE[1]
  assert "convert_fps" in {s["clip"]: s["detail"] for s in r["skipped"]}[fx.FPS30 + ".mp4"]
  assert '"clips_written"' in data["stdout"]  # the report is also printed
  # each job's peak memory is reported (a streamed 2-s clip needs a few hundred MiB, not GiBs)
  peak = r["peak_memory_per_job_mb"]
  assert 0 < peak["min"] <= peak["max"] < 4096


def test_splits_are_actor_disjoint_and_cover_all_actors(data):
  r = _report(data["data_dir"])
  actors = r["actors"]
  assert all(len(actors[s]) >= 1 for s in ("train", "validation", "test"))
  assert not set(actors["train"]) & set(actors["validation"])
  assert not set(actors["train"]) & set(actors["test"])
  assert not set(actors["validation"]) & set(actors["test"])
  seen = set()
  for split in ("train", "validation", "test"):
    recs = _records(data["data_dir"], split)
    assert len(recs) == r["clips_written"][split]
    assert {ex["actor"].decode() for ex in recs.values()} == set(actors[split])
    seen |= set(recs)
  assert len(seen) == sum(r["clips_written"].values())


def test_records_match_the_source_video_and_audio(data):
  cache = data["cache_dir"]
  recs = {}
  for split in ("train", "validation", "test"):
    recs.update(_records(data["data_dir"], split))
  src = os.path.join(data["src"], fx.PARTIAL + ".mp4")
  ex = recs[fx.PARTIAL]
  frames, fps = pp.read_frames(src)
  assert fps == 25 and ex["num_frames"] == len(frames) == len(ex["frames"])
  # validity: the blanked frames have no face, (nearly) all others have one
  invalid = set(np.nonzero(~ex["valid"])[0].tolist())
  assert invalid >= set(fx.BLANK_FRAMES) and len(invalid) <= len(fx.BLANK_FRAMES) + 2
  # labels from the name
  assert ex["emotion"] == 4 and ex["intensity"] == 0 and ex["actor"] == b"1002" and ex["sentence"] == b"WSI"
  # mel: exactly emogen_jax.data.audio on the clip's audio track
  np.testing.assert_allclose(ex["mel"], audio.melspectrogram(audio.load_wav(src)), atol=1e-6)
  # pixels: the stored JPEG is the source frame cropped at the recorded box (pads + smoothing)
  boxes = fx.load_cached_clip(cache, fx.PARTIAL)["boxes"]
  for i in (0, 11, 12, 20, len(frames) - 1):
    want = face_detection.crop_face(frames[i], tuple(boxes[i]), 96).astype(np.float32)
    got = fx.decode_jpeg_cv2(ex["frames"][i]).astype(np.float32)
    assert got.shape == (96, 96, 3)
    assert np.abs(got - want).mean() < 2.0, i
  # and the recorded boxes are the detector's, padded (0, 10, 0, 0) and smoothed over 5 frames
  det = face_detection.make_detector("haar")
  want_boxes, found = face_detection.face_boxes(frames, det, pads=(0, 10, 0, 0), smooth=True)
  assert np.array_equal(np.asarray(want_boxes), boxes)
  assert np.array_equal(found, ex["valid"])


def test_window_rules():
  valid = np.ones(20, bool)
  valid[9] = False
  mel_steps = 1 + 20 * 640 // 200  # 20 frames of audio: 65 mel steps
  any_ok = pp.window_starts(valid, mel_steps, "any")
  assert np.nonzero(any_ok)[0].tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15]
  # generator: f >= 1 and frame f+3's window int(80 (f+3) / 25) + 16 <= 65 -> f <= 12
  assert np.nonzero(pp.window_starts(valid, mel_steps, "generator"))[0].tolist() == [1, 2, 3, 4, 10, 11, 12]
  # syncnet: int(80 f / 25) + 16 <= 65 -> f <= 15
  assert np.nonzero(pp.window_starts(valid, mel_steps, "syncnet"))[0].tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15]
  assert pp.clip_is_usable(valid, mel_steps)
  assert not pp.clip_is_usable(valid[:15], mel_steps)  # <= 15 frames


def test_labels_from_names_and_csv(tmp_path):
  assert pp.parse_crema_name("1001_DFA_ANG_XX") == {"actor": "1001", "sentence": "DFA", "emotion": "ANG",
                                                    "intensity": "XX"}
  assert pp.parse_crema_name("1001_DFA_XYZ_XX") is None
  assert pp.parse_crema_name("clip7") is None
  src = tmp_path / "mead"
  (src / "M003").mkdir(parents=True)
  for name in ("M003/001.mp4", "M003/002.mp4", "M003/003.mp4"):
    (src / name).write_bytes(b"")
  csv_path = tmp_path / "labels.csv"
  csv_path.write_text("file,emotion,actor,intensity\nM003/001.mp4,happy,M003,HI\n002.mp4,SAD,M003,\n")
  clips, bad = pp.list_clips(str(src), str(csv_path))
  assert [(c["clip_id"], c["labels"]["emotion"], c["labels"]["intensity"]) for c in clips] == [
      ("M003__001", "HAP", "HI"), ("M003__002", "SAD", "XX")]
  assert bad == [("M003/003.mp4", "not_in_labels_csv")]
  csv_path.write_text("file,actor\nx.mp4,A\n")
  with pytest.raises(UserError, match="lacks column"):
    pp.list_clips(str(src), str(csv_path))
  csv_path.write_text("file,emotion,actor\nM003/001.mp4,bored,M003\n")
  with pytest.raises(UserError, match="line 2"):
    pp.list_clips(str(src), str(csv_path))


def test_cli_user_errors(tmp_path, capsys):
  assert pp.main(["--src", str(tmp_path / "missing"), "--data-dir", str(tmp_path / "d")]) == 2
  assert "is not a directory" in capsys.readouterr().err
  (tmp_path / "empty").mkdir()
  assert pp.main(["--src", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "d")]) == 2
  assert "no videos" in capsys.readouterr().err
  assert pp.main(["--src", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "d"), "--detector", "s3fd"]) == 2
  assert "s3fd-619a316812.pth" in capsys.readouterr().err
  assert pp.main(["--src", ".", "--data-dir", str(tmp_path / "d"), "--shard-index", "3", "--num-shards", "2"]) == 2
  capsys.readouterr()
  for bad in ("0", "1.5"):
    assert pp.main(["--src", ".", "--data-dir", str(tmp_path / "d"), "--min-face", bad]) == 2
    assert f"--min-face {float(bad)} must be a fraction" in capsys.readouterr().err
  assert pp.main(["--src", ".", "--data-dir", str(tmp_path / "d"), "--detector", "s3fd",
                  "--min-face", "0.3"]) == 2
  assert "--min-face applies to --detector haar only" in capsys.readouterr().err


def test_random_split_reuses_the_cache(data, tmp_path):
  out = tmp_path / "random"
  proc = fx.run_preprocess(["--src", data["src"], "--data-dir", str(out), "--cache-dir", data["cache_dir"],
                            "--split", "random", "--jobs", "1"])
  r = _report(str(out))
  assert r["processed_this_run"] == 0 and r["split_mode"] == "random" and r["split_seed"] == 42
  n = sum(_report(data["data_dir"])["clips_written"].values())
  held = max(1, round(0.05 * n))
  assert r["clips_written"] == {"train": n - held, "validation": held, "test": held}
  val, test, train = (_records(str(out), s) for s in ("validation", "test", "train"))
  assert set(val) == set(test) and not set(val) & set(train)
  # other settings than the cache's are refused instead of mixing crops
  bad = fx.run_preprocess(["--src", data["src"], "--data-dir", str(out), "--cache-dir", data["cache_dir"],
                           "--pads", "0", "0", "0", "0"], check=False)
  assert bad.returncode == 2 and "other settings" in bad.stderr
  # A cache made before --min-face and --search existed was made with their defaults, and is
  # reused as such; another --min-face or --search is other settings.
  cache = tmp_path / "cache"
  shutil.copytree(data["cache_dir"], cache)
  with open(cache / "settings.json") as f:
    settings = json.load(f)
  assert settings.pop("min_face") == pp.MIN_FACE and settings.pop("search") == "full"
  with open(cache / "settings.json", "w") as f:
    json.dump(settings, f)
  old = fx.run_preprocess(["--src", data["src"], "--data-dir", str(tmp_path / "old"), "--cache-dir",
                           str(cache), "--jobs", "1"])
  assert _report(str(tmp_path / "old"))["processed_this_run"] == 0, old.stdout
  coarse = fx.run_preprocess(["--src", data["src"], "--data-dir", str(tmp_path / "old"),
                              "--cache-dir", str(cache), "--min-face", "0.3"], check=False)
  assert coarse.returncode == 2 and "other settings: min_face 0.1 (now 0.3)" in coarse.stderr, coarse.stderr
  tracked = fx.run_preprocess(["--src", data["src"], "--data-dir", str(tmp_path / "old"),
                               "--cache-dir", str(cache), "--search", "track"], check=False)
  assert tracked.returncode == 2 and "search 'full' (now 'track')" in tracked.stderr, tracked.stderr


def test_killed_preprocess_resumes_without_redoing_clips(data, tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  good = sorted(data["good"])[:3]
  for p in good:
    shutil.copy(p, src)
  out = tmp_path / "data"
  clips_dir = out / "cache" / "clips"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.Popen([sys.executable, "-m", "data_tools.preprocess", "--src", str(src), "--data-dir",
                           str(out), "--jobs", "1"], cwd=fx.REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while len(glob.glob(str(clips_dir / "*.json"))) < 1 and time.time() < deadline and proc.poll() is None:
      time.sleep(0.05)
    assert proc.poll() is None, "preprocess finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  finished = [p[:-len(".json")] for p in glob.glob(str(clips_dir / "*.json"))]
  done = {p + ext: os.stat(p + ext).st_mtime_ns for p in finished for ext in (".json", ".pkl")}
  n_done = len(finished)
  assert 1 <= n_done < len(good)
  assert not (out / "emogen_clips").exists()
  fx.run_preprocess(["--src", str(src), "--data-dir", str(out), "--jobs", "2"])
  r = _report(str(out))
  assert r["reused_from_cache"] == n_done and r["processed_this_run"] == len(good) - n_done
  assert sum(r["clips_written"].values()) == len(good)
  for p, mtime in done.items():  # finished clips were not rewritten
    assert os.stat(p).st_mtime_ns == mtime, p
  assert len(glob.glob(str(clips_dir / "*.json"))) == len(good)


def test_a_30fps_clip_is_usable_after_convert_fps(data, tmp_path):
  convert_fps = pytest.importorskip("data_tools.convert_fps")
  src = os.path.join(data["src"], fx.FPS30 + ".mp4")
  frames30, fps30 = pp.read_frames(src)
  assert fps30 == 30
  out = str(tmp_path / (fx.FPS30 + ".mp4"))
  convert_fps.convert_one(src, out, 25)
  clip = {"path": out, "rel": os.path.basename(out), "clip_id": fx.FPS30,
          "labels": pp.parse_crema_name(fx.FPS30)}
  opts = {"pads": (0, 10, 0, 0), "smooth": True, "detect_every": 1, "size": 96, "jpeg_quality": 95,
          "max_missing": 0.2}
  rec = pp.process_clip(clip, face_detection.make_detector("haar"), opts)
  assert rec["status"] == "ok", rec
  assert abs(len(rec["frames"]) - len(frames30) * 25 / 30) <= 1
  assert rec["valid"].all()
  # the audio still spans the video: 80 mel steps per second of 25 frames
  assert abs(rec["mel"].shape[1] - 1 - len(rec["frames"]) * 80 / 25) <= 8
