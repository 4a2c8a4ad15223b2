"""Videos -> face crops + mels -> TFDS shards (the ``emogen_clips`` dataset) under --data-dir.

    python -m data_tools.preprocess --src VIDEOS --data-dir DATA [--detector haar|s3fd
        --s3fd-weights F] [--min-face 0.1] [--search full|track] [--pads 0 10 0 0] [--no-smooth] [--size 96] [--split actor|random]
        [--seed S] [--labels-csv F] [--jobs N] [--shard-index i --num-shards n]

Stage 1 (parallel over all cores, resumable): per clip, decode the frames (25 fps
expected; others are skipped with a hint to run data_tools.convert_fps), detect a face
box per frame (or every k-th with --detect-every k, interpolated), pad + clamp + smooth
the boxes, crop + resize to --size, JPEG-encode; audio -> 16 kHz mono -> log-mel.
Frames without a face keep an interpolated crop and are marked invalid (never removed,
so video and audio stay aligned); a clip is skipped when too many frames lack a face
(--max-missing), or it is too short for a training window. A finished clip is one file
``DATA/cache/clips/<clip_id>.pkl`` plus its summary ``<clip_id>.json``, each renamed into
place atomically, so killing and rerunning loses nothing and redoes nothing. With
``--shard-index/--num-shards`` each machine processes its part of the clip list into a
shared (or later merged) cache; a final run without them builds the dataset.

Stage 2: the TFDS builder (data_tools.emogen_dataset, manual dir = the cache) writes
TFRecord shards to DATA/emogen_clips/<version>/, split train/validation/test
actor-disjoint (default, 80/10/10 of the actors, seeded) or like the original (random
95/5 of clips, seed 42, validation = test = the 5%).

Ends with a report (stdout and DATA/preprocess_report.json): clips per split, clips
skipped by reason, frames-per-clip statistics.

The defaults crop like the original's inference (pads 0 10 0 0, boxes smoothed over 5
frames) so that training and inference crops agree; the original's preprocessing used
raw unpadded, unsmoothed boxes: ``--pads 0 0 0 0 --no-smooth`` reproduces it.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import pickle
import re
import shutil
import sys
import time
from typing import Optional

import numpy as np

from emogen_jax.data.emotions import EMOTIONS, INTENSITIES
from emogen_jax.data import files as files_lib
from emogen_jax.data import timing
from emogen_jax.errors import ArgumentParser, UserError, cli_main

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".flv", ".webm", ".mpg", ".mpeg", ".m4v")
FPS = 25.0
WINDOW = timing.FRAMES_PER_WINDOW  # frames per training window
MIN_FRAMES = 3 * WINDOW + 1  # the original skips clips with <= 3 * T frames
CREMA_RE = re.compile(r"^(?P<actor>[^_]+)_(?P<sentence>[^_]+)_(?P<emotion>[A-Za-z]{3})_(?P<intensity>[A-Za-z]{2})$")
SETTINGS_KEYS = ("detector", "pads", "smooth", "size", "detect_every", "max_missing", "min_face",
                 "search")
MIN_FACE = 0.1  # the Haar detector's default smallest face, a fraction of the frame's short side


# ------------------------------------------------------------------------- window rules


def window_starts(valid: np.ndarray, mel_steps: int, task: str = "generator") -> np.ndarray:
  """Start frames f usable for ``task``'s target window, as a bool mask over frames.

  All tasks need frames f..f+4 to exist and be valid. "syncnet" also needs the mel
  window of f inside the mel; "generator" needs f >= 1 and the per-frame mel windows of
  frames f-1..f+3 inside (the last one is the binding one); "emotion"/"any" nothing more.
  The input pipeline implements the same rule with TF ops.
  """
  valid = np.asarray(valid, bool)
  n = valid.shape[0]
  ok = np.zeros((n,), bool)
  for f in range(n - WINDOW + 1):
    ok[f] = valid[f:f + WINDOW].all()
  f = np.arange(n)
  fits = lambda fr: timing.window_fits(fr, mel_steps)
  if task == "syncnet":
    ok &= fits(f)
  elif task == "generator":
    ok &= (f >= 1) & fits(f + 3)
  elif task not in ("emotion", "any"):
    raise ValueError(f"unknown task {task!r}")
  return ok


def clip_is_usable(valid: np.ndarray, mel_steps: int) -> bool:
  """> 15 frames, a generator/SyncNet target window, and a second window to sample against."""
  return (len(valid) >= MIN_FRAMES and window_starts(valid, mel_steps, "generator").any()
          and window_starts(valid, mel_steps, "any").sum() >= 2)


# ------------------------------------------------------------------------- labels


def parse_crema_name(stem: str) -> Optional[dict]:
  """'1001_DFA_ANG_XX' -> {actor, sentence, emotion, intensity}; None when it does not parse."""
  m = CREMA_RE.match(stem)
  if not m:
    return None
  emo, inten = m["emotion"].upper(), m["intensity"].upper()
  if emo not in EMOTIONS or inten not in INTENSITIES:
    return None
  return {"actor": m["actor"], "sentence": m["sentence"], "emotion": emo, "intensity": inten}


def read_labels_csv(path: str) -> dict:
  """CSV with columns file, emotion, actor[, sentence, intensity] -> {file key: labels}.

  ``file`` may be a path relative to --src or a bare file name or stem; emotion a code
  (ANG) or name (angry/anger are accepted as in emotions.emotion_id).
  """
  from emogen_jax.data.emotions import emotion_id
  if not os.path.isfile(path):
    raise UserError(f"labels CSV {path} not found; give a CSV with columns file,emotion,actor")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    cols = set(reader.fieldnames or [])
    missing = {"file", "emotion", "actor"} - cols
    if missing:
      raise UserError(f"labels CSV {path} lacks column(s) {', '.join(sorted(missing))}; "
                      "needed: file, emotion, actor (optional: sentence, intensity)")
    out = {}
    for i, row in enumerate(reader, start=2):
      emo = row["emotion"].strip()
      if emo.lower() == "angry":
        emo = "ANG"
      try:
        code = EMOTIONS[emotion_id(emo)]
      except UserError as e:
        raise UserError(f"labels CSV {path} line {i}: {e}") from None
      inten = (row.get("intensity") or "XX").strip().upper() or "XX"
      if inten not in INTENSITIES:
        raise UserError(f"labels CSV {path} line {i}: intensity {inten!r} is not one of "
                        f"{', '.join(INTENSITIES)}")
      out[row["file"].strip()] = {"actor": row["actor"].strip(), "emotion": code,
                                  "sentence": (row.get("sentence") or "").strip() or "NA",
                                  "intensity": inten}
  return out


def clip_id_for(rel: str) -> str:
  """A file-system-safe clip id: the relative path without extension, '/' -> '__'."""
  return re.sub(r"[^A-Za-z0-9_.-]", "-", os.path.splitext(rel)[0].replace(os.sep, "__"))


def list_clips(src: str, labels_csv: Optional[str]):
  """-> (clips: list of dict(path, rel, clip_id, labels), bad: list of (rel, reason))."""
  if not os.path.isdir(src):
    raise UserError(f"--src {src} is not a directory; give the folder holding the videos")
  rels = []
  for root, _, files in os.walk(src):
    for name in files:
      if name.lower().endswith(VIDEO_EXTS):
        rels.append(os.path.relpath(os.path.join(root, name), src))
  rels.sort()
  if not rels:
    raise UserError(f"no videos ({', '.join(VIDEO_EXTS)}) under --src {src}")
  table = read_labels_csv(labels_csv) if labels_csv else None
  clips, bad, seen = [], [], set()
  for rel in rels:
    stem = os.path.splitext(os.path.basename(rel))[0]
    if table is not None:
      labels = table.get(rel) or table.get(os.path.basename(rel)) or table.get(stem)
      reason = "not_in_labels_csv"
    else:
      labels = parse_crema_name(stem)
      reason = "bad_name"
    if labels is None:
      bad.append((rel, reason))
      continue
    cid = clip_id_for(rel) if table is not None else stem
    if cid in seen:
      bad.append((rel, "duplicate_clip_id"))
      continue
    seen.add(cid)
    clips.append({"path": os.path.join(src, rel), "rel": rel, "clip_id": cid, "labels": labels})
  return clips, bad


# ------------------------------------------------------------------------- stage 1


def read_frames(path: str):
  """-> (list of BGR frames, fps); ([], 0) when OpenCV cannot read it. (Tests and short clips;
  ``process_clip`` streams instead.)"""
  import cv2
  from emogen_jax.data.video_io import capture_frames
  cap = cv2.VideoCapture(path)
  if not cap.isOpened():
    return [], 0.0
  fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
  return list(capture_frames(cap)), fps


def _video_header(path: str) -> tuple[float, bool]:
  """(the frame rate OpenCV reads, whether a first frame decodes); (0, False) when unopenable."""
  import cv2
  cap = cv2.VideoCapture(path)
  try:
    if not cap.isOpened():
      return 0.0, False
    return float(cap.get(cv2.CAP_PROP_FPS) or 0.0), bool(cap.read()[0])
  finally:
    cap.release()


def peak_rss_mb() -> float:
  """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def process_clip(clip: dict, detector, opts: dict) -> dict:
  """One clip -> cache record: {"status": "ok", frames (JPEG bytes), valid, mel, labels...}
  or {"status": "skipped", "reason": ..., "detail": ...}. Never raises for bad input.

  The video is decoded twice as a stream (boxes first, then the crops), never held whole:
  a job's memory does not grow with the clip's length beyond the JPEG crops it returns.
  """
  import cv2
  from emogen_jax.data import audio, face_detection
  from emogen_jax.data.video_io import iter_video
  base = {"clip_id": clip["clip_id"], "rel": clip["rel"], **clip["labels"]}
  skip = lambda reason, detail="": {**base, "status": "skipped", "reason": reason, "detail": detail}
  fps, readable = _video_header(clip["path"])
  if not readable:
    return skip("unreadable", "OpenCV decoded no frames")
  if abs(fps - FPS) > 0.01:
    return skip("not_25fps", f"{fps:.3f} fps; convert with python -m data_tools.convert_fps")
  boxes, found = face_detection.face_boxes(iter_video(clip["path"]), detector, pads=opts["pads"],
                                           smooth=opts["smooth"], detect_every=opts["detect_every"],
                                           track=opts.get("search") == "track")
  n, n_found = len(found), int(found.sum())
  if n < MIN_FRAMES:
    return skip("too_short", f"{n} frames < {MIN_FRAMES}")
  try:
    mel = audio.melspectrogram(audio.load_wav(clip["path"]))
  except Exception as e:  # UserError (no/empty audio stream) or a decoder failure
    return skip("no_audio", str(e).splitlines()[0] if str(e) else type(e).__name__)
  if n_found == 0:
    return skip("no_face", f"no face in any of {n} frames")
  if n - n_found > opts["max_missing"] * n:
    return skip("too_many_missing_faces", f"no face in {n - n_found} of {n} frames")
  if not clip_is_usable(found, mel.shape[1]):
    return skip("too_short", f"no usable window ({n} frames, {n_found} with a face, "
                f"{mel.shape[1]} mel steps)")
  jpegs = []
  for frame, box in zip(iter_video(clip["path"]), boxes):
    ok, buf = cv2.imencode(".jpg", face_detection.crop_face(frame, box, opts["size"]),
                           [cv2.IMWRITE_JPEG_QUALITY, opts["jpeg_quality"]])
    jpegs.append(buf.tobytes())
  if len(jpegs) != n:  # the file changed between the two passes
    return skip("unreadable", f"{n} frames decoded first, {len(jpegs)} the second time")
  return {**base, "status": "ok", "frames": jpegs, "valid": found, "mel": mel,
          "boxes": np.asarray(boxes, np.int32), "fps": fps}


