"""The oneDNN convolutions as a user meets them (emogen_jax/onednn_conv): a training run
with --config.cpu_convolutions=onednn calls oneDNN and ends where the same run on XLA's kernels
ends; EmoGen trains and validates on it; the inference CLI's --cpu-convolutions onednn writes the
same video; the default, auto, takes oneDNN's where built on an AVX-512 CPU and XLA's (saying
why, building nothing) elsewhere, in the trainer and the notebook API; nested blocks agree;
`python -m emogen_jax.onednn_conv` builds; two processes build the binding together; a wrong
choice, no g++, an unwritable cache and a file that is not the binding get one-line errors.
(tests/test_bench_onednn.py checks the binding's parts against lax's and the benchmark.)

The binding is built once for this module into a cache of its own (oneDNN's wheels from the
package index, g++), never into the user's, which the rest of the suite's runs read: skipped
where either is missing, with the reason."""

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
def built(tmp_path_factory):
  """The binding, built into a cache home of this module's own (XDG_CACHE_HOME = built.home), so
  that the user's cache, which `auto` reads in the other tests' runs, does not change under them."""
  from emogen_jax import onednn_conv
  home = tmp_path_factory.mktemp("cache_home")
  try:
    library = onednn_conv.build(os.path.join(home, "emogen_jax", "onednn_conv"))
  except onednn_conv.BuildError as e:
    pytest.skip(f"the oneDNN binding cannot be built here: {e}")
  return Built(library, str(home))


class Built(str):
  """The library's path, with ``home`` (its XDG_CACHE_HOME) and ``env`` (that setting)."""

  def __new__(cls, library: str, home: str):
    self = super().__new__(cls, library)
    self.home, self.env = home, {"XDG_CACHE_HOME": home}
    return self


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
                     extra_env={"EMOGEN_ONEDNN_STATS": "1", **built.env})
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
        cwd=tmp_path, env=dict(subprocess_env(1), EMOGEN_ONEDNN_STATS="1", **built.env),
        capture_output=True,
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
                   extra_env={"EMOGEN_ONEDNN_STATS": "1", **built.env}, timeout=600)
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


def test_auto_without_avx512_is_xla(monkeypatch, tmp_path):
  """A CPU without AVX-512 (as auto sees this one here): XLA's, whatever is built, and why."""
  from emogen_jax import onednn_conv

  monkeypatch.setattr(onednn_conv, "has_avx512", lambda: False)
  k, lines, routed = _auto(monkeypatch, tmp_path)
  assert (k, routed) == ("xla", False)
  (line,) = lines
  assert "XLA's kernels (config.cpu_convolutions=auto; auto: this CPU has no AVX-512" in line
  assert not os.listdir(tmp_path)  # nothing built


def test_auto_uses_onednn_where_built_and_xla_elsewhere(built, monkeypatch, tmp_path):
  from emogen_jax.onednn_conv import binding

  if not binding.has_avx512():
    pytest.skip("auto takes XLA's kernels on this CPU (test_auto_without_avx512_is_xla)")
  home = built.home
  # The built binding (as scripts/install.sh leaves it in the user's cache): oneDNN's.
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
                    "--workdir", str(workdir)], extra_env={"EMOGEN_ONEDNN_STATS": "1", **built.env})
  log = proc.stdout + proc.stderr
  if binding.has_avx512():
    assert "convolutions: oneDNN's kernels on XLA's threads (config.cpu_convolutions=auto" in log
    assert all(int(n) > 0 for n in _STATS.search(log).groups())
  else:
    assert "convolutions: XLA's kernels (config.cpu_convolutions=auto; auto: this CPU has no " \
           "AVX-512" in log
  assert _final(workdir)["step"] == 1


