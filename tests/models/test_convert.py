"""Weight conversion: numerical parity of every converted network with a PyTorch re-implementation
of the original (tests/_torch_reference.py), exact round trips, and the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from emogen_jax import convert
from emogen_jax.errors import UserError  # noqa: E402
from emogen_jax.models import checkpoints  # noqa: E402
from emogen_jax.models import (EmotionDiscriminator, Generator, QualityDiscriminator,  # noqa: E402
                               SyncNet, VGG19Features)
from tests import _torch_reference as ref  # noqa: E402
from tests import REPO

TOL = 1e-4


def random_state_dict(kind, width=1.0, seed=0):
  """A PyTorch state dict of ``kind`` with random weights scaled to keep activations O(1), and
  random BatchNorm statistics (so eval-mode BN is not an identity)."""
  rng = np.random.default_rng(seed)
  layout, _ = convert.expected_torch_layout(kind, width)
  sd = {}
  for key, shape in layout.items():
    if key.endswith("num_batches_tracked"):
      sd[key] = np.asarray(rng.integers(0, 1000), np.int64)
    elif key.endswith("running_var"):
      sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif key.endswith("running_mean"):
      sd[key] = rng.normal(0, 0.1, shape).astype(np.float32)
    elif key.endswith(".weight") and len(shape) == 1:  # BatchNorm scale
      sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif len(shape) >= 2:
      # ~1/sqrt(fan_in): residual stacks and un-normalised (eval) BatchNorm then stay O(1).
      fan_in = int(np.prod(shape[1:]))
      sd[key] = rng.normal(0, (1.0 / fan_in) ** 0.5, shape).astype(np.float32)
    else:
      sd[key] = rng.normal(0, 0.05, shape).astype(np.float32)
  return sd


def to_torch(sd):
  return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def generator_outputs():
  """The full-size generator, once: ours (converted weights) and the PyTorch reference, B=1, T=2."""
  sd = random_state_dict("generator", seed=1)
  rng = np.random.default_rng(2)
  mel = rng.normal(0, 1, (1, 2, 80, 16, 1)).astype(np.float32)
  face = rng.uniform(0, 1, (1, 2, 96, 96, 6)).astype(np.float32)
  face[..., :3] = 0
  emotion = np.eye(6, dtype=np.float32)[[3]]
  variables = convert.torch_to_flax("generator", sd)
  ours = jax.jit(lambda v, m, f, e: Generator().apply(v, m, f, e, train=False))(
      variables, mel, face, emotion)
  with torch.no_grad():
    theirs = ref.generator(to_torch(sd), torch.from_numpy(mel).permute(0, 1, 4, 2, 3),
                           torch.from_numpy(face).permute(0, 4, 1, 2, 3), torch.from_numpy(emotion))
  return np.asarray(ours), theirs.permute(0, 2, 3, 4, 1).numpy()


def test_generator_parity_full_size(generator_outputs):
  ours, theirs = generator_outputs
  assert ours.shape == theirs.shape == (1, 2, 96, 96, 3)
  # A non-saturated output, so that the comparison means something.
  assert np.mean((theirs > 0.02) & (theirs < 0.98)) > 0.5
  assert max_diff(ours, theirs) <= TOL


def _bn_running(sd_torch):
  return {k: v.numpy() for k, v in sd_torch.items() if "running_mean" in k}


def test_generator_parity_train_mode_batch_stats():
  """Train-mode BatchNorm (batch statistics) and its running-mean update, at a small width."""
  width = 0.25
  sd = random_state_dict("generator", width, seed=3)
  rng = np.random.default_rng(4)
  mel = rng.normal(0, 1, (2, 2, 80, 16, 1)).astype(np.float32)
  face = rng.uniform(0, 1, (2, 2, 96, 96, 6)).astype(np.float32)
  labels = np.array([0, 5])
  variables = convert.torch_to_flax("generator", sd, width)
  ours, updated = jax.jit(lambda v: Generator(width=width).apply(
      v, mel, face, labels, train=True, mutable=["batch_stats"]))(variables)
  sd_t = to_torch(sd)
  with torch.no_grad():
    theirs = ref.generator(sd_t, torch.from_numpy(mel).permute(0, 1, 4, 2, 3),
                           torch.from_numpy(face).permute(0, 4, 1, 2, 3),
                           torch.eye(6)[torch.from_numpy(labels)], train=True)
  assert max_diff(ours, theirs.permute(0, 2, 3, 4, 1).numpy()) <= TOL
  # The running means moved (momentum 0.1) identically on both sides.
  back = convert.flax_to_torch("generator", {"params": variables["params"], **updated}, width)
  moved = 0
  for k, v in _bn_running(sd_t).items():
    assert max_diff(back[k], v) <= TOL, k
    moved += max_diff(v, sd[k]) > 1e-3
  assert moved > 10


def test_syncnet_parity():
  sd = random_state_dict("syncnet", seed=5)
  rng = np.random.default_rng(6)
  mel = rng.normal(0, 1, (2, 80, 16, 1)).astype(np.float32)
  faces = rng.uniform(0, 1, (2, 48, 96, 15)).astype(np.float32)
  variables = convert.torch_to_flax("syncnet", sd)
  a, v = jax.jit(lambda v: SyncNet().apply(v, mel, faces, train=False))(variables)
  with torch.no_grad():
    ta, tv = ref.syncnet(to_torch(sd), torch.from_numpy(mel).permute(0, 3, 1, 2),
                         torch.from_numpy(faces).permute(0, 3, 1, 2))
  assert max_diff(a, ta) <= TOL and max_diff(v, tv) <= TOL
  # The two examples differ, so a swapped batch or channel order would show.
  assert max_diff(ta[0], ta[1]) > 1e-2 and max_diff(tv[0], tv[1]) > 1e-2


@pytest.mark.parametrize("original_layout", [False, True])
def test_emotion_disc_parity(original_layout):
  sd = random_state_dict("emotion_disc", seed=7)
  video = np.random.default_rng(8).uniform(0, 1, (2, 5, 96, 96, 3)).astype(np.float32)
  variables = convert.torch_to_flax("emotion_disc", sd)
  ours = jax.jit(EmotionDiscriminator(original_layout=original_layout).apply)(variables, video)
  sd_t = to_torch(sd)
  with torch.no_grad():
    if original_layout:  # the original received (N, C, T, H, W)
      theirs = ref.emotion_disc(sd_t, torch.from_numpy(video).permute(0, 4, 1, 2, 3))
    else:
      theirs = ref.emotion_disc_frames(sd_t, torch.from_numpy(video).permute(0, 1, 4, 2, 3))
  assert ours.shape == (2, 6)
  assert np.std(theirs.numpy()) > 1e-2
  assert max_diff(ours, theirs) <= TOL
  # The two layouts really differ (the test would not notice a no-op switch otherwise).
  other = jax.jit(EmotionDiscriminator(original_layout=not original_layout).apply)(variables, video)
  assert max_diff(other, theirs) > 1e-3


def test_quality_disc_parity():
  sd = random_state_dict("quality_disc", seed=9)
  frames = np.random.default_rng(10).uniform(0, 1, (2, 2, 96, 96, 3)).astype(np.float32)
  variables = convert.torch_to_flax("quality_disc", sd)
  ours = jax.jit(QualityDiscriminator().apply)(variables, frames)
  with torch.no_grad():
    theirs = ref.quality_disc(to_torch(sd), torch.from_numpy(frames.reshape(4, 96, 96, 3))
                              .permute(0, 3, 1, 2))
  assert ours.shape == (2, 2)
  assert max_diff(ours.reshape(4), theirs.reshape(4)) <= TOL
  assert max_diff(theirs[0], theirs[1]) > 1e-4


def test_vgg19_parity_and_bgr_input():
  sd = random_state_dict("vgg19", seed=11)
  rgb = np.random.default_rng(12).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
  variables = convert.torch_to_flax("vgg19", sd)
  ours = jax.jit(VGG19Features().apply)(variables, rgb)
  ours_bgr = jax.jit(VGG19Features(bgr_input=True).apply)(variables, np.ascontiguousarray(rgb[..., ::-1]))
  with torch.no_grad():
    theirs = ref.vgg19_features(to_torch(sd), torch.from_numpy(rgb).permute(0, 3, 1, 2))
  raw = jax.jit(VGG19Features(normalize=False).apply)(variables, rgb)
  with torch.no_grad():
    theirs_raw = ref.vgg19_features(to_torch(sd), torch.from_numpy(rgb).permute(0, 3, 1, 2),
                                    normalize=False)
  assert max_diff(raw[-1], theirs_raw[-1].permute(0, 2, 3, 1).numpy()) <= TOL
  assert len(ours) == 5
  for o, ob, t in zip(ours, ours_bgr, theirs):
    t = t.permute(0, 2, 3, 1).numpy()
    assert o.shape == t.shape
    assert np.max(np.abs(t)) > 1e-2
    assert max_diff(o, t) <= TOL
    assert max_diff(ob, t) <= TOL


def test_param_counts():
  counts = {"emotion_disc": 16_503_430, "vgg19": 20_024_384}
  for kind, n in counts.items():
    layout, _ = convert.expected_torch_layout(kind)
    assert sum(int(np.prod(s)) for s in layout.values()) == n


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", convert.KINDS)
def test_round_trip_is_exact(kind):
  sd = random_state_dict(kind, seed=13)
  variables = convert.torch_to_flax(kind, sd)
  nbt = {k: int(v) for k, v in sd.items() if k.endswith("num_batches_tracked")}
  back = convert.flax_to_torch(kind, variables, num_batches_tracked=nbt)
  assert set(back) == set(sd)
  for k, v in sd.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    assert np.array_equal(back[k], v), k
  # And ours -> PyTorch -> ours.
  again = convert.torch_to_flax(kind, back)
  flat_a = jax.tree_util.tree_leaves_with_path(variables)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(again))
  assert len(flat_a) == len(flat_b)
  for path, leaf in flat_a:
    assert np.array_equal(leaf, flat_b[path])


def test_round_trip_of_initialised_model():
  """Our own initialisation (Xavier-uniform kernels, PyTorch-style LSTM) exports to the PyTorch
  layout and comes back unchanged."""
  x = jnp.zeros((1, 5, 96, 96, 3))
  model = EmotionDiscriminator(width=0.25)
  variables = jax.tree_util.tree_map(np.asarray, jax.jit(model.init)(jax.random.key(0), x))
  params = variables["params"]
  k = params["conv_2_0"]["kernel"]  # (3, 3, 16, 32): Xavier bound sqrt(6 / (9*16 + 9*32))
  bound = (6 / (9 * 16 + 9 * 32)) ** 0.5
  assert k.shape == (3, 3, 16, 32) and bound * 0.9 < np.abs(k).max() <= bound
  k = params["projector_0"]["kernel"]
  bound = (6 / sum(k.shape)) ** 0.5
  assert bound * 0.9 < np.abs(k).max() <= bound
  assert 0.9 / 128 ** 0.5 < np.abs(params["rnn_1"]["kernel_hh"]).max() <= 1 / 128 ** 0.5
  sd = convert.flax_to_torch("emotion_disc", variables, width=0.25)
  assert sd["rnn_1.weight_ih_l0"].shape == (512, 128)
  assert sd["projector.0.weight"].shape == (512, 1152)
  again = convert.torch_to_flax("emotion_disc", sd, width=0.25)
  for (p, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(variables),
                            jax.tree_util.tree_leaves_with_path(again)):
    assert np.array_equal(a, b), p


def test_validation_errors_name_the_problem():
  sd = random_state_dict("syncnet", seed=14)
  with pytest.raises(UserError, match=r"looks like a syncnet checkpoint, not a generator"):
    convert.torch_to_flax("generator", sd)
  truncated = dict(list(sd.items())[:-5])
  with pytest.raises(UserError, match=r"missing keys"):
    convert.torch_to_flax("syncnet", truncated)
  bad = dict(sd)
  bad["face_encoder.0.conv_block.0.weight"] = np.zeros((32, 15, 5, 5), np.float32)
  with pytest.raises(UserError, match=r"1 shape mismatches \(face_encoder\.0\.conv_block\.0\."
                                      r"weight: expected \(32, 15, 7, 7\), found \(32, 15, 5, 5\)"):
    convert.torch_to_flax("syncnet", bad)
  assert convert.detect_kind(sd) == "syncnet"


def test_vgg19_file_with_classifier_head(tmp_path, capsys):
  """torchvision's vgg19-dcbf9e60.pth holds `features.*` and the classifier; the latter is
  reported and skipped (small stand-in shapes here: the real head is 500 MB)."""
  sd = random_state_dict("vgg19", seed=19)
  head = {f"classifier.{i}.{p}": np.ones((2, 2) if p == "weight" else (2,), np.float32)
          for i in (0, 3, 6) for p in ("weight", "bias")}
  src = tmp_path / "vgg19-dcbf9e60.pth"
  torch.save({k: torch.from_numpy(v) for k, v in {**sd, **head}.items()}, src)
  capsys.readouterr()
  assert convert.main(["--src", str(src), "--out", str(tmp_path / "vgg")]) == 0
  out = capsys.readouterr().out
  assert "converted vgg19" in out and "ignored 6 keys" in out
  variables = checkpoints.load_model(str(tmp_path / "vgg"), "vgg19")
  assert np.array_equal(variables["params"]["features_34"]["kernel"],
                        sd["features.34.weight"].transpose(2, 3, 1, 0))
  assert len(checkpoints.load_meta(str(tmp_path / "vgg"))["ignored_keys"]) == 6


def test_normalize_state_dict_unwraps_and_strips_module_prefix():
  sd = random_state_dict("quality_disc", seed=15)
  wrapped = {"state_dict": {"module." + k: torch.from_numpy(v) for k, v in sd.items()},
             "optimizer": {}, "global_step": 7}
  got = convert.normalize_state_dict(wrapped)
  assert set(got) == set(sd)
  assert all(np.array_equal(got[k], sd[k]) for k in sd)
  half = convert.normalize_state_dict({k: torch.from_numpy(v).bfloat16() for k, v in sd.items()})
  assert half["binary_pred.0.weight"].dtype == np.float32
  with pytest.raises(UserError, match="not tensors"):
    convert.normalize_state_dict({"state_dict": {"a.weight": torch.zeros(2), "note": "hello"}})


# ----------------------------------------------------------------------------- command line


def _run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "emogen_jax.convert", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_forward_and_reverse(tmp_path):
  """A Wav2Lip-style lipsync_expert.pth ({'state_dict': ...}, DataParallel prefixes) -> ours ->
  back to a .pth the original loads, through the real command line."""
  sd = random_state_dict("syncnet", seed=16)
  src = tmp_path / "lipsync_expert.pth"
  torch.save({"state_dict": {"module." + k: torch.from_numpy(v) for k, v in sd.items()},
              "global_step": 123, "global_epoch": 4}, src)
  out = tmp_path / "syncnet_ckpt"
  r = _run_cli("--src", str(src), "--out", str(out))  # kind detected from the keys
  assert r.returncode == 0, r.stderr
  assert "converted syncnet" in r.stdout
  variables = checkpoints.load_model(str(out), "syncnet")
  expected = convert.torch_to_flax("syncnet", sd)
  for (p, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(expected),
                            jax.tree_util.tree_leaves_with_path(variables)):
    assert np.array_equal(a, b), p
  meta = checkpoints.load_meta(str(out))
  assert meta["width"] == 1.0

  back = tmp_path / "back.pth"
  r = _run_cli("--reverse", "--src", str(out), "--out", str(back))
  assert r.returncode == 0, r.stderr
  loaded = torch.load(back, map_location="cpu", weights_only=True)
  # Wrapped like Wav2Lip's checkpoints, so its load_checkpoint() accepts it.
  assert set(loaded) == {"state_dict", "optimizer", "global_step", "global_epoch"}
  assert loaded["optimizer"] is None
  loaded = loaded["state_dict"]
  assert set(loaded) == set(sd)
  for k, v in sd.items():  # bit-identical, num_batches_tracked included (kept in the meta)
    assert np.array_equal(loaded[k].numpy(), v) and loaded[k].numpy().dtype == v.dtype, k


def test_cli_emotion_disc_meta_and_raw_export(tmp_path):
  sd = random_state_dict("emotion_disc", seed=17)
  src = tmp_path / "disc_emo.pth"
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, src)
  assert convert.main(["--kind", "emotion_disc", "--src", str(src), "--out",
                       str(tmp_path / "e")]) == 0
  assert checkpoints.load_meta(str(tmp_path / "e"))["original_layout"] is True
  assert convert.main(["--kind", "emotion_disc", "--layout", "frames", "--src", str(src),
                       "--out", str(tmp_path / "f")]) == 0
  assert checkpoints.load_meta(str(tmp_path / "f"))["original_layout"] is False
  assert convert.main(["--reverse", "--src", str(tmp_path / "e"), "--out",
                       str(tmp_path / "e.pth")]) == 0
  raw = torch.load(tmp_path / "e.pth", map_location="cpu", weights_only=True)
  assert set(raw) == set(sd)  # raw state dict, as the original saves the emotion disc
  assert all(np.array_equal(raw[k].numpy(), sd[k]) for k in sd)


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
  sd = random_state_dict("quality_disc", seed=18)
  good = tmp_path / "qual.pth"
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, good)

  truncated = tmp_path / "truncated.pth"
  torch.save({k: torch.from_numpy(v) for k, v in list(sd.items())[:-4]}, truncated)
  shape = tmp_path / "shape.pth"
  bad = {k: torch.from_numpy(v) for k, v in sd.items()}
  bad["binary_pred.0.weight"] = torch.zeros(1, 256, 1, 1)
  torch.save(bad, shape)
  not_torch = tmp_path / "notes.pth"
  not_torch.write_text("not a checkpoint\n")
  cases = {
      "wrong kind": (["--kind", "vgg19", "--src", str(good)], "not a vgg19 state dict (expected 32 "
                     "keys, found 28): 32 missing keys"),
      "missing": (["--src", str(tmp_path / "nope.pth")], "does not exist"),
      "truncated": (["--kind", "quality_disc", "--src", str(truncated)], "4 missing keys"),
      "shape": (["--kind", "quality_disc", "--src", str(shape)], "binary_pred.0.weight: expected "
                "(1, 512, 1, 1), found (1, 256, 1, 1)"),
      "not torch": (["--src", str(not_torch)], "not a readable PyTorch checkpoint"),
      "reverse of a missing dir": (["--reverse", "--src", str(tmp_path / "none")], "does not exist"),
  }
  for name, (args, needle) in cases.items():
    capsys.readouterr()
    code = convert.main(args + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, name
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (name, err)
    if name == "wrong kind":
      assert "this looks like a quality_disc checkpoint, not a vgg19" in err[0]
  assert not (tmp_path / "out").exists()


def test_cli_subprocess_exit_status(tmp_path):
  r = _run_cli("--src", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "out"))
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      f"error: PyTorch checkpoint {str(tmp_path / 'missing.pth')!r} does not exist"]


def test_library_imports_without_torch():
  code = ("import sys; sys.modules['torch'] = None\n"
          "import emogen_jax.convert, emogen_jax.models\n"
          "from emogen_jax.errors import UserError\n"
          "try:\n"
          "  emogen_jax.convert.load_torch_file('setup.cfg')\n"
          "except UserError as e:\n"
          "  print('UserError', e)\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr
  assert "UserError reading .pth files needs PyTorch" in r.stdout