_WORKER = {}


def _detector_kwargs(name: str, min_face: float) -> dict:
  return {"min_size_frac": min_face} if name == "haar" else {}


def _init_worker(opts):
  import cv2
  cv2.setNumThreads(1)  # one clip per core; OpenCV's own threads would oversubscribe
  from emogen_jax.data.face_detection import make_detector
  _WORKER["opts"] = opts
  _WORKER["detector"] = make_detector(opts["detector"], weights=opts["s3fd_weights"],
                                      **_detector_kwargs(opts["detector"], opts["min_face"]))


def _run_one(clip) -> dict:
  opts = _WORKER["opts"]
  try:
    rec = process_clip(clip, _WORKER["detector"], opts)
  except Exception as e:  # an unexpected failure on one clip must not stop the corpus
    rec = {"clip_id": clip["clip_id"], "rel": clip["rel"], **clip["labels"], "status": "skipped",
           "reason": "error", "detail": f"{type(e).__name__}: {e}"}
  summary = {k: v for k, v in rec.items() if k not in ("frames", "valid", "mel", "boxes")}
  summary["peak_rss_mb"] = round(peak_rss_mb(), 1)  # of the job (worker process) so far
  if rec["status"] == "ok":
    summary.update(num_frames=len(rec["frames"]), num_valid=int(np.sum(rec["valid"])))
  clips_dir = opts["clips_dir"]
  # The pickle first, the summary last: a clip counts as done once its .json exists.
  files_lib.write_file(os.path.join(clips_dir, f"{clip['clip_id']}.pkl"), pickle.dumps(rec, protocol=4))
  files_lib.write_file(os.path.join(clips_dir, f"{clip['clip_id']}.json"), json.dumps(summary))
  return summary


