"""The whole recipe end to end on a small synthetic corpus, on a CPU, in one command.

    python -m emogen_jax.quickstart --out quickstart_out      (or: bash scripts/quickstart.sh)

Stages (each one the library call behind the named CLI; a rerun with the same --out skips what
is finished and resumes an interrupted training):
  1. corpus      data_tools.make_synthetic: CREMA-D-like clips <Actor>_<Sentence>_<EMO>_<INT>.mp4
  2. 25 fps      data_tools.convert_fps: the re-encode every real corpus needs (a no-op in effect
                 here: the synthetic clips are already 25 fps)
  3. preprocess  data_tools.preprocess (Haar face boxes, 96x96 crops, mels, TFDS shards,
                 actor-disjoint train/validation/test splits)
  4. training    the lip-sync expert, the emotion discriminator, then EmoGen using both
                 (emogen_jax.train.recipe.train_stages with the configs/*.py:smoke settings, width 0.25;
                 two emotion classifiers: the in-training one and the independent judge)
  5. demo        emogen_jax.inference.api: a held-out (test-split) clip re-voiced with its own audio in all
                 six emotions side by side, and a PNG contact sheet of it (a row per emotion)
  6. emotion     emogen_jax.evaluate on the test actors: EmoAcc judged by the independent
                 classifier (and the in-training one), with the clips' own frames and with the
                 actor's neutral clip as the reference
Ends with DIR/summary.json and DIR/summary.md: where every output is, the validation figures
against the learnability targets and the wall time of each stage.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import sys
import threading
import time
from typing import Any, Callable

from emogen_jax import onednn_conv
from emogen_jax.data import files
from emogen_jax.errors import ArgumentParser, UserError, cli_main

# The learnability recipe (emogen_jax.train.recipe.TARGETS), measured on the idle
# 2-core CPU: 16 actors leave 12 for training and 2 each for validation and test; with fewer
# (6 actors: 4 for training) the emotion disc memorises identities and SyncNet learns slower.
# EmoGen: 450 steps of batch 8 (configs/emogen.py:smoke). The labels are learned in an order
# that differs between corpora, and which label comes last moves with the smallest change
# upstream (docs/design.md "Emotion control"): at batch 4, 900-1000 steps passed on one seed-1
# upstream and left neutral or disgust under 20 % on another (one clip's face boxes 1 px off on
# 5 frames), 1200 passed on both; 450 steps of batch 8 (3600 examples against 4800) passed on
# both corpora with every label at 67 % or more, and on a harder third corpus (seed 2, weaker
# classifiers) with neutral at 33 %, where 1200 of batch 4 left it at 83 % (--emogen-steps).
DEFAULTS = {"actors": 16, "clips_per_actor": 12, "syncnet_steps": 3000, "emotion_steps": 800,
            "emogen_steps": 450}
STATE_FILE = "quickstart_state.json"
DEMO_NAME = "demo_all_emotions.mp4"
CONTACT_SHEET_NAME = "demo_contact_sheet.png"
EVAL_DIR = "eval_test"
# The stages that run inside the recipe's trainings, beside the expert's tail.
INSIDE = ("demo", "emotion_eval")
# EmoAcc over each test clip's first second (5 classifier windows): a clip is generated twelve
# times (six labels, two references), and its whole length (~2 s) doubled the stage's time.
EMOTION_FRAMES = 25
# Haar detection on every 2nd frame, the boxes between interpolated (then smoothed as always):
# detection was ~3/4 of a clip's preprocessing. On 24 clips of the quickstart corpus the boxes
# moved 0.83 px on average (at most 3 px) on ~120 px faces; detection 16.5 s -> 9.0 s.
DETECT_EVERY = 2
# The synthetic faces span more than half of the 160-px frame, so the Haar search skips faces
# under 30 % of it: on 590 frames of the quickstart corpus the same box on every frame (on all
# of the seed-1 corpus, one clip's boxes 1 px off on 5 frames), 18.3 -> 10.7 ms per detection
# (preprocess --min-face; its default 0.1 keeps small faces in real videos).
MIN_FACE = 0.3


# ------------------------------------------------------------------------------ feedback

def banner(text: str) -> None:
  line = "=" * min(100, len(text) + 8)
  print(f"\n{line}\n=== {text}\n{line}", flush=True)


# Held by a progress poller while it counts and draws: a fork (preprocess's worker pool) waits
# for it, so that no child starts with a stderr/tqdm lock taken by the poller thread.
_POLL_LOCK = threading.Lock()
os.register_at_fork(before=_POLL_LOCK.acquire, after_in_parent=_POLL_LOCK.release,
                    after_in_child=_POLL_LOCK.release)


@contextlib.contextmanager
def watch_files(pattern: str, total: int, desc: str, unit: str = "clip", enabled: bool = True):
  """A tqdm bar that counts files matching ``pattern`` while the body runs: for library calls that work in worker processes and report nothing until done."""
  from tqdm import tqdm
  bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
             dynamic_ncols=True)
  stop = threading.Event()

  def count() -> int:
    return min(total, len(glob.glob(pattern)))

  def poll():
    while not stop.wait(0.5):
      with _POLL_LOCK:
        bar.update(max(0, count() - bar.n))

  thread = threading.Thread(target=poll, daemon=True)
  thread.start()
  try:
    yield bar
  finally:
    stop.set()
    thread.join()
    bar.update(max(0, count() - bar.n))
    bar.close()


# ------------------------------------------------------------------------------ state

class _State:
  """DIR/quickstart_state.json: settings and the finished stages with their wall times."""

  def __init__(self, out_dir: str, settings: dict):
    self.path = os.path.join(out_dir, STATE_FILE)
    self.data: dict[str, Any] = {"settings": settings, "stages": {}}
    if os.path.isfile(self.path):
      with open(self.path) as f:
        old = json.load(f)
      for key in ("actors", "clips_per_actor", "seed"):
        if old["settings"].get(key) != settings[key]:
          raise UserError(f"{out_dir} holds a quickstart made with {key}={old['settings'].get(key)}, "
                          f"not {settings[key]}; rerun with the same settings or use another --out")
      self.data["stages"] = old.get("stages", {})

  def done(self, stage: str) -> bool:
    return bool(self.data["stages"].get(stage, {}).get("done"))

  def wall(self, stage: str) -> float:
    return float(self.data["stages"].get(stage, {}).get("wall_s", 0.0))

  def finish(self, stage: str, wall_s: float, **info) -> None:
    self.data["stages"][stage] = {"done": True, "wall_s": round(wall_s, 1), **info}
    files.write_file(self.path, json.dumps(self.data, indent=2))

  def mark(self, stage: str, **info) -> None:
    self.data["stages"][stage].update(info)
    files.write_file(self.path, json.dumps(self.data, indent=2))


# ------------------------------------------------------------------------------ stages

def _corpus(src: str, actors: int, clips_per_actor: int, seed: int, jobs: int | None,
            progress: bool) -> list[str]:
  from data_tools import make_synthetic
  total = actors * clips_per_actor
  with watch_files(os.path.join(src, "*.mp4"), total, "rendering clips", enabled=progress):
    paths = make_synthetic.make_corpus(src, num_actors=actors, clips_per_actor=clips_per_actor,
                                       seed=seed, jobs=jobs)
  print(f"wrote {len(paths)} clips to {src}", flush=True)
  return paths


def _convert(src: str, dst: str, jobs: int | None, progress: bool) -> dict:
  from data_tools import convert_fps
  total = len(convert_fps.find_videos(src))
  # Videos being written have hidden temporary names, which the pattern does not match.
  with watch_files(os.path.join(dst, "*.mp4"), total, "converting to 25 fps", enabled=progress):
    report = convert_fps.convert_dir(src, dst, fps=25, jobs=jobs)
  print(f"convert_fps: {report.summary()} -> {dst}", flush=True)
  if report.failed:
    raise UserError(f"convert_fps failed on {len(report.failed)} clip(s), first "
                    f"{report.failed[0][0]}: {report.failed[0][1]}")
  return {"converted": len(report.converted), "up_to_date": len(report.skipped)}


def _preprocess(src: str, data_dir: str, jobs: int | None, progress: bool) -> dict:
  from data_tools import convert_fps, preprocess
  total = len(convert_fps.find_videos(src))
  argv = ["--src", src, "--data-dir", data_dir, "--detector", "haar",
          "--detect-every", str(DETECT_EVERY), "--min-face", str(MIN_FACE),
          "--jobs", str(jobs or os.cpu_count() or 1)]
  print("python -m data_tools.preprocess " + " ".join(argv), flush=True)
  clips = os.path.join(data_dir, "cache", "clips", "*.json")
  with watch_files(clips, total, "face crops + mels", enabled=progress):
    # The undecorated CLI function: a UserError propagates to our caller instead of exiting.
    code = preprocess.main.__wrapped__(argv)
  if code:
    raise UserError(f"preprocessing {src} failed (exit status {code}); see the messages above")
  with open(os.path.join(data_dir, "preprocess_report.json")) as f:
    report = json.load(f)
  return {"clips_written": report["clips_written"], "clips_skipped": report["clips_skipped"],
          "skipped_by_reason": report["skipped_by_reason"]}


def demo_candidates(data_dir: str, split: str = "test") -> list[str]:
  """Clip ids of ``split`` whose every frame had a detected face (best inference inputs) first."""
  cache = os.path.join(data_dir, "cache")
  with open(os.path.join(cache, "splits.json")) as f:
    ids = json.load(f)[split]
  full, partial = [], []
  for cid in ids:
    with open(os.path.join(cache, "clips", f"{cid}.json")) as f:
      s = json.load(f)
    (full if s.get("num_valid") == s.get("num_frames") else partial).append(cid)
  return full + partial


def contact_sheet(frames: np.ndarray, names: list[str], per_row: int = 5) -> np.ndarray:
  """Demo frames (T, H, P*W, 3), P panels side by side -> one image, a row per panel (emotion)
  holding ``per_row`` frames evenly spaced over the clip, the emotion's name on the left."""
  import cv2
  import numpy as np
  p = len(names)
  t, h, w = frames.shape[0], frames.shape[1], frames.shape[2] // p
  picks = np.linspace(0, t - 1, min(per_row, t)).round().astype(int)
  label_w = 64
  rows = []
  for i, name in enumerate(names):
    label = np.full((h, label_w, 3), 255, np.uint8)
    cv2.putText(label, name, (6, h // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 2)
    rows.append(np.concatenate([label] + [frames[k][:, i * w:(i + 1) * w] for k in picks], axis=1))
  return np.concatenate(rows, axis=0)


def render_demo(workdir: str, data_dir: str, videos: str, out_path: str, emotion: str = "all",
                progress: bool = True, cpu_convolutions: str = "auto") -> dict:
  """The generator of ``workdir`` re-voicing a held-out clip (its face and its own audio)."""
  import cv2
  import numpy as np
  from emogen_jax.data.emotions import EMOTIONS, describe
  from emogen_jax.inference import api, renderer as infer
  if not os.path.isdir(workdir):
    raise UserError(f"generator workdir {workdir} not found; train EmoGen first")
  talking = api.TalkingFace.load(workdir, cpu_convolutions=cpu_convolutions)
  tried = []
  for split in ("test", "validation"):
    for cid in demo_candidates(data_dir, split):
      clip = os.path.join(videos, f"{cid}.mp4")
      if not os.path.isfile(clip):
        continue
      try:
        frames, fps = talking.generate(face=clip, audio=clip, emotion=emotion, progress=progress,
                                       on_no_face="error")  # a demo clip shows a face throughout
      except infer.NoFaceError as e:
        tried.append(f"{cid} (no face in frame {e.frame_index})")
        continue
      api.to_video(frames, clip, out_path, fps)
      # a panel's label: the code of one emotion (it fits the sheet's label column), else the mix
      names = [EMOTIONS[int(np.argmax(w))] if np.count_nonzero(w) == 1 else describe(w)
               for w in infer.parse_emotions(emotion)]
      sheet = os.path.join(os.path.dirname(out_path), CONTACT_SHEET_NAME)
      cv2.imwrite(sheet, contact_sheet(frames, names))
      return {"video": out_path, "contact_sheet": sheet, "source_clip": clip, "split": split,
              "frames": int(len(frames)), "width": int(frames.shape[2]),
              "height": int(frames.shape[1]), "fps": float(fps),
              "panel_width": int(frames.shape[2]) // max(1, len(names))}
  raise UserError(f"no held-out clip of {data_dir} could be used for the demo (tried: "
                  f"{', '.join(tried) or 'none'}); make a larger corpus (--actors)")


def emotion_eval(workdirs: dict, data_dir: str, out_dir: str, progress: bool = True) -> dict:
  """EmoAcc of the trained generator on the test actors (emogen_jax.evaluate with both
  classifiers): every test clip generated with each emotion over its own frames and over the
  actor's neutral clip's frames. Writes out_dir/metrics.{json,md}; returns the headline figures."""
  from emogen_jax.evaluation import evaluate as ev
  r = ev.evaluate(workdirs["emogen"], data_dir, "test", emotion_classifier=workdirs["emotion_disc"],
                  independent_classifier=workdirs["emotion_judge"], progress=progress,
                  emotion_frames=EMOTION_FRAMES)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(ev._json_safe(r), f, indent=2)
  with open(os.path.join(out_dir, "metrics.md"), "w") as f:
    f.write(ev.to_markdown(r))
  keys = ("clips", "neutral_reference_clips", "emotion_frames_per_clip", "psnr",
          "emo_acc_independent", "emo_acc_per_target_independent", "emo_confusion_independent",
          "emo_acc_independent_neutral_reference", "emo_acc_per_target_independent_neutral_reference",
          "emo_confusion_independent_neutral_reference",
          "classifier_acc_on_real_independent", "emo_acc", "classifier_acc_on_real")
  return {k: r[k] for k in keys if k in r}


# ------------------------------------------------------------------------------ the run

def run_quickstart(out_dir: str = "quickstart_out", *, actors: int = DEFAULTS["actors"],
                   clips_per_actor: int = DEFAULTS["clips_per_actor"],
                   syncnet_steps: int = DEFAULTS["syncnet_steps"],
                   emotion_steps: int = DEFAULTS["emotion_steps"],
                   emogen_steps: int = DEFAULTS["emogen_steps"], seed: int = 0,
                   width: float = 0.25, eval_batches: int = 0, jobs: int | None = None,
                   emotion: str = "all", progress: bool = True,
                   cpu_convolutions: str = "auto") -> dict:
  """Corpus -> 25 fps -> preprocess -> three trainings -> demo video; returns the summary
  (also written to out_dir/summary.json and summary.md). Finished stages are skipped."""
  from emogen_jax.data import emotions
  from emogen_jax.train import recipe as stages
  emotions.parse_emotions(emotion)  # a bad --emotion fails now, not after the training
  if actors < 3:
    raise UserError(f"--actors {actors}: the actor-disjoint split needs at least 3 actors "
                    "(train, validation, test)")
  if clips_per_actor < 1:
    raise UserError(f"--clips-per-actor {clips_per_actor} must be at least 1")
  t_start = time.time()
  out_dir = files.check_output_dir(out_dir, "--out", "quickstart folder")
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --out {out_dir} ({e.strerror}); choose a writable folder") from None
  paths = {"out": out_dir,
           "corpus": os.path.join(out_dir, "corpus"),
           "corpus_25fps": os.path.join(out_dir, "corpus_25fps"),
           "data_dir": os.path.join(out_dir, "data"),
           "workdirs": os.path.join(out_dir, "train"),
           "demo_video": os.path.join(out_dir, DEMO_NAME)}
  settings = {"actors": actors, "clips_per_actor": clips_per_actor, "seed": seed,
              "syncnet_steps": syncnet_steps, "emotion_steps": emotion_steps,
              "emogen_steps": emogen_steps, "width": width, "eval_batches": eval_batches}
  state = _State(out_dir, settings)
  walls: dict[str, float] = {}
  skipped: list[str] = []

  def step(name: str, title: str, fn: Callable[[], dict | None], redo: bool = False) -> None:
    banner(title)
    if state.done(name) and not redo:
      print(f"{name}: done in an earlier run; skipped", flush=True)
      walls[name] = state.wall(name)
      skipped.append(name)
      return
    t0 = time.time()
    info = fn() or {}
    walls[name] = round(time.time() - t0, 1)
    state.finish(name, walls[name], **info)
    print(f"{name}: {walls[name]:.1f} s", flush=True)

  n_clips = actors * clips_per_actor
  step("corpus", f"1/6 synthetic corpus: {actors} actors x {clips_per_actor} clips -> {paths['corpus']}",
       lambda: {"clips": len(_corpus(paths["corpus"], actors, clips_per_actor, seed, jobs, progress))})
  step("convert_fps", f"2/6 convert to 25 fps: {n_clips} clips -> {paths['corpus_25fps']}",
       lambda: _convert(paths["corpus"], paths["corpus_25fps"], jobs, progress))
  step("preprocess", f"3/6 preprocess (Haar faces, crops, mels, TFDS) -> {paths['data_dir']}",
       lambda: _preprocess(paths["corpus_25fps"], paths["data_dir"], jobs, progress))

  eval_dir = os.path.join(out_dir, EVAL_DIR)

  def demo_and_eval(workdirs: dict, emogen_trained: bool) -> None:
    def demo() -> dict:
      info = render_demo(workdirs["emogen"], paths["data_dir"], paths["corpus_25fps"],
                         paths["demo_video"], emotion=emotion, progress=progress,
                         cpu_convolutions=cpu_convolutions)
      # Stored relative to --out, so that a moved or copied output folder stays consistent.
      return {**info, "emotion": emotion, "video": os.path.relpath(info["video"], out_dir),
              "contact_sheet": os.path.relpath(info["contact_sheet"], out_dir),
              "source_clip": os.path.relpath(info["source_clip"], out_dir)}

    # A generator trained further in this run (more --emogen-steps), or another --emotion, gets
    # a new demo.
    old_emotion = state.data["stages"].get("demo", {}).get("emotion")
    step("demo", f"5/6 demo video ({emotion}) -> {paths['demo_video']}", demo,
         redo=emogen_trained or old_emotion != emotion)
    step("emotion_eval", f"6/6 EmoAcc on the held-out test actors (the judge and the in-training "
         f"classifier; own and NEUTRAL references) -> {eval_dir}",
         lambda: emotion_eval(workdirs, paths["data_dir"], eval_dir, progress),
         redo=emogen_trained)

  # The demo and the test evaluation need the generator, the disc and the judge but not the
  # expert: the recipe runs them as soon as EmoGen has trained, while the expert finishes beside
  # them at idle priority, and validates EmoGen after both (EmoGen's validation needs the expert).
  ran_beside: list[bool] = []

  def while_expert_finishes(workdirs: dict) -> None:
    banner("EmoGen trained: the demo and the test evaluation run while the expert finishes "
           "(at idle priority); EmoGen's validations follow")
    demo_and_eval(workdirs, emogen_trained=True)
    ran_beside.append(True)
    for name in INSIDE:  # their wall times are inside the trainings' (recipe.training_wall_s)
      state.mark(name, beside_expert=True)

  banner("4/6 training (configs/*.py:smoke, width %g)" % width)
  results = stages.train_stages(paths["data_dir"], paths["workdirs"], syncnet_steps=syncnet_steps,
                                emotion_steps=emotion_steps, emogen_steps=emogen_steps,
                                width=width, seed=seed, eval_batches=eval_batches,
                                progress=progress, banner=banner,
                                after_emogen_training=while_expert_finishes,
                                cpu_convolutions=cpu_convolutions)
  for name in stages.TRAININGS:
    walls[name] = results["wall_s"][name]
    if results["skipped"][name]:
      skipped.append(name)
  if not ran_beside:
    demo_and_eval(results["workdirs"], emogen_trained=not results["skipped"]["emogen"])
  inside = [k for k in INSIDE if state.data["stages"].get(k, {}).get("beside_expert")]
  demo_info = {k: v for k, v in state.data["stages"]["demo"].items()
               if k not in ("done", "beside_expert")}
  for key in ("video", "source_clip", "contact_sheet"):
    if key in demo_info:
      demo_info[key] = os.path.join(out_dir, demo_info[key])

  emotion_info = {k: v for k, v in state.data["stages"]["emotion_eval"].items()
                  if k not in ("done", "wall_s", "beside_expert")}

  emogen_dir = results["workdirs"]["emogen"]
  summary = {
      "outputs": {
          "corpus": paths["corpus"],
          "corpus_25fps": paths["corpus_25fps"],
          "data_dir": paths["data_dir"],
          "preprocess_report": os.path.join(paths["data_dir"], "preprocess_report.json"),
          "workdirs": results["workdirs"],
          "tensorboard_logdir": paths["workdirs"],
          "sample_grids": sorted(glob.glob(os.path.join(emogen_dir, "samples", "*.png"))),
          "demo_video": paths["demo_video"],
          "contact_sheet": demo_info.get("contact_sheet"),
          "emotion_eval": os.path.join(eval_dir, "metrics.md"),
          "summary_json": os.path.join(out_dir, "summary.json"),
          "summary_md": os.path.join(out_dir, "summary.md"),
      },
      "figures": {
          "syncnet_val_accuracy": results["syncnet_accuracy"],
          "syncnet_val_loss": results["syncnet_loss"],
          "emotion_val_accuracy": results["emotion_accuracy"],
          "emotion_val_loss": results["emotion_loss"],
          "emogen_first_val_l1": results["emogen_first_l1"],
          "emogen_last_val_l1": results["emogen_last_l1"],
          "emogen_val_l1_decrease": results["emogen_l1_decrease"],
          "emogen_val_sync_loss": results["emogen_val_sync"],
          "emogen_val_emo_acc_judge": results.get("emogen_emo_acc"),
          "emogen_val_emo_sensitivity": results.get("emogen_emo_sensitivity"),
      },
      "validation_examples": results["validation_examples"],
      "targets": {k: {"value": results[k], "at_least": t, "passed": results["passed"][k]}
                  for k, t in stages.TARGETS.items()},
      "demo": demo_info,
      "emotion_control": emotion_info,
      "corpus": {k: state.data["stages"].get(k, {}) for k in ("corpus", "convert_fps", "preprocess")},
      "settings": settings,
      "wall_s": walls,
      "skipped_stages": skipped,
      # earlier runs' included; SyncNet's overlaps the emotion classifiers' (recipe.parallel),
      # and EmoGen's training and, when they ran inside the recipe, the demo and the evaluation
      "stages_wall_s": round(sum(v for k, v in walls.items()
                                 if k not in stages.TRAININGS and k not in inside)
                             + results["training_wall_s"], 1),
      "parallel_trainings": {k: v + inside for k, v in results["parallel_trainings"].items()},
      "total_wall_s": round(time.time() - t_start, 1),  # this call only
  }
  _write_summary(summary, results)
  return summary


def _fmt(v) -> str:
  return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _write_summary(summary: dict, results: dict) -> None:
  from emogen_jax.train import recipe as stages
  o, fig, s = summary["outputs"], summary["figures"], summary["settings"]
  with open(o["summary_json"], "w") as f:
    json.dump(summary, f, indent=2)
  wd = o["workdirs"]
  lines = [
      "# EmoGen JAX quickstart",
      "",
      f"{s['actors']} synthetic actors x {s['clips_per_actor']} clips; SyncNet {s['syncnet_steps']}, "
      f"emotion disc {s['emotion_steps']}, EmoGen {s['emogen_steps']} steps at width {s['width']} "
      f"(configs/*.py:smoke). Wall time of the stages {summary['stages_wall_s']:.0f} s; "
      f"of this run {summary['total_wall_s']:.0f} s"
      + (f" (skipped, done earlier: {', '.join(summary['skipped_stages'])})"
         if summary["skipped_stages"] else "") + ".",
      "",
      "## Outputs",
      "",
      "| what | where |",
      "|---|---|",
      f"| demo video, six emotions side by side | `{o['demo_video']}` |",
      f"| contact sheet: a row per emotion, five frames each | `{o['contact_sheet']}` |",
      f"| EmoAcc on the test actors (emogen_jax.evaluate) | `{o['emotion_eval']}` |",
      f"| synthetic corpus | `{o['corpus']}` |",
      f"| corpus at 25 fps (convert_fps) | `{o['corpus_25fps']}` |",
      f"| preprocessed data (TFDS) + report | `{o['data_dir']}`, `{o['preprocess_report']}` |",
      f"| SyncNet workdir | `{wd['syncnet']}` |",
      f"| emotion-disc workdir | `{wd['emotion_disc']}` |",
      f"| EmoGen workdir | `{wd['emogen']}` |",
      f"| TensorBoard logs | `tensorboard --logdir {o['tensorboard_logdir']}` |",
      f"| sample grids (reference, masked input, generated, target) | "
      f"`{os.path.join(wd['emogen'], 'samples')}` ({len(o['sample_grids'])} PNGs) |",
      "",
      "## Validation figures",
      "",
      "| figure | value | target |",
      "|---|---|---|",
      f"| SyncNet accuracy (in sync vs off sync) | {_fmt(fig['syncnet_val_accuracy'])} | "
      f">= {stages.TARGETS['syncnet_accuracy']} |",
      f"| SyncNet loss | {_fmt(fig['syncnet_val_loss'])} | |",
      f"| emotion-disc accuracy (6 classes) | {_fmt(fig['emotion_val_accuracy'])} | "
      f">= {stages.TARGETS['emotion_accuracy']} |",
      f"| EmoGen L1, before training | {_fmt(fig['emogen_first_val_l1'])} | |",
      f"| EmoGen L1, at the end | {_fmt(fig['emogen_last_val_l1'])} | |",
      f"| EmoGen L1 decrease | {_fmt(fig['emogen_val_l1_decrease'])} | "
      f">= {stages.TARGETS['emogen_l1_decrease']} |",
      "",
      "Validation examples behind each figure: "
      + ", ".join(f"{k} {v}" for k, v in summary["validation_examples"].items())
      + " (SyncNet scores every window in sync and off sync).",
      "",
      *[f"- {line}" for line in stages.target_lines(results)],
      "",
      *_emotion_lines(summary["emotion_control"]),
      "## Wall time per stage (s)",
      "",
      "| stage | seconds |",
      "|---|---|",
      *[f"| {k}{' (earlier run)' if k in summary['skipped_stages'] else ''}"
        + (f" (in a second process, beside {', '.join(summary['parallel_trainings'][k])})"
           if k in summary.get("parallel_trainings", {}) else "") + f" | {v:.1f} |"
        for k, v in summary["wall_s"].items()],
      f"| all stages | {summary['stages_wall_s']:.1f} |",
      f"| this run | {summary['total_wall_s']:.1f} |",
      "",
      "## Next",
      "",
      f"    python -m emogen_jax.infer --checkpoint {wd['emogen']} --face FACE.mp4 "
      "--audio SPEECH.wav --emotion HAP --out out.mp4",
      f"    python -m emogen_jax.evaluate --help    # PSNR/SSIM/LSE/EmoAcc/FID on {o['data_dir']}",
      "",
  ]
  with open(o["summary_md"], "w") as f:
    f.write("\n".join(lines))


def _pct(v) -> str:
  return f"{100 * v:.1f} %" if isinstance(v, float) else "-"


def _emotion_lines(e: dict) -> list[str]:
  """The emotion-control table of summary.md (test actors; chance is 16.7 %)."""
  from emogen_jax.evaluation.metrics import per_target_text
  per = lambda key: per_target_text(e.get(key, {}),
                                    e.get(key.replace("emo_acc_per_target", "emo_confusion"))) or "-"
  return [
      "## Emotion control (held-out test actors, chance 16.7 %)",
      "",
      f"Every one of the {e.get('clips', 0)} test clips generated with each of the six emotions"
      + (f" (its first {e['emotion_frames_per_clip']} frames)" if e.get("emotion_frames_per_clip")
         else "") + "; "
      "judged by the independent classifier (its own seed and stream; the generator never "
      "trained against it) and by the in-training one.",
      "",
      "| figure | value | per target |",
      "|---|---|---|",
      f"| EmoAcc, independent classifier | {_pct(e.get('emo_acc_independent'))} | "
      f"{per('emo_acc_per_target_independent')} |",
      f"| EmoAcc, independent, reference from the actor's NEUTRAL clip "
      f"({e.get('neutral_reference_clips', 0)} clips) | "
      f"{_pct(e.get('emo_acc_independent_neutral_reference'))} | "
      f"{per('emo_acc_per_target_independent_neutral_reference')} |",
      f"| EmoAcc, in-training classifier | {_pct(e.get('emo_acc'))} | |",
      f"| independent classifier on the real clips | "
      f"{_pct(e.get('classifier_acc_on_real_independent'))} | |",
      "",
  ]


def print_summary(summary: dict) -> None:
  o, fig = summary["outputs"], summary["figures"]
  banner(f"done in {summary['total_wall_s']:.0f} s")
  print(f"demo video:      {o['demo_video']}")
  print(f"workdirs:        {', '.join(o['workdirs'].values())}")
  print(f"TensorBoard:     tensorboard --logdir {o['tensorboard_logdir']}")
  print(f"sample grids:    {len(o['sample_grids'])} in {os.path.join(o['workdirs']['emogen'], 'samples')}")
  print(f"data:            {o['data_dir']}")
  for k, t in summary["targets"].items():
    print(f"{k:24s} {_fmt(t['value'])} (target >= {t['at_least']}) "
          f"{'PASS' if t['passed'] else 'FAIL'}")
  print(f"EmoGen val L1:   {_fmt(fig['emogen_first_val_l1'])} -> {_fmt(fig['emogen_last_val_l1'])}")
  e = summary["emotion_control"]
  print(f"EmoAcc (test):   {_pct(e.get('emo_acc_independent'))} independent classifier, "
        f"{_pct(e.get('emo_acc_independent_neutral_reference'))} from neutral references "
        f"(chance 16.7 %); contact sheet {o['contact_sheet']}")
  print("wall time (s):   " + ", ".join(f"{k} {v:.0f}" for k, v in summary["wall_s"].items()))
  print(f"summary:         {o['summary_md']} , {o['summary_json']}", flush=True)


def _parser() -> ArgumentParser:
  p = ArgumentParser(prog="python -m emogen_jax.quickstart",
                              description=__doc__.split("\n")[0])
  p.add_argument("--out", default="quickstart_out", help="output folder (a rerun resumes it)")
  p.add_argument("--actors", type=int, default=DEFAULTS["actors"])
  p.add_argument("--clips-per-actor", type=int, default=DEFAULTS["clips_per_actor"])
  p.add_argument("--syncnet-steps", type=int, default=DEFAULTS["syncnet_steps"])
  p.add_argument("--emotion-steps", type=int, default=DEFAULTS["emotion_steps"])
  p.add_argument("--emogen-steps", type=int, default=DEFAULTS["emogen_steps"])
  p.add_argument("--width", type=float, default=0.25, help="channel multiplier of the networks")
  p.add_argument("--eval-batches", type=int, default=0,
                 help="validation batches per evaluation (0: the whole validation split)")
  p.add_argument("--emotion", default="all", help="demo emotion: ANG DIS FEA HAP NEU SAD (or a "
                 "name such as happy, or a mix such as HAP:0.6,NEU:0.4) or all (default)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
  p.add_argument("--no-progress", action="store_true", help="plain log lines instead of bars")
  p.add_argument("--cpu-convolutions", default="auto", choices=onednn_conv.CHOICES,
                 help="the trainings' and the demo's convolution kernels: auto (the default: "
                      "oneDNN's on an AVX-512 CPU where scripts/install.sh built them, else "
                      "XLA's), xla or onednn (oneDNN's, built with g++ on first use)")
  return p


@cli_main
def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  summary = run_quickstart(args.out, actors=args.actors, clips_per_actor=args.clips_per_actor,
                           syncnet_steps=args.syncnet_steps, emotion_steps=args.emotion_steps,
                           emogen_steps=args.emogen_steps, seed=args.seed, width=args.width,
                           eval_batches=args.eval_batches, jobs=args.jobs, emotion=args.emotion,
                           progress=not args.no_progress,
                           cpu_convolutions=args.cpu_convolutions)
  print_summary(summary)
  return 0


if __name__ == "__main__":
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  sys.exit(main())
