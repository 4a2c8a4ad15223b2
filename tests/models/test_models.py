"""Models: reference sizes and names (full size, via eval_shape), the fast transposed conv against
PyTorch's formula, and numerics at a small width (modes agree, ranges, PyTorch replicas, bf16,
cross-device BatchNorm)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emogen_jax.models import Generator, QualityDiscriminator, SyncNet, count_params
from emogen_jax.models.layers import ConvTBN, conv_transpose, conv_transpose_reference
from tests._model_fixtures import load_flax_into_torch, random_variables, torch_models

WIDTH = 0.125  # 2..64 channels: real structure, cheap compiles
KEY = jax.random.PRNGKey(0)


def _gen_inputs(b, t=None):
  lead = (b,) if t is None else (b, t)
  return jnp.zeros(lead + (80, 16, 1)), jnp.zeros(lead + (96, 96, 6)), jnp.zeros((b,), jnp.int32)


def _paths(tree):
  return {"/".join(p.key for p in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def full_size():
  gen = jax.eval_shape(lambda: Generator().init(KEY, *_gen_inputs(2)))
  sync = jax.eval_shape(lambda: SyncNet().init(KEY, jnp.zeros((2, 80, 16, 1)),
                                               jnp.zeros((2, 48, 96, 15))))
  qual = jax.eval_shape(lambda: QualityDiscriminator().init(KEY, jnp.zeros((2, 96, 96, 3))))
  return gen, sync, qual


# ----------------------------------------------------------------------------- full-size structure

def test_full_size_parameter_and_statistics_counts(full_size):
  gen, sync, qual = full_size
  assert count_params(gen["params"]) == 36_826_419
  assert count_params(gen["batch_stats"]) == 22_752
  assert count_params(sync["params"]) == 16_435_072
  assert count_params(sync["batch_stats"]) == 14_080
  assert count_params(qual["params"]) == 14_113_793
  assert set(qual) == {"params"}
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(full_size))


def test_full_size_names_follow_pytorch_module_paths(full_size):
  gen, sync, qual = (_paths(v["params"]) for v in full_size)
  assert gen["face_encoder_blocks_0_0/conv/kernel"] == (7, 7, 6, 16)
  assert gen["face_encoder_blocks_2_3/bn/scale"] == (64,)
  assert gen["audio_encoder_3/conv/kernel"] == (3, 3, 32, 64)
  assert gen["audio_encoder_12/conv/kernel"] == (1, 1, 512, 512)
  assert "audio_encoder_13/conv/kernel" not in gen
  assert gen["emotion_encoder_0/kernel"] == (6, 512)
  assert gen["emotion_encoder_2/kernel"] == (512, 512)
  assert gen["face_decoder_blocks_0_0/conv/kernel"] == (1, 1, 1024, 512)
  assert gen["face_decoder_blocks_1_0/conv/kernel"] == (3, 3, 1024, 512)  # stride-1 transposed
  assert gen["face_decoder_blocks_3_0/conv/kernel"] == (3, 3, 768, 384)
  assert gen["face_decoder_blocks_6_2/conv/bias"] == (64,)
  assert gen["output_block_0/conv/kernel"] == (3, 3, 80, 32)
  assert gen["output_block_1/kernel"] == (1, 1, 32, 3)
  assert sync["face_encoder_1/conv/kernel"] == (5, 5, 32, 64)
  assert sync["face_encoder_16/conv/kernel"] == (1, 1, 512, 512)
  assert sync["audio_encoder_11/conv/kernel"] == (3, 3, 256, 256)  # the second res(256)
  assert qual["face_encoder_blocks_1_0/conv/kernel"] == (5, 5, 32, 64)
  assert qual["binary_pred_0/kernel"] == (1, 1, 512, 1)
  gen_stats = _paths(full_size[0]["batch_stats"])
  assert gen_stats["face_decoder_blocks_2_0/bn/mean"] == (512,)


def test_full_size_output_shapes(full_size):
  gen, sync, qual = full_size
  clip = jax.eval_shape(lambda v: Generator().apply(v, *_gen_inputs(2, 5)), gen)
  assert (clip.shape, clip.dtype) == ((2, 5, 96, 96, 3), jnp.float32)
  a, v = jax.eval_shape(lambda v: SyncNet().apply(v, jnp.zeros((3, 80, 16, 1)),
                                                  jnp.zeros((3, 48, 96, 15))), sync)
  assert a.shape == v.shape == (3, 512)
  q = jax.eval_shape(lambda v: QualityDiscriminator().apply(v, jnp.zeros((2, 5, 96, 96, 3))),
                     qual)
  assert q.shape == (2, 5)


def test_generator_rejects_mismatched_inputs(full_size):
  gen = full_size[0]
  mel, face, _ = _gen_inputs(2, 5)
  with pytest.raises(ValueError, match="emotion"):
    jax.eval_shape(lambda v: Generator().apply(v, mel, face, jnp.zeros((3,), jnp.int32)), gen)
  with pytest.raises(ValueError, match="clips"):
    jax.eval_shape(lambda v: Generator().apply(v, mel[:, 0], face, jnp.zeros((2,), jnp.int32)),
                     gen)


# ----------------------------------------------------------------------------- transposed conv

def _scatter_conv_transpose(x, w, s, p, op):
  """PyTorch's definition, literally: out[y, x] += in[i, j] * w[:, :, a, b] at y = i*sh - ph + a.

  x (B, H, W, Cin) NHWC; w (Cin, Cout, kh, kw) in PyTorch's layout.
  """
  (sh, sw), (ph, pw), (oph, opw) = s, p, op
  b, h, wd, _ = x.shape
  _, cout, kh, kw = w.shape
  oh, ow = (h - 1) * sh - 2 * ph + kh + oph, (wd - 1) * sw - 2 * pw + kw + opw
  full = np.zeros((b, (h - 1) * sh + kh + oph, (wd - 1) * sw + kw + opw, cout), np.float64)
  for i in range(h):
    for j in range(wd):
      full[:, i * sh:i * sh + kh, j * sw:j * sw + kw] += np.einsum("nc,coab->nabo", x[:, i, j], w)
  return full[:, ph:ph + oh, pw:pw + ow]


# (kernel, stride, padding, output_padding, input HxW): the decoder's two kinds first.
TCONV_CASES = [
    ((3, 3), (2, 2), (1, 1), (1, 1), (3, 5)),
    ((3, 3), (1, 1), (0, 0), (0, 0), (1, 1)),
    ((3, 3), (2, 2), (1, 1), (1, 1), (1, 1)),
    ((4, 4), (3, 3), (2, 2), (1, 1), (3, 4)),
    ((5, 3), (2, 3), (1, 2), (1, 0), (4, 3)),
    ((2, 2), (2, 2), (0, 0), (0, 0), (2, 3)),
    ((2, 3), (3, 2), (0, 1), (0, 1), (2, 3)),  # kernel rows < stride: phase 2 gets no tap
]


@pytest.mark.parametrize("k,s,p,op,hw", TCONV_CASES)
def test_conv_transpose_matches_pytorch_definition(k, s, p, op, hw):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2,) + hw + (3,)).astype(np.float32)
  w = rng.standard_normal((3, 4) + k).astype(np.float32)
  want = _scatter_conv_transpose(x.astype(np.float64), w.astype(np.float64), s, p, op)
  kernel = jnp.asarray(np.transpose(w, (2, 3, 0, 1)))  # kernel[a, b, i, o] == w[i, o, a, b]
  got = conv_transpose(jnp.asarray(x), kernel, s, p, op, precision="highest")
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k,s,p,op,hw", TCONV_CASES)
def test_conv_transpose_gradients_match_reference(k, s, p, op, hw):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2,) + hw + (5,)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(k + (5, 6)) / 4, jnp.float32)
  out_fast, vjp_fast = jax.vjp(lambda a, w: conv_transpose(a, w, s, p, op, "highest"), x, kernel)
  out_ref, vjp_ref = jax.vjp(lambda a, w: conv_transpose_reference(a, w, s, p, op, "highest"),
                             x, kernel)
  np.testing.assert_allclose(out_fast, out_ref, atol=1e-5, rtol=1e-5)
  cot = jnp.asarray(rng.standard_normal(out_ref.shape), jnp.float32)
  for g_fast, g_ref in zip(vjp_fast(cot), vjp_ref(cot)):
    assert float(jnp.abs(g_ref).max()) > 0.1
    np.testing.assert_allclose(g_fast, g_ref, atol=1e-5, rtol=1e-5)


def test_conv_transpose_equals_torch_conv_transpose2d():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 6, 6, 8)).astype(np.float32)
  m = torch.nn.ConvTranspose2d(8, 4, 3, 2, 1, output_padding=1)
  with torch.no_grad():
    want = m(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  variables = {"params": {"conv": {"kernel": m.weight.detach().numpy().transpose(2, 3, 0, 1),
                                   "bias": m.bias.detach().numpy()},
                          "bn": {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}},
               "batch_stats": {"bn": {"mean": np.zeros(4, np.float32),
                                      "var": np.ones(4, np.float32) - 1e-5}}}
  got = ConvTBN(4, 3, 2, 1, 1).apply(variables, jnp.asarray(x), train=False)
  # Unit BatchNorm in inference mode: ConvTBN == relu(ConvTranspose2d).
  np.testing.assert_allclose(got, np.maximum(want, 0), atol=1e-5)


# ----------------------------------------------------------------------------- generator numerics

@pytest.fixture(scope="module")
def gen_run():
  """One compile computing every generator mode the tests compare, at WIDTH."""
  b, t = 2, 3
  rng = np.random.default_rng(4)
  mel = jnp.asarray(rng.standard_normal((b, t, 80, 16, 1)), jnp.float32)
  face = jnp.asarray(rng.uniform(0, 1, (b, t, 96, 96, 6)), jnp.float32)
  face = face.at[..., :3].set(0.0)  # masked target, as in training/inference
  labels = jnp.asarray([1, 4], jnp.int32)
  model = Generator(width=WIDTH)
  variables = random_variables(model, mel, face, labels)

  @jax.jit
  def run(variables):
    one_hot = jax.nn.one_hot(labels, 6)
    frames = lambda a: a.reshape((b * t,) + a.shape[2:])
    out = {
        "clip_int": model.apply(variables, mel, face, labels),
        "clip_onehot": model.apply(variables, mel, face, one_hot),
        "clip_other": model.apply(variables, mel, face, jnp.asarray([3, 0], jnp.int32)),
        "frames": model.apply(variables, frames(mel), frames(face), jnp.repeat(labels, t)),
    }
    out["clip_train"], out["clip_stats"] = model.apply(variables, mel, face, labels, train=True,
                                                       mutable=["batch_stats"])
    out["frames_train"], out["frames_stats"] = model.apply(
        variables, frames(mel), frames(face), jnp.repeat(one_hot, t, axis=0), train=True,
        mutable=["batch_stats"])
    return out

  return dict(model=model, variables=variables, mel=mel, face=face, labels=labels, b=b, t=t,
              out=jax.device_get(run(variables)))


def test_generator_output_range_and_emotion_effect(gen_run):
  out = gen_run["out"]
  clip = out["clip_int"]
  assert clip.shape == (2, 3, 96, 96, 3) and clip.dtype == np.float32
  assert np.all(np.isfinite(clip)) and clip.min() >= 0.0 and clip.max() <= 1.0
  assert clip.std() > 1e-3  # not a constant image
  # The emotion reaches the output; int labels and one-hot are the same input.
  assert np.abs(out["clip_other"] - clip).max() > 1e-4
  np.testing.assert_array_equal(out["clip_onehot"], clip)


def test_generator_clip_and_frame_modes_agree(gen_run):
  out, b, t = gen_run["out"], gen_run["b"], gen_run["t"]
  np.testing.assert_allclose(out["frames"].reshape(b, t, 96, 96, 3), out["clip_int"], atol=1e-6)
  # Training mode: BatchNorm statistics over the same B*T frames, so the same outputs and stats.
  np.testing.assert_allclose(out["frames_train"].reshape(b, t, 96, 96, 3), out["clip_train"],
                             atol=1e-5)
  for s_clip, s_frames, s_old in zip(jax.tree_util.tree_leaves(out["clip_stats"]),
                                     jax.tree_util.tree_leaves(out["frames_stats"]),
                                     jax.tree_util.tree_leaves(gen_run["variables"]["batch_stats"])):
    np.testing.assert_allclose(s_clip, s_frames, rtol=1e-4, atol=1e-5)
  moved = [np.abs(n - o).max() for n, o in
           zip(jax.tree_util.tree_leaves(out["clip_stats"]),
               jax.tree_util.tree_leaves(gen_run["variables"]["batch_stats"]))]
  assert min(moved) > 0  # every running statistic was updated
  assert np.abs(out["clip_train"] - out["clip_int"]).max() > 1e-3  # batch vs running statistics


def test_generator_matches_pytorch_replica(gen_run):
  torch = pytest.importorskip("torch")
  tgen, _, _ = torch_models(WIDTH)
  n = load_flax_into_torch(tgen, gen_run["variables"])
  assert n == len(list(m for m in tgen.modules() if isinstance(
      m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear, torch.nn.BatchNorm2d))))
  b, t = gen_run["b"], gen_run["t"]
  mel = np.array(gen_run["mel"]).reshape(b * t, 80, 16, 1).transpose(0, 3, 1, 2).copy()
  face = np.array(gen_run["face"]).reshape(b * t, 96, 96, 6).transpose(0, 3, 1, 2).copy()
  emo = np.repeat(np.eye(6, dtype=np.float32)[np.asarray(gen_run["labels"])], t, axis=0)
  tgen.eval()
  with torch.no_grad():
    want = tgen(torch.from_numpy(mel), torch.from_numpy(face), torch.from_numpy(emo)).numpy()
  want = want.transpose(0, 2, 3, 1).reshape(b, t, 96, 96, 3)
  np.testing.assert_allclose(gen_run["out"]["clip_int"], want, atol=2e-5)


def test_generator_bfloat16_compute_keeps_float32_params(gen_run):
  model = Generator(width=WIDTH, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda: model.init(KEY, gen_run["mel"], gen_run["face"],
                                             gen_run["labels"]))
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
  out = jax.jit(model.apply)(gen_run["variables"], gen_run["mel"], gen_run["face"],
                             gen_run["labels"])
  assert out.dtype == jnp.float32
  err = np.abs(np.asarray(out) - gen_run["out"]["clip_int"])
  assert err.max() < 0.05 and err.mean() < 0.01, (err.max(), err.mean())


# ----------------------------------------------------------------------------- SyncNet, quality disc

@pytest.fixture(scope="module")
def sync_run():
  b = 4
  rng = np.random.default_rng(5)
  mel = jnp.asarray(rng.standard_normal((b, 80, 16, 1)), jnp.float32)
  faces = jnp.asarray(rng.uniform(0, 1, (b, 48, 96, 15)), jnp.float32)
  variables = random_variables(SyncNet(width=WIDTH), mel, faces)
  synced = SyncNet(width=WIDTH, bn_axis_name="shards")

  @jax.jit
  def run(variables):
    model = SyncNet(width=WIDTH)
    out = {"eval": model.apply(variables, mel, faces)}
    out["train"], out["stats"] = model.apply(variables, mel, faces, train=True,
                                             mutable=["batch_stats"])
    # The batch split over two "devices" with BatchNorm statistics synced across them.
    shard = lambda a: a.reshape((2, b // 2) + a.shape[1:])
    sharded = jax.vmap(lambda m, f: synced.apply(variables, m, f, train=True,
                                                 mutable=["batch_stats"]),
                       axis_name="shards")(shard(mel), shard(faces))
    out["sharded"], out["sharded_stats"] = sharded
    return out

  return dict(variables=variables, mel=mel, faces=faces, out=jax.device_get(run(variables)))


def test_syncnet_embeddings_are_unit_norm(sync_run):
  for audio, face in (sync_run["out"]["eval"], sync_run["out"]["train"]):
    assert audio.shape == face.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(audio, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(face, axis=-1), 1.0, atol=1e-5)
    assert np.abs(audio[0] - audio[1]).max() > 1e-3 and np.abs(face[0] - face[1]).max() > 1e-3


def test_syncnet_batch_norm_syncs_across_axis(sync_run):
  out = sync_run["out"]
  for sharded, full in zip(out["sharded"], out["train"]):
    np.testing.assert_allclose(sharded.reshape(full.shape), full, atol=1e-5)
  for sharded, full in zip(jax.tree_util.tree_leaves(out["sharded_stats"]),
                           jax.tree_util.tree_leaves(out["stats"])):
    np.testing.assert_allclose(sharded[0], full, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sharded[1], full, rtol=1e-4, atol=1e-6)


def test_syncnet_matches_pytorch_replica(sync_run):
  torch = pytest.importorskip("torch")
  _, tsync, _ = torch_models(WIDTH)
  load_flax_into_torch(tsync, sync_run["variables"])
  mel = torch.from_numpy(np.array(sync_run["mel"]).transpose(0, 3, 1, 2).copy())
  faces = torch.from_numpy(np.array(sync_run["faces"]).transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    tsync.eval()
    want_eval = tsync(mel, faces)
    tsync.train()  # batch statistics, and the running means move like ours
    want_train = tsync(mel, faces)
  for got, want in zip(sync_run["out"]["eval"] + sync_run["out"]["train"],
                       want_eval + want_train):
    np.testing.assert_allclose(got, want.numpy(), atol=2e-5)
  # Every running statistic after one training-mode pass equals PyTorch's BatchNorm2d update:
  # means, and variances updated with the UNBIASED batch variance (n/(n-1); n = 4 in the 1x1
  # layers at the end, where a biased update would be 25 % off).
  from emogen_jax import convert
  got = convert.flax_to_torch("syncnet", {"params": sync_run["variables"]["params"],
                                          **sync_run["out"]["stats"]}, width=WIDTH)
  want = {k: v.numpy() for k, v in tsync.state_dict().items()}
  keys = [k for k in want if k.endswith(("running_mean", "running_var"))]
  assert len(keys) == 2 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in tsync.modules()) > 0
  for k in keys:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_quality_disc_sees_only_lower_half_and_matches_pytorch():
  rng = np.random.default_rng(6)
  frames = rng.uniform(0, 1, (2, 3, 96, 96, 3)).astype(np.float32)
  model = QualityDiscriminator(width=WIDTH)
  variables = random_variables(model, frames, gain=2.0)  # keeps 13 leaky layers' scale up
  changed_top = frames.copy()
  changed_top[:, :, :48] = rng.uniform(0, 1, changed_top[:, :, :48].shape)
  changed_bottom = frames.copy()
  changed_bottom[:, :, 60:] = 0.0

  @jax.jit
  def run(x):
    return (model.apply(variables, x), model.apply(variables, x[:, 0]),
            QualityDiscriminator(width=WIDTH, logits=True).apply(variables, x))

  prob, prob_single, logits = run(jnp.asarray(np.stack([frames, changed_top, changed_bottom])
                                              .reshape(6, 3, 96, 96, 3)))
  prob, logits = np.asarray(prob).reshape(3, 2, 3), np.asarray(logits).reshape(3, 2, 3)
  assert np.all((prob > 0) & (prob < 1)) and logits.std() > 1e-2
  # 13 leaky conv layers in float32: summation order alone moves outputs near 0.4 by up to
  # ~1.2e-6 (40 ulp), seen on a loaded machine
  np.testing.assert_allclose(jax.nn.sigmoid(logits), prob, atol=5e-6)
  np.testing.assert_array_equal(prob[0], prob[1])  # the upper half is not looked at
  assert np.abs(prob[0] - prob[2]).max() > 1e-5
  np.testing.assert_allclose(np.asarray(prob_single).reshape(3, 2), prob[:, :, 0], atol=5e-6)
  torch = pytest.importorskip("torch")
  _, _, tqual = torch_models(WIDTH)
  load_flax_into_torch(tqual, variables)
  with torch.no_grad():
    want = tqual(torch.from_numpy(frames.reshape(6, 96, 96, 3).transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(prob[0].reshape(6), want[:, 0], atol=2e-5)


def test_vgg_max_pool_equals_the_window_pool_with_its_gradient():
  """vgg.max_pool_2x2 (a max over a reshape) gives nn.max_pool's values and, where no window has a
  tie, its gradient; odd sizes drop the last row and column (3x5 -> 1x2), as PyTorch's floor mode."""
  import flax.linen as nn
  from emogen_jax.models.vgg import max_pool_2x2
  rng = np.random.default_rng(0)
  for shape in ((2, 8, 6, 3), (1, 3, 5, 4)):
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)   # continuous: no ties
    window = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
    ours, ref = max_pool_2x2(x), window(x)
    assert ours.shape == ref.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    np.testing.assert_array_equal(ours, ref)
    weights = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    g = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * weights))(x)
    g_ref = jax.grad(lambda x: jnp.sum(window(x) * weights))(x)
    np.testing.assert_array_equal(g, g_ref)
    assert int(jnp.sum(g != 0)) == ref.size   # one input per window gets its output's gradient