def run_stage1(clips, opts, jobs: int, log=print):
  """Processes the clips not yet in the cache; returns (summaries of all clips, n done now)."""
  clips_dir = opts["clips_dir"]
  os.makedirs(clips_dir, exist_ok=True)
  done, todo = {}, []
  for c in clips:
    p = os.path.join(clips_dir, f"{c['clip_id']}.json")
    if os.path.exists(p):
      with open(p) as f:
        done[c["clip_id"]] = json.load(f)
    else:
      todo.append(c)
  log(f"stage 1: {len(clips)} clips, {len(done)} already cached, {len(todo)} to process "
      f"on {jobs} process(es)")
  t0 = time.time()
  if todo:
    if jobs <= 1:
      _init_worker(opts)
      results = map(_run_one, todo)
      pool = None
    else:
      # fork: workers inherit the parsed clip list cheaply; TensorFlow is not imported yet.
      pool = multiprocessing.get_context("fork").Pool(jobs, _init_worker, (opts,))
      results = pool.imap_unordered(_run_one, todo, chunksize=1)
    try:
      for i, s in enumerate(results, 1):
        done[s["clip_id"]] = s
        if i % 50 == 0 or i == len(todo):
          rate = i / max(time.time() - t0, 1e-9)
          log(f"  {i}/{len(todo)} clips ({rate:.2f} clips/s)")
    finally:
      if pool is not None:
        pool.close()
        pool.join()
  return [done[c["clip_id"]] for c in clips], len(todo)