def test_build_command(tmp_path, monkeypatch, capsys):
  """`python -m emogen_jax.onednn_conv` (what scripts/install.sh runs): without g++ one line and
  exit 1, nothing fetched; built already and --quiet, nothing said; --if-avx512 on a CPU
  without AVX-512 builds nothing, --quiet silently."""
  from emogen_jax.onednn_conv import __main__ as command
  from emogen_jax.onednn_conv import binding

  # A PATH with nothing on it: no g++ (python by its full path).
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  env = dict(subprocess_env(1), PATH=str(bin_dir))
  cache = str(tmp_path / "cache")
  cmd = [sys.executable, "-m", "emogen_jax.onednn_conv", "--cache-dir", cache, "--quiet"]
  proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith("oneDNN binding not built: g++ not found"), line
  assert not os.path.exists(os.path.join(cache, "wheels-2023.2.0"))
  # Built already (a library at the path the build would write): the quiet run says nothing.
  os.makedirs(cache)
  open(binding.library_path(cache), "w").close()
  proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), proc
  proc = subprocess.run(cmd[:-1], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == f"oneDNN binding: {binding.library_path(cache)}"
  # --if-avx512 where there is none: nothing built, one line (none with --quiet), exit 0.
  monkeypatch.setattr(binding, "has_avx512", lambda: False)
  fresh = str(tmp_path / "fresh")
  assert command.main(["--if-avx512", "--cache-dir", fresh]) == 0
  assert "not built: this CPU has no AVX-512" in capsys.readouterr().out
  assert command.main(["--if-avx512", "--quiet", "--cache-dir", fresh]) == 0
  assert capsys.readouterr() == ("", "") and not os.path.exists(fresh)
  # A --cache-dir that cannot be a folder: one line naming it, exit 1, no "building" said.
  proc = subprocess.run(cmd[:3] + ["--cache-dir", os.path.join(cache, os.path.basename(
      binding.library_path(cache)), "sub")], cwd=tmp_path, env=dict(subprocess_env(1)),
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and proc.stdout == "", proc
  (line,) = proc.stderr.strip().splitlines()
  assert "cannot write the binding's cache folder" in line and "give a writable folder" in line


def test_nested_blocks_agree(built, monkeypatch):
  """Routing is process-wide: inside a cpu_convolutions block, auto (a training's or a
  TalkingFace's default) takes the block's kernels, and another explicit choice is one line."""
  from emogen_jax import onednn_conv
  from emogen_jax.errors import UserError
  from emogen_jax.models import layers

  monkeypatch.setenv("XDG_CACHE_HOME", built.home)
  own = layers.conv2d
  with onednn_conv.cpu_convolutions("xla", log=lambda m: None):
    with onednn_conv.cpu_convolutions("auto", log=lambda m: None) as k:
      assert k == "xla" and layers.conv2d is own  # not routed, whatever auto takes alone
    with pytest.raises(UserError, match=r"=onednn inside a cpu_convolutions\('xla'\) block"):
      with onednn_conv.cpu_convolutions("onednn", log=lambda m: None):
        pass
  with onednn_conv.cpu_convolutions("onednn", log=lambda m: None):
    routed = layers.conv2d
    with onednn_conv.cpu_convolutions("auto", log=lambda m: None) as k:
      assert k == "onednn" and layers.conv2d is routed
    assert layers.conv2d is routed  # the inner block undid nothing
  assert layers.conv2d is own


def test_library_without_the_handlers_is_one_line(tmp_path):
  """A file at the binding's name that loads but is not the binding (here: the C library)."""
  import ctypes.util
  import shutil

  libc = ctypes.util.find_library("c")
  path = next((os.path.join(d, libc) for d in ("/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64",
                                               "/usr/lib/x86_64-linux-gnu")
               if libc and os.path.exists(os.path.join(d, libc))), None)
  if path is None:
    pytest.skip("no C library file found to stand in")
  fake = tmp_path / "libonednn_conv-000000000000.so"
  shutil.copy(path, fake)
  code = f"from emogen_jax.onednn_conv import binding\nbinding.load({str(fake)!r})\n"
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(1),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "lacks OnednnConvFwd, OnednnConvBwdData, OnednnConvBwdWeights" in proc.stderr.strip().splitlines()[-1]


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


def test_notebook_api_default_is_auto(built, monkeypatch, tmp_path):
  """TalkingFace compiles its generator with cpu_convolutions="auto" (oneDNN's here, where built
  on an AVX-512 CPU) and says which; its frames equal those of XLA's kernels to rounding."""
  from emogen_jax.inference.api import TalkingFace
  from emogen_jax.onednn_conv import binding
  from tests._infer_fixtures import face_image, make_generator_checkpoint

  ckpt = make_generator_checkpoint(str(tmp_path / "gen"))
  wav = np.sin(2 * np.pi * 220 * np.arange(16000) / 16000).astype(np.float32) * 0.3
  monkeypatch.setenv("XDG_CACHE_HOME", built.home)
  out = {}
  for choice in ("auto", "xla"):
    tf = TalkingFace.load(ckpt, batch_size=4, cpu_convolutions=choice)
    # The compiled generator is what the kernels' name says (the routing covered the compile).
    assert ("OnednnConvFwd" in tf.renderer._forward.as_text()) == (tf.convolutions == "onednn")
    out[choice] = (tf.convolutions, tf.generate(face=face_image(), audio=wav, emotion="HAP",
                                                fps=25, progress=False)[0].astype(np.float32))
  assert out["auto"][0] == ("onednn" if binding.has_avx512() else "xla") and out["xla"][0] == "xla"
  a, b = out["auto"][1], out["xla"][1]
  assert a.shape == b.shape and len(a) >= 20
  assert np.abs(a - b).max() <= 1.0, np.abs(a - b).max()  # uint8 frames: rounding at most
  from emogen_jax.errors import UserError
  with pytest.raises(UserError, match=r"^cpu_convolutions='mkl'; use auto"):
    TalkingFace.load(ckpt, cpu_convolutions="mkl")


def test_bfloat16_products_in_the_notebook_api(built, monkeypatch, tmp_path):
  """Under jax.default_matmul_precision("bfloat16") the generator compiles with oneDNN's
  bfloat16 products; its frames stay within a few grey levels of float32's."""
  import jax

  from emogen_jax.inference.api import TalkingFace
  from tests._infer_fixtures import face_image, make_generator_checkpoint

  ckpt = make_generator_checkpoint(str(tmp_path / "gen"))
  wav = np.sin(2 * np.pi * 220 * np.arange(16000) / 16000).astype(np.float32) * 0.3
  monkeypatch.setenv("XDG_CACHE_HOME", built.home)
  frames = {}
  for math in ("float32", "bfloat16"):
    with jax.default_matmul_precision(math):
      tf = TalkingFace.load(ckpt, batch_size=4, cpu_convolutions="onednn")
    hlo = tf.renderer._forward.as_text()
    assert ("bf16 = 1" in hlo) == (math == "bfloat16") and "OnednnConvFwd" in hlo
    frames[math] = tf.generate(face=face_image(), audio=wav, emotion="HAP", fps=25,
                               progress=False)[0].astype(np.float32)
  d = np.abs(frames["float32"] - frames["bfloat16"])
  assert d.max() <= 8 and d.mean() < 0.5, (d.max(), d.mean())


def test_full_width_generator_by_winograd_matches_xla(built, monkeypatch):
  """The reference generator routed to oneDNN on an AVX-512 CPU runs its large 3x3 layers by
  Winograd (F(4x4) and, on the 6x6 images, F(2x2)), and its frames stay within the parity tests'
  2e-5 of XLA's (the forward at batch 2, inference mode, random weights that keep BatchNorm from
  being an identity)."""
  import jax
  import jax.numpy as jnp

  from emogen_jax.models.generator import Generator
  from emogen_jax.onednn_conv import binding, cpu_convolutions
  from tests._model_fixtures import random_variables

  monkeypatch.delenv(binding.WINOGRAD_ENV, raising=False)
  if not binding.winograd_enabled():
    pytest.skip("Winograd's layers run on AVX-512 CPUs only; this one has none")
  rng = np.random.default_rng(5)
  mel = jnp.asarray(rng.standard_normal((2, 80, 16, 1)), jnp.float32)
  face = jnp.asarray(rng.uniform(size=(2, 96, 96, 6)), jnp.float32)
  emotion = jnp.asarray([1, 4], jnp.int32)
  model = Generator()
  variables = random_variables(model, mel, face, emotion, seed=3)
  run = lambda v, m, f, e: model.apply(v, m, f, e, train=False)
  want = np.asarray(jax.jit(run)(variables, mel, face, emotion))
  monkeypatch.setenv("XDG_CACHE_HOME", built.home)
  with cpu_convolutions("onednn", log=lambda line: None):
    routed = jax.jit(lambda *a: run(*a))
    text = routed.lower(variables, mel, face, emotion).as_text()
    got = np.asarray(routed(variables, mel, face, emotion))
  assert text.count("OnednnWinogradFwd") >= 10 and "tile = 4" in text and "tile = 2" in text
  assert want.std() > 0.05  # frames that vary, not a saturated sigmoid
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_infer_cli_with_a_bad_winograd_switch_is_one_line(built, tmp_path):
  """EMOGEN_ONEDNN_WINOGRAD=off on oneDNN's kernels: one line naming the variable and its values,
  exit 2, no traceback, before anything is written (an "off" that silently meant on would
  mislead a comparison)."""
  import cv2
  import soundfile

  from tests._infer_fixtures import face_image, make_generator_checkpoint

  ckpt = make_generator_checkpoint(str(tmp_path / "gen"))
  cv2.imwrite(str(tmp_path / "face.png"), face_image())
  soundfile.write(str(tmp_path / "speech.wav"), np.zeros(16000, np.float32), 16000)
  proc = subprocess.run(
      [sys.executable, "-m", "emogen_jax.infer", "--checkpoint", ckpt, "--face", "face.png",
       "--audio", "speech.wav", "--emotion", "HAP", "--out", "out.mp4",
       "--cpu-convolutions", "onednn"],
      cwd=tmp_path, env=dict(subprocess_env(1), EMOGEN_ONEDNN_WINOGRAD="off", **built.env),
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  (line,) = proc.stderr.strip().splitlines()
  assert line.endswith("EMOGEN_ONEDNN_WINOGRAD='off'; set 0 (oneDNN's direct kernels for every "
                       "layer) or 1 / leave it unset (Winograd's algorithm where it was measured "
                       "faster)"), line
  assert not os.path.exists(tmp_path / "out.mp4")
