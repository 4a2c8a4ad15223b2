"""Paths as users type them, and outputs that are whole or absent.

* The README's "starting from PyTorch weights" commands run as typed (relative paths) from a
  working directory whose name has a space and a non-ASCII letter; the converted checkpoints are
  then loaded by relative path by inference, evaluation and the EmoGen stage.
* infer with ``~``, spaces and non-ASCII names; the output replaced atomically.
* A full disk (a file-size limit) and SIGTERM during inference leave the previous output intact and
  no temporary file; the atomic helpers restore what was there when a write fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from emogen_jax.data import files
from emogen_jax.errors import UserError
from tests import _infer_fixtures as F

from tests import REPO  # noqa: E402
# The source file each README command names, and the kind it holds.
README_SOURCES = {"lipsync_expert.pth": "syncnet", "vgg19-dcbf9e60.pth": "vgg19",
                  "emogen_checkpoint.pth": "generator", "disc_emo.pth": "emotion_disc"}


def readme_conversion_commands() -> list[list[str]]:
  """The convert commands of the README's "Starting from PyTorch weights" block, as typed."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  block = re.search(r"### Starting from PyTorch weights.*?```bash\n(.*?)```", text, re.S).group(1)
  return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def _tree(root) -> set[str]:
  return {os.path.relpath(os.path.join(d, n), root) for d, ds, ns in os.walk(root) for n in ds + ns}


def test_readme_conversion_flow_with_relative_paths(tmp_path, monkeypatch):
  import torch
  from emogen_jax import convert
  from emogen_jax.evaluation import evaluate
  from emogen_jax.models import checkpoints
  from emogen_jax.train.recipe import load_config
  from emogen_jax.train.stages import emogen as emogen_stage
  from tests.models.test_convert import random_state_dict

  cwd = tmp_path / "my project ü"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  sds = {}
  for name, kind in README_SOURCES.items():
    sds[kind] = random_state_dict(kind, seed=len(sds))
    torch.save({k: torch.from_numpy(v) for k, v in sds[kind].items()}, name)

  commands = readme_conversion_commands()
  assert [c[:3] for c in commands] == [["python", "-m", "emogen_jax.convert"]] * 5
  *forward, reverse = commands
  for argv in forward:
    assert convert.main(argv[3:]) == 0, argv
  # The reverse line exports a training workdir W/emogen: one whose latest step is the converted
  # generator.
  shutil.copytree("ckpt/generator", "W/emogen/checkpoints/7")
  assert convert.main(reverse[3:]) == 0, reverse
  back = torch.load("gen.pth", map_location="cpu", weights_only=True)["state_dict"]
  for k, v in sds["generator"].items():
    assert np.array_equal(back[k].numpy(), v), k

  # The converted checkpoints, by relative path, wherever a checkpoint is taken.
  assert checkpoints.resolve_checkpoint("W/emogen") == str(cwd / "W" / "emogen" / "checkpoints" / "7")
  assert evaluate.load_syncnet("ckpt/syncnet") is not None
  config = load_config("emogen", None, synthetic_data=True, syncnet_checkpoint="ckpt/syncnet",
                       emotion_disc_checkpoint="ckpt/emotion_disc", vgg_checkpoint="ckpt/vgg19")
  setup = emogen_stage.prepare(config, log=lambda msg: None)
  assert setup["random_init"] == []
  assert checkpoints.fingerprint(setup["syncnet"]) == checkpoints.fingerprint(
      convert.torch_to_flax("syncnet", sds["syncnet"]))
  # Converting again over the same kind replaces it; over another kind is refused.
  assert convert.main(["--src", "lipsync_expert.pth", "--out", "ckpt/syncnet"]) == 0
  assert convert.main(["--src", "lipsync_expert.pth", "--out", "ckpt/generator"]) == 2
  assert checkpoints.checkpoint_kinds("ckpt/generator") == ["generator"]
  assert not [n for n in _tree(cwd) if files.TEMP_MARK in n]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("infer inputs")
  F.make_generator_checkpoint(str(d / "gen ckpt"))
  F.write_face_video(str(d / "visage é.mp4"), n=6)
  F.write_speech(str(d / "parole é.wav"), 0.6)
  return d


def test_infer_with_home_spaces_and_non_ascii(inputs, tmp_path, monkeypatch, capsys):
  from emogen_jax import infer
  monkeypatch.setenv("HOME", str(inputs))
  out_dir = tmp_path / "sortie ü"
  out_dir.mkdir()
  monkeypatch.chdir(out_dir)
  (out_dir / "vidéo.mp4").write_bytes(b"an older output")
  rc = infer.main(["--checkpoint", "~/gen ckpt", "--face", "~/visage é.mp4",
                   "--audio", os.path.relpath(inputs / "parole é.wav"), "--out", "vidéo.mp4",
                   "--emotion", "happy:0.5,SAD:0.5"])
  assert rc == 0, capsys.readouterr().err
  from emogen_jax.data import video_io
  frames, fps = video_io.read_video(str(out_dir / "vidéo.mp4"))
  assert len(frames) == 12 and fps == 25  # the mel chunks of 0.6 s of speech at 25 fps
  assert sorted(os.listdir(out_dir)) == ["vidéo.mp4"]  # replaced; no temporary left


