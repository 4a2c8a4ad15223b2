"""The oneDNN convolutions as a user meets them (emogen_jax/onednn_conv): a training run
with --config.cpu_convolutions=onednn calls oneDNN and ends where the same run on XLA's kernels
ends; EmoGen trains and validates on it; the inference CLI's --cpu-convolutions onednn writes the
same video; the default, auto, takes oneDNN's where built on an AVX-512 CPU and XLA's (saying why,
building nothing) elsewhere; `python -m emogen_jax.onednn_conv` builds; two processes build the
binding together; a wrong choice, no g++ and an unwritable cache get one-line errors. (tests/test_bench_onednn.py checks the binding's parts
against lax's and the benchmark.)

The binding is built once into the user's cache (oneDNN's wheels from the package index, g++):
skipped where either is missing, with the reason."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests import REPO, subprocess_env
from tests._train_fixtures import train_cli

_STATS = re.compile(r"onednn_conv stats: forward (\d+) calls .* input gradient (\d+) calls .* "
                    r"weight gradient (\d+) calls")


@pytest.fixture(scope="module")
def built():
  from emogen_jax import onednn_conv
  try:
    return onednn_conv.build()
  except onednn_conv.BuildError as e:
    pytest.skip(f"the oneDNN binding cannot be built here: {e}")


def _final(workdir) -> dict:
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    return json.load(f)


def test_training_on_onednn_calls_it_and_matches_xla(built, tmp_path):
  runs = {}
  for choice in ("xla", "onednn"):
    workdir = tmp_path / choice
    proc = train_cli(["--config", "configs/syncnet.py:smoke", "--config.synthetic_data=True",
                      "--config.num_train_steps=2", "--config.eval_batches=1",
                      # Adam moves every parameter by about the learning rate whatever its
                      # gradient, also the pre-BatchNorm biases whose gradient is rounding noise
                      # (its sign differs between any two summation orders): a tiny rate keeps
                      # the two runs' parameters together, so that the validation loss checks
                      # the forward of both; the gradients are checked in test_bench_onednn.
                      "--config.learning_rate=1e-8",
                      f"--config.cpu_convolutions={choice}", "--workdir", str(workdir)],
                     extra_env={"EMOGEN_ONEDNN_STATS": "1"})
    runs[choice] = (proc.stdout + proc.stderr, _final(workdir))
  xla_log, xla_final = runs["xla"]
  one_log, one_final = runs["onednn"]
  assert "convolutions: oneDNN's kernels" in one_log and "oneDNN" not in xla_log
  # oneDNN computed every part of the convolutions (the handlers count their calls) ...
  calls = [int(n) for n in _STATS.search(one_log).groups()]
  assert all(n > 0 for n in calls), calls
  # ... and after the steps the validation loss is XLA's to float32 rounding.
  a, b = xla_final["validation"]["loss"], one_final["validation"]["loss"]
  assert abs(a - b) <= 1e-5 * abs(a), (a, b)


def test_infer_cli_on_onednn_writes_the_same_video(built, tmp_path):
  import cv2

  from tests._infer_fixtures import face_image, make_generator_checkpoint

  ckpt = make_generator_checkpoint(str(tmp_path / "gen"))
  cv2.imwrite(str(tmp_path / "face.png"), face_image())
  sr = 16000
  t = np.arange(int(1.2 * sr)) / sr
  wav = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
  import soundfile
  soundfile.write(str(tmp_path / "speech.wav"), wav, sr)
  frames = {}
  for choice in ("xla", "onednn"):
    out = f"out_{choice}.mp4"
    # From the folder of the inputs, with relative paths, as a user runs it.
    proc = subprocess.run(
        [sys.executable, "-m", "emogen_jax.infer", "--checkpoint", ckpt, "--face", "face.png",
         "--audio", "speech.wav", "--emotion", "HAP", "--out", out, "--cpu-convolutions", choice],
        cwd=tmp_path, env=dict(subprocess_env(1), EMOGEN_ONEDNN_STATS="1"), capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if choice == "onednn":
      assert "convolutions: oneDNN's kernels" in proc.stderr
      assert int(_STATS.search(proc.stderr).group(1)) > 0
    cap = cv2.VideoCapture(str(tmp_path / out))
    frames[choice] = []
    while True:
      ok, frame = cap.read()
      if not ok:
        break
      frames[choice].append(frame.astype(np.float32))
  assert len(frames["xla"]) == len(frames["onednn"]) > 10
  diff = np.mean([np.abs(x - y).mean() for x, y in zip(frames["xla"], frames["onednn"])])
  assert diff < 0.5, diff  # of 255: the same faces, up to the encoder's rounding


def test_unknown_choice_is_one_line(tmp_path):
  proc = train_cli(["--config", "configs/syncnet.py:smoke", "--config.synthetic_data=True",
                    "--config.cpu_convolutions=mkl", "--workdir", str(tmp_path / "w")], check=False)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert "config.cpu_convolutions='mkl'; use auto" in last and "Traceback" not in proc.stderr


def test_no_compiler_is_one_line(tmp_path):
  # A fresh cache and a PATH without g++: the build stops before fetching anything.
  env = dict(subprocess_env(1), PATH=str(tmp_path))
  code = ("from emogen_jax import onednn_conv\n"
          f"onednn_conv.build({str(tmp_path / 'cache')!r})\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0
  assert "g++ not found: the oneDNN binding is C++; install it" in proc.stderr
  assert not os.path.exists(tmp_path / "cache" / "wheels-2023.2.0")


def test_two_processes_build_into_one_cache_together(tmp_path):
  """The quickstart starts two trainings at once: both may build the binding into the same
  fresh cache; one builds, the other waits for it, and both load the same library."""
  code = ("from emogen_jax import onednn_conv\n"
          f"print('LIB', onednn_conv.build({str(tmp_path / 'cache')!r}))\n")
  procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  if any("cannot be built" in e or "could not fetch" in e or "g++ not found" in e
         for _, e in outs):
    pytest.skip("the oneDNN binding cannot be built here")
  assert all(p.returncode == 0 for p in procs), outs
  libs = {line.split(" ", 1)[1] for out, _ in outs for line in out.splitlines()
          if line.startswith("LIB ")}
  assert len(libs) == 1 and os.path.exists(libs.pop())
  # One build: no compiler output left half-written beside the library.
  assert not [f for f in os.listdir(tmp_path / "cache") if ".tmp" in f]


def test_unwritable_cache_is_one_line(tmp_path):
  # XDG_CACHE_HOME naming a file: no folder can be made under it, whoever runs the test.
  not_a_folder = tmp_path / "a_file"
  not_a_folder.write_text("")
  env = dict(subprocess_env(1), XDG_CACHE_HOME=str(not_a_folder))
  code = "from emogen_jax import onednn_conv\nonednn_conv.build()\n"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert "cannot write the binding's cache folder" in last, proc.stderr
  assert "set XDG_CACHE_HOME to a writable folder" in last


def test_emogen_trains_and_validates_on_onednn(built, tmp_path):
  """EmoGen's validation step computes its terms per example under jax.vmap (which the first
  quickstart on oneDNN stopped at): one step and a validation, every network on oneDNN."""
  workdir = tmp_path / "emogen"
  proc = train_cli(["--config", "configs/emogen.py:smoke", "--config.synthetic_data=True",
                    "--config.num_train_steps=1", "--config.eval_batches=1",
                    "--config.batch_size=2", "--config.eval_batch_size=2",
                    "--config.cpu_convolutions=onednn", "--workdir", str(workdir)],
                   extra_env={"EMOGEN_ONEDNN_STATS": "1"}, timeout=600)
  log = proc.stdout + proc.stderr
  assert "convolutions: oneDNN's kernels" in log
  assert all(int(n) > 0 for n in _STATS.search(log).groups())
  final = _final(workdir)
  assert np.isfinite(final["validation"]["loss"]) and final["step"] == 1


@pytest.mark.parametrize("module", ["emogen_jax.infer", "emogen_jax.quickstart"])
def test_cli_unknown_choice_is_one_line(module, tmp_path):
  args = ["--cpu-convolutions", "mkl"]
  if module == "emogen_jax.infer":
    args += ["--checkpoint", "c", "--face", "f.png", "--audio", "a.wav", "--out", "o.mp4"]
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path,
                        env=subprocess_env(1), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  (line,) = proc.stderr.strip().splitlines()
  assert "--cpu-convolutions: invalid choice: 'mkl'" in line, line
  assert not os.listdir(tmp_path)  # nothing started, nothing written


def _auto(monkeypatch, cache_home, choice="auto"):
  """(kernels, log lines, whether the models' conv2d was routed inside) of cpu_convolutions(choice)
  with the binding's cache under ``cache_home``."""
  from emogen_jax import onednn_conv
  from emogen_jax.models import layers

  monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
  own, lines = layers.conv2d, []
  with onednn_conv.cpu_convolutions(choice, log=lines.append, where="config.cpu_convolutions") as k:
    routed = layers.conv2d is not own
  assert layers.conv2d is own  # undone after the block
  return k, lines, routed


def test_auto_uses_onednn_where_built_and_xla_elsewhere(built, monkeypatch, tmp_path):
  from emogen_jax import onednn_conv
  from emogen_jax.onednn_conv import binding

  home = os.path.dirname(os.path.dirname(os.path.dirname(built)))
  # A CPU without AVX-512 (as this one, seen by auto): XLA's, built or not, and it says why.
  with monkeypatch.context() as m:
    m.setattr(onednn_conv, "has_avx512", lambda: False)
    k, lines, routed = _auto(monkeypatch, home)
  assert (k, routed) == ("xla", False) and "this CPU has no AVX-512" in lines[-1]
  if not binding.has_avx512():
    return
  # The built binding (the default cache, as scripts/install.sh leaves it): oneDNN's.
  k, lines, routed = _auto(monkeypatch, home)
  assert (k, routed) == ("onednn", True), lines
  assert "oneDNN's kernels on XLA's threads (config.cpu_convolutions=auto; auto: AVX-512" in lines[-1]
  # A fresh cache: XLA's, with the command that builds it, and nothing fetched or built.
  k, lines, routed = _auto(monkeypatch, tmp_path / "fresh")
  assert (k, routed) == ("xla", False)
  (line,) = lines
  assert "XLA's kernels (config.cpu_convolutions=auto; auto: oneDNN's binding is not built" in line
  assert "python -m emogen_jax.onednn_conv" in line
  assert not os.path.exists(tmp_path / "fresh")
  # A cached library that does not load: auto falls back to XLA's and says so; onednn fails.
  broken = binding.library_path(str(tmp_path / "broken" / "emogen_jax" / "onednn_conv"))
  os.makedirs(os.path.dirname(broken))
  with open(broken, "w") as f:
    f.write("not a library")
  # (In a fresh process: this one may hold the good build's handlers already, which XLA keeps.)
  code = ("from emogen_jax import onednn_conv\n"
          "with onednn_conv.cpu_convolutions('{}') as k:\n  print('KERNELS', k)\n")
  env = dict(subprocess_env(1), XDG_CACHE_HOME=str(tmp_path / "broken"))
  proc = subprocess.run([sys.executable, "-c", code.format("auto")], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "KERNELS xla" in proc.stdout, proc.stdout + proc.stderr
  assert "(cpu_convolutions=auto; the built binding failed: cannot load" in proc.stdout
  proc = subprocess.run([sys.executable, "-c", code.format("onednn")], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "cannot load the oneDNN binding" in proc.stderr


def test_training_default_is_auto(built, tmp_path):
  """No --config.cpu_convolutions: the run's log names the kernels it got; on an AVX-512 CPU with
  the binding built (here: the fixture built it) they are oneDNN's, which computed the steps."""
  from emogen_jax.onednn_conv import binding

  workdir = tmp_path / "w"
  proc = train_cli(["--config", "configs/syncnet.py:smoke", "--config.synthetic_data=True",
                    "--config.num_train_steps=1", "--config.eval_batches=1",
                    "--workdir", str(workdir)], extra_env={"EMOGEN_ONEDNN_STATS": "1"})
  log = proc.stdout + proc.stderr
  if binding.has_avx512():
    assert "convolutions: oneDNN's kernels on XLA's threads (config.cpu_convolutions=auto" in log
    assert all(int(n) > 0 for n in _STATS.search(log).groups())
  else:
    assert "convolutions: XLA's kernels (config.cpu_convolutions=auto; auto: this CPU has no " \
           "AVX-512" in log
  assert _final(workdir)["step"] == 1


def test_build_command(tmp_path):
  """`python -m emogen_jax.onednn_conv` (what scripts/install.sh runs): without g++ one line and
  exit 1, nothing fetched; built already and --quiet, nothing said."""
  env = dict(subprocess_env(1), PATH=os.path.dirname(sys.executable) + os.pathsep + str(tmp_path))
  cache = str(tmp_path / "cache")
  cmd = [sys.executable, "-m", "emogen_jax.onednn_conv", "--cache-dir", cache, "--quiet"]
  proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  if os.path.exists(os.path.join(os.path.dirname(sys.executable), "g++")):
    pytest.skip("g++ lives beside this python: PATH cannot leave it out")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith("oneDNN binding not built: g++ not found"), line
  assert not os.path.exists(os.path.join(cache, "wheels-2023.2.0"))
  # Built already (a library at the path the build would write): the quiet run says nothing.
  from emogen_jax.onednn_conv import binding
  os.makedirs(cache)
  open(binding.library_path(cache), "w").close()
  proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), proc
  proc = subprocess.run(cmd[:-1], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == f"oneDNN binding: {binding.library_path(cache)}"


def test_one_build_per_process(built, tmp_path):
  """XLA keeps the first registration of a handler name: the same build from another cache
  folder (the benchmark's tests build their own) loads as a no-op; another build is one line."""
  import shutil

  from emogen_jax.onednn_conv import binding

  binding.load(built)
  copy = tmp_path / os.path.basename(built)
  shutil.copy(built, copy)
  binding.load(str(copy))
  with pytest.raises(binding.BuildError, match="already runs another build of the oneDNN binding"):
    binding.load(str(tmp_path / "libonednn_conv-000000000000.so"))


def test_notebook_api_default_is_auto(built, tmp_path):
  """TalkingFace compiles its generator with cpu_convolutions="auto" (oneDNN's here, where built
  on an AVX-512 CPU) and says which; its frames equal those of XLA's kernels to rounding."""
  from emogen_jax.inference.api import TalkingFace
  from emogen_jax.onednn_conv import binding
  from tests._infer_fixtures import face_image, make_generator_checkpoint

  ckpt = make_generator_checkpoint(str(tmp_path / "gen"))
  wav = np.sin(2 * np.pi * 220 * np.arange(16000) / 16000).astype(np.float32) * 0.3
  out = {}
  for choice in ("auto", "xla"):
    tf = TalkingFace.load(ckpt, batch_size=4, cpu_convolutions=choice)
    out[choice] = (tf.convolutions, tf.generate(face=face_image(), audio=wav, emotion="HAP",
                                                fps=25, progress=False)[0].astype(np.float32))
  assert out["auto"][0] == ("onednn" if binding.has_avx512() else "xla") and out["xla"][0] == "xla"
  a, b = out["auto"][1], out["xla"][1]
  assert a.shape == b.shape and len(a) >= 20
  assert np.abs(a - b).max() <= 1.0, np.abs(a - b).max()  # uint8 frames: rounding at most
