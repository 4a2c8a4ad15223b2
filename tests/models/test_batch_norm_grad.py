"""The hand-written training-mode BatchNorm gradient (models.layers.batch_norm_train) against
autodiff of the plain two-pass formula and against PyTorch's BatchNorm2d, on one device and with
the statistics synced over a two-shard axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emogen_jax.models.layers import BN_EPSILON, batch_norm_train


def _plain(x, scale, bias, axis_name=None):
  """The textbook formula, differentiated by JAX (what the layer computed before)."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  if axis_name:
    mean = jax.lax.pmean(mean, axis_name)
  var = jnp.mean(jnp.square(x - mean), axes)
  if axis_name:
    var = jax.lax.pmean(var, axis_name)
  return (x - mean) * (jax.lax.rsqrt(var + BN_EPSILON) * scale) + bias


@pytest.fixture(scope="module")
def case():
  rng = np.random.default_rng(3)
  x = (rng.standard_normal((6, 5, 4, 7)) * rng.uniform(0.5, 3, 7) + rng.normal(0, 2, 7))
  w = rng.standard_normal(x.shape)          # a loss that weighs every output differently
  return {"x": jnp.asarray(x, jnp.float32), "w": jnp.asarray(w, jnp.float32),
          "scale": jnp.asarray(rng.uniform(0.5, 1.5, 7), jnp.float32),
          "bias": jnp.asarray(rng.normal(0, 0.1, 7), jnp.float32)}


def _grads(fn, c):
  loss = lambda x, s, b: jnp.sum(jnp.square(fn(x, s, b)) * c["w"])
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(c["x"], c["scale"], c["bias"])


def test_gradient_equals_autodiff_of_the_plain_formula(case):
  ours = _grads(lambda x, s, b: batch_norm_train(x, s, b, BN_EPSILON, None, jnp.float32)[0], case)
  plain = _grads(_plain, case)
  for a, b in zip(ours, plain):
    assert float(jnp.max(jnp.abs(b))) > 1e-2
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  y, mean, var = batch_norm_train(case["x"], case["scale"], case["bias"], BN_EPSILON, None,
                                  jnp.float32)
  np.testing.assert_array_equal(y, _plain(case["x"], case["scale"], case["bias"]))
  np.testing.assert_allclose(mean, case["x"].mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var, case["x"].var((0, 1, 2)), rtol=1e-5)


def test_gradient_with_statistics_synced_over_two_shards(case):
  shard = lambda a: a.reshape((2, 3) + a.shape[1:])

  def sharded_grads(fn):
    def loss(x, s, b, w):
      return jnp.sum(jnp.square(fn(x, s, b)) * w)
    g = jax.vmap(jax.grad(loss, argnums=(0, 1, 2)), in_axes=(0, None, None, 0), axis_name="d")
    return jax.jit(g)(shard(case["x"]), case["scale"], case["bias"], shard(case["w"]))

  ours = sharded_grads(lambda x, s, b: batch_norm_train(x, s, b, BN_EPSILON, "d", jnp.float32)[0])
  plain = sharded_grads(lambda x, s, b: _plain(x, s, b, "d"))
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  # Synced statistics make the sharded input gradient the unsharded one.
  full = _grads(_plain, case)
  np.testing.assert_allclose(ours[0].reshape(full[0].shape), full[0], rtol=2e-4, atol=2e-5)


def test_gradient_equals_pytorch_batch_norm2d(case):
  torch = pytest.importorskip("torch")
  ours = _grads(lambda x, s, b: batch_norm_train(x, s, b, BN_EPSILON, None, jnp.float32)[0], case)
  x = torch.tensor(np.asarray(case["x"])).permute(0, 3, 1, 2).requires_grad_(True)
  s = torch.tensor(np.asarray(case["scale"])).requires_grad_(True)
  b = torch.tensor(np.asarray(case["bias"])).requires_grad_(True)
  y = torch.nn.functional.batch_norm(x, None, None, s, b, training=True, eps=BN_EPSILON)
  w = torch.tensor(np.asarray(case["w"])).permute(0, 3, 1, 2)
  (y.square() * w).sum().backward()
  np.testing.assert_allclose(ours[0], x.grad.permute(0, 2, 3, 1).numpy(), rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(ours[1], s.grad.numpy(), rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(ours[2], b.grad.numpy(), rtol=2e-4, atol=2e-5)