# ------------------------------------------------------------------------- splits


def assign_splits(summaries, mode: str, seed: int) -> dict:
  """{split: sorted clip ids} over the usable clips.

  "actor": actors shuffled with ``seed`` and cut 80/10/10 (at least one actor in
  validation and in test when there are >= 3 actors); no actor in two splits.
  "random": the original's protocol, 95/5 of clips at random; validation = test = the 5%.
  """
  ok = sorted((s for s in summaries if s["status"] == "ok"), key=lambda s: s["clip_id"])
  rng = np.random.RandomState(seed)
  if mode == "actor":
    actors = sorted({s["actor"] for s in ok})
    rng.shuffle(actors)
    n = len(actors)
    n_val = n_test = max(1, int(round(0.1 * n))) if n >= 3 else 0
    if n == 2:
      n_val = 1
    val, test = set(actors[:n_val]), set(actors[n_val:n_val + n_test])
    split_of = lambda s: "validation" if s["actor"] in val else "test" if s["actor"] in test else "train"
    out = {"train": [], "validation": [], "test": []}
    for s in ok:
      out[split_of(s)].append(s["clip_id"])
    return out
  if mode == "random":
    ids = [s["clip_id"] for s in ok]
    perm = rng.permutation(len(ids))
    n_held = max(1, int(round(0.05 * len(ids)))) if len(ids) >= 2 else 0
    held = sorted(ids[i] for i in perm[:n_held])
    return {"train": sorted(ids[i] for i in perm[n_held:]), "validation": held, "test": list(held)}
  raise UserError(f"unknown --split {mode!r}; use actor or random")


