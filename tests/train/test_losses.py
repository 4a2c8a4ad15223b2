"""Training losses against independent references: PyTorch's BCELoss/cosine_similarity/
CrossEntropyLoss/L1Loss when torch is installed, closed forms otherwise."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from emogen_jax.train import losses


def _emb(seed, n=6, d=8):
  rng = np.random.default_rng(seed)
  x = np.abs(rng.normal(size=(n, d))).astype(np.float32)  # post-ReLU embeddings: cos >= 0
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sync_loss_closed_form_and_clamp():
  a, v = _emb(0), _emb(1)
  y = np.array([1, 0, 1, 0, 1, 0], np.float32)
  cos = np.sum(a * v, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(v, axis=1))
  p = cos.astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    ref = -np.mean(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log(1 - p), -100))
  assert float(losses.sync_loss(a, v, y)) == pytest.approx(ref, rel=1e-5)
  # p = 1 against label 0: log(1 - p) = -inf is clamped at -100, as in BCELoss.
  same = _emb(2)
  assert float(losses.sync_loss(same, same, np.zeros(6, np.float32))) == pytest.approx(100.0, rel=1e-3)
  assert float(losses.sync_loss(same, same, np.ones(6, np.float32))) == pytest.approx(0.0, abs=1e-5)
  # cos = 1 > 0.5 predicts "in sync": right for the 3 label-1 pairs only.
  acc = losses.sync_accuracy(same, same, np.array([1, 1, 0, 0, 1, 0], np.float32))
  assert float(acc) == pytest.approx(0.5)


def test_losses_match_pytorch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(3)
  a, v = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=(5, 16)).astype(np.float32)
  v[:, :8] = a[:, :8] * 3  # mostly positive similarities
  y = np.array([1, 0, 1, 1, 0], np.float32)
  d = F.cosine_similarity(torch.from_numpy(a), torch.from_numpy(v)).clamp(0, 1)
  ref = torch.nn.BCELoss()(d, torch.from_numpy(y)).item()
  cos = np.asarray(losses.cosine_similarity(a, v))
  np.testing.assert_allclose(cos.clip(0, 1), d.numpy(), rtol=1e-5, atol=1e-6)
  got = losses.binary_cross_entropy(np.clip(cos, 0, 1), y)
  assert float(got) == pytest.approx(ref, rel=1e-5)

  logits = rng.normal(size=(7, 6)).astype(np.float32) * 3
  labels = rng.integers(0, 6, 7)
  ref = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
  assert float(losses.cross_entropy(logits, labels)) == pytest.approx(ref, rel=1e-6)
  assert float(losses.accuracy(logits, labels)) == pytest.approx(
      float(np.mean(logits.argmax(1) == labels)))

  x, t = rng.uniform(size=(2, 5, 4, 4, 3)), rng.uniform(size=(2, 5, 4, 4, 3))
  ref = torch.nn.L1Loss()(torch.from_numpy(x), torch.from_numpy(t)).item()
  assert float(losses.l1_loss(x, t)) == pytest.approx(ref, rel=1e-5)


def test_perceptual_is_sum_of_mses():
  rng = np.random.default_rng(4)
  fx = [rng.normal(size=(2, s, s, c)).astype(np.float32) for s, c in ((8, 4), (4, 8), (2, 16))]
  fy = [x + rng.normal(size=x.shape).astype(np.float32) * k for k, x in enumerate(fx, start=1)]
  ref = sum(np.mean((x - y) ** 2) for x, y in zip(fx, fy))
  assert float(losses.perceptual_loss(fx, fy)) == pytest.approx(ref, rel=1e-5)


def test_lower_half_stack_layout():
  # frame t, channel c, row r -> value encodes all three, so the layout is checked exactly.
  b, t, h, w = 2, 5, 96, 96
  frames = np.zeros((b, t, h, w, 3), np.float32)
  for ti in range(t):
    for c in range(3):
      frames[:, ti, :, :, c] = 10 * ti + c + np.arange(h)[None, :, None] / 1000
  out = np.asarray(losses.lower_half_stack(jnp.asarray(frames)))
  assert out.shape == (b, 48, 96, 15)
  for ti in range(t):
    for c in range(3):
      np.testing.assert_allclose(out[:, :, :, 3 * ti + c],
                                 10 * ti + c + np.arange(48, 96)[None, :, None] / 1000 + 0 * out[:, :, :, 0],
                                 rtol=0, atol=1e-4)


def test_bce_gradient_is_pytorchs_and_finite_at_the_ends():
  """At p = 0 or 1 (cos = 0 exactly for ReLU'd embeddings with disjoint supports) the clamped
  logs have no usable derivative; the gradient must be BCELoss's finite one, never NaN."""
  import jax
  torch = pytest.importorskip("torch")
  p = np.array([0.0, 0.3, 1.0, 0.7, 1.0, 0.0], np.float32)
  y = np.array([1, 0, 0, 1, 1, 0], np.float32)
  tp = torch.tensor(p, requires_grad=True)
  ref = torch.nn.BCELoss()(tp, torch.tensor(y))
  ref.backward()
  got = jax.value_and_grad(losses.binary_cross_entropy)(jnp.asarray(p), jnp.asarray(y))
  assert float(got[0]) == pytest.approx(ref.item(), rel=1e-6)
  np.testing.assert_allclose(np.asarray(got[1]), tp.grad.numpy(), rtol=1e-5)
  # Through the cosine similarity, a zero embedding and orthogonal ones: finite gradients.
  a = jnp.array([[1.0, 0, 0], [0, 0, 0]])
  v = jnp.array([[0.0, 1, 0], [1, 0, 0]])
  g = jax.grad(losses.sync_loss, argnums=(0, 1))(a, v, jnp.ones(2))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in g)
