"""The one-command quickstart (python -m emogen_jax.quickstart) on a tiny corpus: every stage runs,
the outputs and the summary are where it says, the demo video has six faces and the audio, a rerun
skips every finished stage, and bad settings give one-line errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from emogen_jax.data.media import ffmpeg_exe
from emogen_jax.train import recipe
from tests import _quickstart_fixtures as qf, subprocess_env

STAGES = ("corpus", "convert_fps", "preprocess", "syncnet", "emotion_disc", "emotion_judge", "emogen",
          "demo", "emotion_eval")


def _probe(path: str) -> dict:
  ffprobe = os.path.join(os.path.dirname(ffmpeg_exe()), "ffprobe")
  ffprobe = ffprobe if os.path.exists(ffprobe) else "ffprobe"
  out = subprocess.run([ffprobe, "-v", "error", "-show_entries",
                        "stream=codec_type,width,height", "-of", "json", path],
                       capture_output=True, text=True, check=True).stdout
  return json.loads(out)


def test_quickstart_outputs_and_summary():
  run = qf.tiny_quickstart()
  s, out = run["summary"], run["out"]
  o = s["outputs"]
  # Every output named in the summary exists, inside --out.
  for key in ("corpus", "corpus_25fps", "data_dir", "preprocess_report", "demo_video",
              "contact_sheet", "emotion_eval", "summary_json", "summary_md", "tensorboard_logdir"):
    assert os.path.exists(o[key]), key
    assert os.path.abspath(o[key]).startswith(os.path.abspath(out)), key
  n_clips = qf.TINY["actors"] * qf.TINY["clips_per_actor"]
  assert len([f for f in os.listdir(o["corpus"]) if f.endswith(".mp4")]) == n_clips
  assert len([f for f in os.listdir(o["corpus_25fps"]) if f.endswith(".mp4")]) == n_clips
  for name, steps in (("syncnet", "syncnet_steps"), ("emotion_disc", "emotion_steps"),
                      ("emotion_judge", "emotion_steps"), ("emogen", "emogen_steps")):
    with open(os.path.join(o["workdirs"][name], "final_metrics.json")) as f:
      assert json.load(f)["step"] == qf.TINY[steps]
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(o["workdirs"][name]))
  assert o["sample_grids"] and all(os.path.isfile(p) for p in o["sample_grids"])

  # The figures are finite numbers in their ranges, and the targets are judged on them.
  fig = s["figures"]
  for key in ("syncnet_val_accuracy", "emotion_val_accuracy", "emogen_first_val_l1",
              "emogen_last_val_l1", "emogen_val_l1_decrease", "syncnet_val_loss"):
    assert isinstance(fig[key], float) and math.isfinite(fig[key]), key
  assert 0.0 <= fig["syncnet_val_accuracy"] <= 1.0 and 0.0 <= fig["emotion_val_accuracy"] <= 1.0
  assert 0.0 < fig["emogen_last_val_l1"] < 1.0 and 0.0 < fig["emogen_first_val_l1"] < 1.0
  assert fig["emogen_val_l1_decrease"] == pytest.approx(
      1 - fig["emogen_last_val_l1"] / fig["emogen_first_val_l1"])
  # eval_batches=0: every figure averages the whole validation split, eval_windows (6) fixed
  # windows per clip, SyncNet's each in sync and off sync; EmoGen's at the recipe's 3 (each
  # generated with six labels).
  with open(os.path.join(o["data_dir"], "cache", "splits.json")) as f:
    n_val = len(json.load(f)["validation"])
  assert n_val >= 1
  assert s["validation_examples"] == {"syncnet": n_val * 6 * 2, "emotion_disc": n_val * 6,
                                      "emotion_judge": n_val * 6,
                                      "emogen": n_val * recipe.EMOGEN_EVAL_WINDOWS}
  # Emotion control: the judge scored EmoGen's validation windows, evaluate the test clips.
  assert 0.0 <= fig["emogen_val_emo_acc_judge"] <= 1.0 and fig["emogen_val_emo_sensitivity"] > 0
  e = s["emotion_control"]
  with open(os.path.join(o["data_dir"], "cache", "splits.json")) as f:
    n_test = len(json.load(f)["test"])
  assert e["clips"] == n_test and 0.0 <= e["emo_acc_independent"] <= 1.0
  assert e["emo_acc_independent"] * 6 * n_test == pytest.approx(round(e["emo_acc_independent"] * 6 * n_test))
  t = s["targets"]["syncnet_accuracy"]
  assert t["passed"] == (t["value"] >= t["at_least"])
  # The first EmoGen validation is the one before any step (the learning-curve baseline).
  with open(os.path.join(o["workdirs"]["emogen"], "final_metrics.json")) as f:
    hist = json.load(f)["validation_history"]
  assert hist[0]["step"] == 0 and hist[0]["l1"] == pytest.approx(fig["emogen_first_val_l1"])

  assert set(s["wall_s"]) == set(STAGES)
  assert all(v > 0 for v in s["wall_s"].values()) and s["skipped_stages"] == []
  # SyncNet trains beside the two emotion classifiers, EmoGen's training, the demo and the test
  # evaluation (EmoGen's validations wait for it): the stages' total counts that overlap once.
  assert s["parallel_trainings"] == {"syncnet": ["emotion_disc", "emotion_judge", "emogen", "demo",
                                                 "emotion_eval"]}
  w = s["wall_s"]
  with open(os.path.join(o["workdirs"]["emogen"], "final_metrics.json")) as f:
    gen = json.load(f)
  assert gen["wall_s"] == pytest.approx(gen["train_wall_s"] + gen["validation_wall_s"], abs=0.11)
  assert w["emogen"] == gen["wall_s"] and gen["validation_wall_s"] > 0
  # The demo and the evaluation ran inside the recipe, right after EmoGen's training.
  assert gen["after_training_s"] == pytest.approx(w["demo"] + w["emotion_eval"], abs=1.0)
  beside = w["emotion_disc"] + w["emotion_judge"] + gen["train_wall_s"] + gen["after_training_s"]
  overlap = min(w["syncnet"], beside)
  assert s["stages_wall_s"] == pytest.approx(
      sum(w.values()) - w["demo"] - w["emotion_eval"] + gen["after_training_s"] - overlap, abs=0.3)
  # EmoGen trained without validating (its expert still training); the demo and the test
  # evaluation followed at once, and EmoGen's validations once the expert was done.
  assert "syncnet: not loaded" in run["stdout"] and "validation at step 0" in run["stdout"]
  out = run["stdout"]
  assert (out.index("done: emogen step") < out.index("5/6 demo video") < out.index("6/6 EmoAcc")
          < out.index("validation at step 0"))
  assert s["total_wall_s"] >= s["stages_wall_s"] - 1.0
  with open(o["summary_md"]) as f:
    md = f.read()
  assert o["demo_video"] in md and o["workdirs"]["emogen"] in md
  assert f"{fig['emogen_first_val_l1']:.4f}" in md and f"{fig['syncnet_val_accuracy']:.4f}" in md


def test_quickstart_demo_video_has_six_faces_and_audio():
  s = qf.tiny_quickstart()["summary"]
  demo = _probe(s["outputs"]["demo_video"])
  source = _probe(s["demo"]["source_clip"])
  video = [st for st in demo["streams"] if st["codec_type"] == "video"]
  src_video = [st for st in source["streams"] if st["codec_type"] == "video"]
  assert len(video) == 1 and any(st["codec_type"] == "audio" for st in demo["streams"])
  assert video[0]["width"] == 6 * src_video[0]["width"]
  assert video[0]["height"] == src_video[0]["height"]
  # The contact sheet: a row per emotion, five frames of one panel width each (+ the name).
  import cv2
  sheet = cv2.imread(s["outputs"]["contact_sheet"])
  assert sheet.shape[0] == 6 * src_video[0]["height"]
  assert sheet.shape[1] == 64 + 5 * src_video[0]["width"]
  # The demo face is a held-out clip (the actor-disjoint test split).
  with open(os.path.join(s["outputs"]["data_dir"], "cache", "splits.json")) as f:
    splits = json.load(f)
  clip_id = os.path.splitext(os.path.basename(s["demo"]["source_clip"]))[0]
  assert s["demo"]["split"] == "test" and clip_id in splits["test"]


def test_quickstart_rerun_skips_finished_stages():
  run = qf.tiny_quickstart()
  proc = qf.run_cli(qf.tiny_args(run["out"]), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(run["out"], "summary.json")) as f:
    again = json.load(f)
  assert sorted(again["skipped_stages"]) == sorted(STAGES)
  assert again["figures"] == pytest.approx(run["summary"]["figures"])
  assert again["wall_s"] == run["summary"]["wall_s"]  # the earlier run's times are kept
  assert again["stages_wall_s"] == run["summary"]["stages_wall_s"]
  assert "skipped" in proc.stdout


@pytest.mark.parametrize("args, words", [
    (["--actors", "2"], "at least 3 actors"),
    (["--emotion", "JOY"], "unknown emotion"),
])
def test_quickstart_bad_settings_are_one_line_errors(tmp_path, args, words):
  proc = qf.run_cli(["--out", str(tmp_path / "q"), *args], timeout=120)
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
  assert lines[-1].startswith("error: ") and words in lines[-1]
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--actors", "2"], "at least 3 actors"),
    (["--data-dir", "/nonexistent/data"], "not found"),
    (["--data-dir", "{tmp}", "--syncnet-steps", "0"], "syncnet_steps=0 must be at least 1"),
])
def test_reproduce_training_bad_settings_are_one_line_errors(tmp_path, args, words):
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  proc = subprocess.run([sys.executable, os.path.join(qf.REPO, "scripts", "reproduce_training.py"),
                         "--workdir", str(tmp_path / "w"), "--no-progress", *args], cwd=qf.REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
  assert lines[-1].startswith("error: ") and words in lines[-1], lines[-3:]
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--stages", "syncnet", "--sync-off"], "--sync-off only changes the emogen stage"),
    (["--stages", "vgg"], "unknown stage 'vgg'"),
    (["--stages", "syncnet", "--sizes", "huge"], "unknown size 'huge'"),
    (["--stages", "emogen", "--parts"], "use it with --stages emogen --compare-torch"),
    (["--stages", "syncnet", "--compare-torch", "--parts"], "--parts times the EmoGen"),
])
def test_bench_train_bad_settings_are_one_line_errors(args, words):
  proc = subprocess.run([sys.executable, os.path.join(qf.REPO, "scripts", "bench_train.py"),
                         "--no-peak", *args], cwd=qf.REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
  assert lines[-1].split(": ", 1)[1].startswith("error: ") and words in lines[-1], lines[-3:]
  assert "Traceback" not in proc.stderr


def test_quickstart_script_resolves_out_from_the_callers_directory(tmp_path):
  """`bash scripts/quickstart.sh --out DIR` typed in another folder: DIR is that folder's. Here
  ./blocked is a FILE there, so the run must stop at once naming it; a script that resolved
  --out inside the checkout would find no such file there and start a whole quickstart (killed
  by the timeout)."""
  (tmp_path / "blocked").write_text("not a folder")
  proc = subprocess.run(["bash", os.path.join(qf.REPO, "scripts", "quickstart.sh"), "--out",
                         "blocked", "--no-progress"], cwd=tmp_path, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
  assert lines[-1] == "error: --out 'blocked' is a file, not a folder; give the quickstart folder to write"
  assert not os.path.exists(os.path.join(qf.REPO, "blocked"))