# ------------------------------------------------------------------------- stage 2


def build_dataset(data_dir: str, cache_dir: str, log=print) -> str:
  """Writes the TFDS shards from the cache (replacing an older build); returns the dataset dir."""
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  import tensorflow_datasets as tfds
  from data_tools.emogen_dataset import EmogenClips, NAME, VERSION
  out = os.path.join(data_dir, NAME, VERSION)
  if os.path.isdir(out):
    shutil.rmtree(out)  # splits or clips may have changed; the build is cheap next to stage 1
  builder = EmogenClips(data_dir=data_dir, file_format="tfrecord")
  # TFDS's progress bars redraw with carriage returns: in a log file (the quickstart's, CI's) they
  # become a screen of fragments; shown only on a terminal.
  tfds.display_progress_bar(sys.stderr.isatty())
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=cache_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  log(f"stage 2: wrote {out}")
  return out


def _stats(values):
  if not values:
    return {}
  v = np.asarray(values, np.float64)
  return {"min": int(v.min()), "mean": round(float(v.mean()), 2), "median": float(np.median(v)),
          "max": int(v.max())}


def make_report(summaries, bad_inputs, splits, processed_now, opts) -> dict:
  ok = [s for s in summaries if s["status"] == "ok"]
  skipped = [s for s in summaries if s["status"] != "ok"]
  reasons = {}
  for s in skipped:
    reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
  for _, r in bad_inputs:
    reasons[r] = reasons.get(r, 0) + 1
  by_id = {s["clip_id"]: s for s in ok}
  return {
      "clips_found": len(summaries) + len(bad_inputs),
      "clips_written": {k: len(v) for k, v in splits.items()},
      "actors": {k: sorted({by_id[c]["actor"] for c in v}) for k, v in splits.items()},
      "clips_skipped": sum(reasons.values()),
      "skipped_by_reason": dict(sorted(reasons.items())),
      "skipped": ([{"clip": s["rel"], "reason": s["reason"], "detail": s.get("detail", "")}
                   for s in skipped] + [{"clip": r, "reason": why, "detail": ""} for r, why in bad_inputs]),
      "frames_per_clip": _stats([s["num_frames"] for s in ok]),
      "valid_frames_per_clip": _stats([s["num_valid"] for s in ok]),
      "clips_with_missing_faces": sum(s["num_frames"] != s["num_valid"] for s in ok),
      # Peak resident memory of the job (worker process) that processed a clip, over the clips
      # processed since the summaries carry it; clips are streamed, so it does not grow with length.
      "peak_memory_per_job_mb": _stats([s["peak_rss_mb"] for s in summaries if "peak_rss_mb" in s]),
      "processed_this_run": processed_now,
      "reused_from_cache": len(summaries) - processed_now,
      "settings": {k: opts[k] for k in SETTINGS_KEYS},
  }


# ------------------------------------------------------------------------- CLI