def _infer_subprocess(inputs, out: str, audio: str, max_file_kb: int | None = None) -> subprocess.Popen:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "emogen_jax.infer", "--checkpoint", str(inputs / "gen ckpt"),
         "--face", str(inputs / "visage é.mp4"), "--audio", audio, "--out", out, "--batch-size", "2"]
  if max_file_kb is not None:  # the shell's file-size limit, inherited by ffmpeg
    cmd = ["bash", "-c", f'ulimit -f {max_file_kb} && exec "$@"', "bash"] + cmd
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_full_disk_keeps_the_previous_output_and_leaves_no_temporary(inputs, tmp_path):
  """A file-size limit makes ffmpeg's writes fail as on a full disk, after part of the video."""
  out = tmp_path / "out.mp4"
  out.write_bytes(b"the previous video")
  proc = _infer_subprocess(inputs, str(out), str(inputs / "parole é.wav"), max_file_kb=8)
  _, err = proc.communicate(timeout=300)
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(lines) == 1 and "ffmpeg could not write" in lines[0], err
  assert out.read_bytes() == b"the previous video"
  assert sorted(os.listdir(tmp_path)) == ["out.mp4"]


def test_sigterm_during_inference_leaves_nothing(inputs, tmp_path):
  speech = F.write_speech(str(tmp_path / "long.wav"), 30.0)  # 750 frames: still running at SIGTERM
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  before = set(os.listdir("/tmp"))
  proc = _infer_subprocess(inputs, str(out_dir / "o.mp4"), speech)
  deadline = time.time() + 240
  seen = ""
  while "generating" not in seen:  # the progress bar: frames are being written
    assert time.time() < deadline and proc.poll() is None, seen
    seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
  time.sleep(1.0)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, seen + err
  assert (seen + err).rstrip().endswith("terminated")
  assert os.listdir(out_dir) == []
  assert not [n for n in set(os.listdir("/tmp")) - before if n.startswith("emogen_infer")]


def test_atomic_helpers_restore_on_failure(tmp_path):
  target = tmp_path / "report.json"
  target.write_text("old")
  with pytest.raises(RuntimeError):
    with files.atomic_file(target) as tmp:
      open(tmp, "w").write("half")
      raise RuntimeError("disk full")
  assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (ckpt / "a").write_text("old checkpoint")
  with pytest.raises(KeyboardInterrupt):
    with files.atomic_dir(ckpt) as tmp:
      os.makedirs(tmp)
      raise KeyboardInterrupt
  assert (ckpt / "a").read_text() == "old checkpoint" and sorted(os.listdir(tmp_path)) == ["ckpt", "report.json"]
  with files.atomic_dir(ckpt) as tmp:
    os.makedirs(tmp)
    open(os.path.join(tmp, "b"), "w").write("new")
  assert os.listdir(ckpt) == ["b"] and sorted(os.listdir(tmp_path)) == ["ckpt", "report.json"]
  # A failed run removes the folders it made, unless it wrote a file in them.
  with pytest.raises(UserError):
    with files.made_dirs(tmp_path / "x" / "y" / "z"):
      raise UserError("bad input")
  assert not (tmp_path / "x").exists()
  with pytest.raises(UserError):
    with files.made_dirs(tmp_path / "x" / "y") as d:
      open(os.path.join(d, "log.txt"), "w").write("kept")
      raise UserError("late failure")
  assert (tmp_path / "x" / "y" / "log.txt").exists()


def test_train_config_and_data_dir_paths_are_expanded(monkeypatch):
  from emogen_jax.train import main as loop
  monkeypatch.setenv("HOME", REPO)
  argv = ["prog", "--config", "~/configs/syncnet.py:smoke", "--config=~/configs/emogen.py"]
  loop._check_config_path(argv)
  assert argv[1:] == ["--config", os.path.join(REPO, "configs", "syncnet.py") + ":smoke",
                      "--config=" + os.path.join(REPO, "configs", "emogen.py")]
  with pytest.raises(UserError, match="is not a file"):
    loop._check_config_path(["prog", "--config", "~/configs/nope.py"])


def test_train_data_dir_with_tilde_is_expanded_before_its_checks(tmp_path):
  """`--config.data_dir=~/...` as typed: the trainer checks the expanded folder (here an empty
  one, so the error names it and what it lacks), not the literal '~/...'."""
  from tests._train_fixtures import train_cli
  (tmp_path / "my data").mkdir()
  proc = train_cli(["--config", "configs/syncnet.py:smoke", "--config.data_dir=~/my data",
                    "--workdir", str(tmp_path / "w")], extra_env={"HOME": str(tmp_path)},
                   check=False)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert f"{tmp_path / 'my data'} holds no preprocessed dataset" in last, proc.stderr
