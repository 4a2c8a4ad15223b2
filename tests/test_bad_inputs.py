"""Bad input over every command: exit status 2, exactly one line on stderr ("error: ..."), no
traceback, and nothing written (the workspace is byte-for-byte what it was).

Most cases call each CLI's ``main(argv)`` in this process (the same code the entry point runs,
without a fresh interpreter per case); ``test_entry_points`` runs a few through
``python -m ...`` to cover the real start-up (TensorFlow's start-up lines must not show).
All cases share one workspace with one tiny generator checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests import _infer_fixtures as F

from tests import REPO  # noqa: E402
SYNCNET_CFG = os.path.join(REPO, "configs", "syncnet.py") + ":smoke"
EMODISC_CFG = os.path.join(REPO, "configs", "emotion_disc.py") + ":smoke"
EMOGEN_CFG = os.path.join(REPO, "configs", "emogen.py") + ":smoke"


def _mains():
  from data_tools import convert_fps, make_synthetic, preprocess
  from emogen_jax import convert, evaluate, infer, quickstart, sync_check
  from emogen_jax.train import main as train
  return {"infer": infer.main, "convert": convert.main, "evaluate": evaluate.main,
          "sync_check": sync_check.main, "train": train.main, "quickstart": quickstart.main,
          "convert_fps": convert_fps.main, "preprocess": preprocess.main,
          "make_synthetic": make_synthetic.main}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
  """The workspace: valid inputs beside the wrong ones the cases name (paths relative to it)."""
  import torch
  from emogen_jax.train import checkpoints
  root = tmp_path_factory.mktemp("bad inputs ü")
  p = lambda *parts: str(root.joinpath(*parts))
  F.make_generator_checkpoint(p("gen"))
  F.write_face_video(p("face.mp4"), n=6)
  F.write_speech(p("speech.wav"), 0.5)
  os.makedirs(p("folder"))
  os.makedirs(p("folder.mp4"))
  with open(p("notes.txt"), "w") as f:
    f.write("not a checkpoint\n")
  torch.save({"a.weight": torch.zeros(3)}, p("wrong.pth"))
  os.makedirs(p("videos", "sub"))
  F.write_face_video(p("videos", "clip.mp4"), n=4)
  # A SyncNet training workdir (one saved step, width 0.25) to resume against.
  manager = checkpoints.training_manager(p("syncnet_run"), keep=1, async_save=False)
  checkpoints.save_training(manager, 1, models={"syncnet": {"params": {"w": np.zeros(2, np.float32)}}},
                            train={"step": np.int32(1)},
                            meta={"config": {"stage": "syncnet", "width": 0.25}})
  manager.close()
  return root


def _snapshot(root) -> dict:
  out = {}
  for d, dirs, names in os.walk(root):
    for n in dirs + names:
      path = os.path.join(d, n)
      st = os.lstat(path)
      out[os.path.relpath(path, root)] = (st.st_size if os.path.isfile(path) else -1, st.st_mtime_ns)
  return out


INFER = ["--checkpoint", "gen", "--face", "face.mp4", "--audio", "speech.wav"]
TRAIN = ["--config", SYNCNET_CFG, "--config.synthetic_data=True"]

# (id, command, argv (paths relative to the workspace), a piece of the expected message)
CASES = [
    # infer
    ("infer-negative-pads", "infer", INFER + ["--out", "o.mp4", "--pads", "-5", "0", "0", "0"],
     "must not be negative"),
    ("infer-inverted-box", "infer", INFER + ["--out", "o.mp4", "--box", "80", "20", "10", "60"],
     "inverted"),
    ("infer-inverted-crop", "infer", INFER + ["--out", "o.mp4", "--crop", "0", "-1", "90", "30"],
     "inverted"),
    ("infer-resize-factor-100", "infer", INFER + ["--out", "o.mp4", "--resize-factor", "100"],
     "too small for a face"),
    ("infer-resize-factor-0", "infer", INFER + ["--out", "o.mp4", "--resize-factor", "0"],
     "positive integer"),
    ("infer-detect-every-0", "infer", INFER + ["--out", "o.mp4", "--detect-every", "0"],
     "--detect-every must be a positive integer"),
    ("infer-search-unknown", "infer", INFER + ["--out", "o.mp4", "--search", "near"],
     "argument --search: invalid choice: 'near'"),
    ("infer-face-folder", "infer", ["--checkpoint", "gen", "--face", "folder", "--audio", "speech.wav",
                                    "--out", "o.mp4"], "is a folder"),
    ("infer-audio-folder", "infer", ["--checkpoint", "gen", "--face", "face.mp4", "--audio", "folder",
                                     "--out", "o.mp4"], "is a folder"),
    ("infer-out-folder", "infer", INFER + ["--out", "folder"], "must end in .mp4"),
    ("infer-out-folder-mp4", "infer", INFER + ["--out", "folder.mp4"], "is a folder"),
    ("infer-out-missing-folder", "infer", INFER + ["--out", "nowhere/o.mp4"], "does not exist"),
    ("infer-out-not-mp4", "infer", INFER + ["--out", "o.avi"], "must end in .mp4"),
    ("infer-unknown-emotion", "infer", INFER + ["--out", "o.mp4", "--emotion", "JOY"],
     "unknown emotion"),
    ("infer-mix-not-summing-to-1", "infer", INFER + ["--out", "o.mp4", "--emotion", "HAP:0.6,NEU:0.3"],
     "sum to 0.9"),
    ("infer-checkpoint-missing", "infer", ["--checkpoint", "nope", "--face", "face.mp4", "--audio",
                                           "speech.wav", "--out", "o.mp4"], "does not exist"),
    ("infer-checkpoint-pth", "infer", ["--checkpoint", "wrong.pth", "--face", "face.mp4", "--audio",
                                       "speech.wav", "--out", "o.mp4"], "must be converted"),
    ("infer-batch-size-0", "infer", INFER + ["--out", "o.mp4", "--batch-size", "0"], "at least 1"),
    ("infer-missing-out", "infer", INFER, "required: --out"),
    ("infer-unknown-flag", "infer", INFER + ["--out", "o.mp4", "--foo"], "unrecognized arguments"),
    ("infer-pads-3-numbers", "infer", INFER + ["--out", "o.mp4", "--pads", "1", "2", "3"],
     "expected 4 arguments"),
    ("infer-s3fd-wrong-weights", "infer", INFER + ["--out", "o.mp4", "--detector", "s3fd",
                                                   "--s3fd-weights", "wrong.pth"],
     "not S3FD weights: 65 missing, 1 unexpected"),
    # convert
    ("convert-out-existing-file", "convert", ["--src", "wrong.pth", "--out", "notes.txt"],
     "is a file, not a folder"),
    ("convert-out-other-kind", "convert", ["--kind", "syncnet", "--src", "wrong.pth", "--out", "gen"],
     "holds a generator checkpoint, not a syncnet"),
    ("convert-out-training-workdir", "convert", ["--src", "wrong.pth", "--out", "syncnet_run"],
     "holds something else"),
    ("convert-src-missing", "convert", ["--src", "nope.pth", "--out", "new_ckpt"], "does not exist"),
    ("convert-src-folder", "convert", ["--src", "folder", "--out", "new_ckpt"], "--reverse"),
    ("convert-wrong-keys", "convert", ["--kind", "syncnet", "--src", "wrong.pth", "--out", "new_ckpt"],
     "not a syncnet state dict"),
    ("convert-reverse-out-folder", "convert", ["--reverse", "--src", "gen", "--out", "folder"],
     "must end in .pth"),
    ("convert-reverse-out-other-file", "convert", ["--reverse", "--src", "gen", "--out", "notes.txt"],
     "must end in .pth"),
    ("convert-reverse-wrong-kind", "convert", ["--reverse", "--kind", "syncnet", "--src", "gen",
                                               "--out", "s.pth"], "not a syncnet"),
    # evaluate
    ("evaluate-max-clips-0", "evaluate", ["--checkpoint", "gen", "--data-dir", "folder", "--out",
                                          "ev", "--max-clips", "0"], "at least 1"),
    ("evaluate-emotion-frames-4", "evaluate", ["--checkpoint", "gen", "--data-dir", "folder", "--out",
                                               "ev", "--emotion-frames", "4"], "--emotion-frames must be at least 5"),
    ("evaluate-out-file", "evaluate", ["--checkpoint", "gen", "--data-dir", "folder", "--out",
                                       "notes.txt"], "is a file, not a folder"),
    ("evaluate-syncnet-missing", "evaluate", ["--checkpoint", "gen", "--data-dir", "folder", "--out",
                                              "ev", "--syncnet", "nope"], "does not exist"),
    ("evaluate-inception-folder", "evaluate", ["--checkpoint", "gen", "--data-dir", "folder", "--out",
                                               "ev", "--inception", "folder"], "is a folder"),
    ("evaluate-data-dir-missing", "evaluate", ["--checkpoint", "gen", "--data-dir", "nope", "--out",
                                               "ev"], "does not exist"),
    # sync_check
    ("sync-check-max-clips-0", "sync_check", ["--data-dir", "folder", "--syncnet", "gen",
                                              "--max-clips", "0"], "at least 1"),
    ("sync-check-negative-vshift", "sync_check", ["--data-dir", "folder", "--syncnet", "gen",
                                                  "--vshift", "-3"], "--vshift must be at least 1"),
    ("sync-check-out-file", "sync_check", ["--data-dir", "folder", "--syncnet", "gen", "--out",
                                           "notes.txt"], "is a file, not a folder"),
    ("sync-check-syncnet-missing", "sync_check", ["--data-dir", "folder", "--syncnet", "nope"],
     "does not exist"),
    # train
    ("train-workdir-file", "train", TRAIN + ["--workdir", "notes.txt"], "is a file, not a folder"),
    ("train-unknown-field", "train", TRAIN + ["--workdir", "w", "--config.foo=1"], "has no field 'foo'"),
    ("train-bad-value", "train", TRAIN + ["--workdir", "w", "--config.width=abc"], "could not convert"),
    ("train-config-missing", "train", ["--config", "nope.py", "--workdir", "w"], "is not a file"),
    ("train-no-workdir", "train", TRAIN, "--workdir is required"),
    ("train-negative-steps", "train", TRAIN + ["--workdir", "w", "--config.num_train_steps=-1"],
     "must not be negative"),
    ("train-negative-eval-batch", "train", TRAIN + ["--workdir", "w", "--config.eval_batch_size=-8"],
     "config.eval_batch_size=-8 must not be negative"),
    ("train-negative-windows-per-clip", "train",
     TRAIN + ["--workdir", "w", "--config.windows_per_clip=-4"],
     "config.windows_per_clip=-4 must not be negative"),
    ("train-negative-shuffle-buffer", "train",
     TRAIN + ["--workdir", "w", "--config.shuffle_buffer=-1"],
     "config.shuffle_buffer=-1 must not be negative"),
    ("train-same-clip-fraction-2", "train",
     ["--config", EMOGEN_CFG, "--config.synthetic_data=True", "--workdir", "w",
      "--config.same_clip_fraction=2"], "config.same_clip_fraction=2.0; use a share between 0 and 1"),
    ("train-emotion-disc-on-syncnet-workdir", "train",
     ["--config", EMODISC_CFG, "--config.synthetic_data=True", "--workdir", "syncnet_run"],
     "holds a syncnet run"),
    ("train-resume-other-width", "train", TRAIN + ["--workdir", "syncnet_run", "--config.width=0.5"],
     "width=0.25 -> 0.5"),
    # data tools
    ("convert-fps-dst-inside-src", "convert_fps", ["--src", "videos", "--dst", "videos/sub/out"],
     "inside --src"),
    ("convert-fps-zero-fps", "convert_fps", ["--src", "videos", "--dst", "v25", "--fps", "0"],
     "must be positive"),
    ("convert-fps-src-missing", "convert_fps", ["--src", "nope", "--dst", "v25"], "not found"),
    ("convert-fps-dst-file", "convert_fps", ["--src", "videos", "--dst", "notes.txt"],
     "is a file, not a folder"),
    ("preprocess-negative-pads", "preprocess", ["--src", "videos", "--data-dir", "data", "--pads",
                                                "0", "-1", "0", "0"], "must not be negative"),
    ("preprocess-data-dir-file", "preprocess", ["--src", "videos", "--data-dir", "notes.txt"],
     "is a file, not a folder"),
    ("preprocess-src-missing", "preprocess", ["--src", "nope", "--data-dir", "data"],
     "is not a directory"),
    ("preprocess-jobs-0", "preprocess", ["--src", "videos", "--data-dir", "data", "--jobs", "0"],
     "--jobs must be >= 1"),
    ("preprocess-search-unknown", "preprocess", ["--src", "videos", "--data-dir", "data", "--search",
                                                 "near"], "argument --search: invalid choice: 'near'"),
    ("make-synthetic-out-file", "make_synthetic", ["--out", "notes.txt"], "is a file, not a folder"),
    ("make-synthetic-no-actors", "make_synthetic", ["--out", "corpus", "--actors", "0"],
     "at least 1 actor"),
    ("quickstart-out-file", "quickstart", ["--out", "notes.txt"], "is a file, not a folder"),
    ("quickstart-two-actors", "quickstart", ["--out", "qs", "--actors", "2"], "at least 3 actors"),
    ("quickstart-unknown-emotion", "quickstart", ["--out", "qs", "--emotion", "JOY"],
     "unknown emotion"),
]


@pytest.mark.parametrize("name, command, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(ws, monkeypatch, capsys, name, command, argv, expected):
  monkeypatch.chdir(ws)  # every path is typed relative to the workspace
  before = _snapshot(ws)
  capsys.readouterr()
  rc = _mains()[command](list(argv))
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert rc == 2, (name, rc, err)
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert "Traceback" not in err and expected in lines[0], lines
  assert _snapshot(ws) == before, "a failed run changed the workspace"


ENTRY_POINTS = [
    ("emogen_jax.infer", ["--checkpoint", "gen", "--face", "folder", "--audio", "speech.wav",
                          "--out", "o.mp4"], "is a folder"),
    ("emogen_jax.train", TRAIN + ["--workdir", "notes.txt"], "is a file, not a folder"),
    ("emogen_jax.convert", ["--src", "wrong.pth", "--out", "notes.txt"], "is a file, not a folder"),
    ("data_tools.convert_fps", ["--src", "videos", "--dst", "videos/sub/out"], "inside --src"),
    # TensorFlow is imported before this error: its start-up lines must not show.
    ("emogen_jax.evaluate", ["--checkpoint", "gen", "--data-dir", "folder", "--out", "ev"],
     "folder"),
]


@pytest.mark.parametrize("module, argv, expected", ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_entry_points(ws, module, argv, expected):
  before = _snapshot(ws)
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ws, env=env,
                        capture_output=True, text=True, timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
  assert _snapshot(ws) == before