def _parser() -> ArgumentParser:
  from emogen_jax.data.face_detection import SEARCHES
  p = ArgumentParser(prog="python -m data_tools.preprocess", description=__doc__.split("\n")[0])
  p.add_argument("--src", required=True, help="folder of 25 fps videos (searched recursively)")
  p.add_argument("--data-dir", required=True, help="output: TFDS dataset, cache/ and the report")
  p.add_argument("--cache-dir", default=None, help="per-clip cache (default DATA_DIR/cache)")
  p.add_argument("--detector", default="haar", choices=("haar", "s3fd"))
  p.add_argument("--s3fd-weights", default=None, help="S3FD weights file (s3fd-619a316812.pth)")
  p.add_argument("--pads", type=int, nargs=4, default=(0, 10, 0, 0), metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"))
  p.add_argument("--no-smooth", action="store_true", help="do not average boxes over 5 frames")
  p.add_argument("--size", type=int, default=96, help="crop size (96 for the models)")
  p.add_argument("--detect-every", type=int, default=1, help="detect every k-th frame, interpolate the rest")
  p.add_argument("--min-face", type=float, default=MIN_FACE, metavar="FRAC",
                 help="haar: the smallest face searched for, as a fraction of the frame's shorter "
                      "side (default %(default)s; where faces fill the frame, e.g. 0.3, detection "
                      "runs ~1.7x faster)")
  p.add_argument("--search", default="full", choices=SEARCHES,
                 help="haar: full (default) searches every whole frame; track searches each frame "
                      "near the face of the one before (whole every 16th detection and where the "
                      "face is not near), ~3-5x cheaper, boxes as close to the face")
  p.add_argument("--max-missing", type=float, default=0.2,
                 help="skip a clip when more than this fraction of its frames has no face")
  p.add_argument("--jpeg-quality", type=int, default=95)
  p.add_argument("--split", default="actor", choices=("actor", "random"))
  p.add_argument("--seed", type=int, default=None, help="split seed (default 0 for actor, 42 for random)")
  p.add_argument("--labels-csv", default=None, help="CSV file,emotion,actor[,sentence,intensity] instead of CREMA-D names")
  p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
  p.add_argument("--shard-index", type=int, default=0)
  p.add_argument("--num-shards", type=int, default=1)
  p.add_argument("--stage", default="all", choices=("all", "cache", "build"),
                 help="cache: only stage 1; build: only stage 2 from a complete cache")
  return p


@cli_main
def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
    raise UserError(f"--shard-index {args.shard_index} must be in [0, --num-shards {args.num_shards})")
  if args.size < 16:
    raise UserError(f"--size {args.size} is too small; use 96")
  if args.detect_every < 1:
    raise UserError("--detect-every must be >= 1")
  if not 0.0 < args.min_face < 1.0:
    raise UserError(f"--min-face {args.min_face} must be a fraction of the frame's shorter side, "
                    "in (0, 1), e.g. 0.1")
  if args.detector != "haar" and args.min_face != MIN_FACE:
    raise UserError("--min-face applies to --detector haar only (S3FD searches every size)")
  if not 0.0 <= args.max_missing < 1.0:
    raise UserError("--max-missing must be in [0, 1)")
  if args.jobs < 1:
    raise UserError("--jobs must be >= 1")
  if min(args.pads) < 0:
    raise UserError(f"--pads {' '.join(map(str, args.pads))}: pads must not be negative (they are "
                    "pixels ADDED around the detected face: top bottom left right)")
  data_dir = files_lib.check_output_dir(args.data_dir, "--data-dir", "dataset folder")
  cache_dir = files_lib.check_output_dir(args.cache_dir or os.path.join(data_dir, "cache"),
                                         "--cache-dir", "preprocessing cache")
  if args.s3fd_weights:
    args.s3fd_weights = files_lib.input_file(args.s3fd_weights, "--s3fd-weights",
                                             "give the path of s3fd-619a316812.pth")
  if args.labels_csv:
    args.labels_csv = files_lib.input_file(args.labels_csv, "--labels-csv",
                                           "give a CSV with columns file,emotion,actor")
  # Fail on a bad detector choice before any work (and before forking workers).
  from emogen_jax.data.face_detection import make_detector
  make_detector(args.detector, weights=args.s3fd_weights, **_detector_kwargs(args.detector, args.min_face))
  # The inputs are listed before anything is created: a bad --src leaves no folder behind.
  clips, bad = list_clips(files_lib.user_path(args.src), args.labels_csv)

  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create {cache_dir} ({e.strerror}); choose a writable --data-dir") from None
  opts = {"detector": args.detector, "s3fd_weights": args.s3fd_weights, "pads": list(args.pads),
          "smooth": not args.no_smooth, "size": args.size, "detect_every": args.detect_every,
          "max_missing": args.max_missing, "min_face": args.min_face, "search": args.search,
          "jpeg_quality": args.jpeg_quality,
          "clips_dir": os.path.join(cache_dir, "clips")}
  settings_path = os.path.join(cache_dir, "settings.json")
  settings = {k: opts[k] for k in SETTINGS_KEYS}
  if os.path.exists(settings_path):
    with open(settings_path) as f:
      old = json.load(f)
    old.setdefault("min_face", MIN_FACE)  # caches made before the option had the default
    old.setdefault("search", "full")
    if old != settings:
      diff = ", ".join(f"{k} {old.get(k)!r} (now {settings[k]!r})" for k in settings
                       if old.get(k) != settings[k])
      raise UserError(f"the cache {cache_dir} was made with other settings: {diff}; rerun with "
                      "the same flags, or delete the cache (or pass another --cache-dir)")
  else:
    files_lib.write_file(settings_path, json.dumps(settings))

  for rel, why in bad:
    print(f"skip {rel}: {why}", file=sys.stderr)
  if args.stage != "build":
    mine = clips[args.shard_index::args.num_shards]
    summaries, processed_now = run_stage1(mine, opts, args.jobs)
    if args.num_shards > 1 or args.stage == "cache":
      n_ok = sum(s["status"] == "ok" for s in summaries)
      print(f"stage 1 done for shard {args.shard_index}/{args.num_shards}: {n_ok} usable of "
            f"{len(mine)} clips in {cache_dir}; when every shard is done, run again without "
            "--shard-index/--num-shards (or with --stage build) to write the dataset")
      return 0
  else:
    summaries, processed_now = [], 0
    for c in clips:
      p = os.path.join(opts["clips_dir"], f"{c['clip_id']}.json")
      if not os.path.exists(p):
        raise UserError(f"clip {c['rel']} is not in the cache {cache_dir}; run stage 1 for it first")
      with open(p) as f:
        summaries.append(json.load(f))

  other_fps = sum(s.get("reason") == "not_25fps" for s in summaries)
  if other_fps:
    print(f"warning: {other_fps} clip(s) are not 25 fps and were skipped; convert them with "
          "python -m data_tools.convert_fps and rerun", file=sys.stderr)
  seed = args.seed if args.seed is not None else (0 if args.split == "actor" else 42)
  splits = assign_splits(summaries, args.split, seed)
  if not splits["train"]:
    reasons = {}
    for s in summaries:
      if s["status"] != "ok":
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    raise UserError(f"no usable clip in {args.src} (skipped: {reasons or dict(bad) or 'none'}); "
                    "check the videos (25 fps, a visible face, audio)")
  files_lib.write_file(os.path.join(cache_dir, "splits.json"), json.dumps(splits))
  build_dataset(data_dir, cache_dir)
  report = make_report(summaries, bad, splits, processed_now, opts)
  report["split_mode"], report["split_seed"] = args.split, seed
  files_lib.write_file(os.path.join(data_dir, "preprocess_report.json"), json.dumps(report, indent=1))
  brief = {k: v for k, v in report.items() if k not in ("skipped", "actors")}
  print(json.dumps(brief, indent=1))
  print(f"report: {os.path.join(data_dir, 'preprocess_report.json')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
