"""Training losses and metrics, as pure functions of arrays (docs/design.md "Training recipe").

All inputs are NHWC float arrays; every function returns a float32 scalar (the batch mean), so that
under ``pmap`` a ``lax.pmean`` over the device axis gives the mean over the global batch.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

# PyTorch's BCELoss clamps log(p) and log(1-p) at -100; the sync loss inherits that.
_LOG_CLAMP = -100.0
_COSINE_EPS = 1e-8


def _safe_norm(x: jax.Array) -> jax.Array:
  """||x|| along the last axis with gradient 0 (not NaN) at x = 0, like PyTorch's norm."""
  s = jnp.sum(jnp.square(x), axis=-1)
  nonzero = s > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, s, 1.0)), 0.0)


def cosine_similarity(a: jax.Array, v: jax.Array, eps: float = _COSINE_EPS) -> jax.Array:
  """(B, D), (B, D) -> (B,): a.v / max(|a| |v|, eps), as torch.nn.functional.cosine_similarity."""
  a = a.astype(jnp.float32)
  v = v.astype(jnp.float32)
  dot = jnp.sum(a * v, axis=-1)
  return dot / jnp.maximum(_safe_norm(a) * _safe_norm(v), eps)


@jax.custom_vjp
def _bce_terms(p: jax.Array, y: jax.Array) -> jax.Array:
  """Per-element BCE with both logs clamped at -100 (PyTorch BCELoss forward)."""
  log_p = jnp.maximum(jnp.log(p), _LOG_CLAMP)
  log_1mp = jnp.maximum(jnp.log1p(-p), _LOG_CLAMP)
  return -(y * log_p + (1.0 - y) * log_1mp)


def _bce_fwd(p, y):
  return _bce_terms(p, y), (p, y)


def _bce_bwd(res, g):
  # PyTorch's BCELoss backward: (p - y) / max(p (1 - p), 1e-12). Finite at p = 0 or 1, where
  # differentiating the clamped logs would give 0 * inf = NaN (a ReLU'd embedding pair with
  # disjoint supports has cos = 0 exactly and stalled a smoke run with a NaN gradient).
  p, y = res
  return g * (p - y) / jnp.maximum(p * (1.0 - p), 1e-12), jnp.zeros_like(y)


_bce_terms.defvjp(_bce_fwd, _bce_bwd)


def binary_cross_entropy(p: jax.Array, y: jax.Array) -> jax.Array:
  """Mean BCE of probabilities ``p`` against labels ``y`` with both logs clamped at -100 and
  PyTorch's BCELoss gradient (finite at p = 0 and p = 1)."""
  # Embeddings come out of a ReLU, so cos >= 0; the clip only guards against rounding past 1
  # (bfloat16), where log(1 - p) would be NaN (PyTorch's BCELoss rejects such inputs).
  # (straight-through: the value is clipped, the gradient passes unchanged, also at p = 0 or 1.)
  p = p.astype(jnp.float32)
  p = p + jax.lax.stop_gradient(jnp.clip(p, 0.0, 1.0) - p)
  y = jnp.broadcast_to(y.astype(jnp.float32), p.shape)
  return jnp.mean(_bce_terms(p, y))


def sync_loss(audio_emb: jax.Array, face_emb: jax.Array, label: jax.Array) -> jax.Array:
  """Sync loss: BCE of cosine_similarity(audio, face) taken as a probability, against ``label``.

  audio_emb, face_emb: (B, 512); label: (B,) 1 = in sync, 0 = off sync.
  """
  return binary_cross_entropy(cosine_similarity(audio_emb, face_emb), label.reshape(-1))


def sync_accuracy(audio_emb: jax.Array, face_emb: jax.Array, label: jax.Array) -> jax.Array:
  """Fraction of pairs whose decision ``cos > 0.5`` agrees with the in-sync label."""
  pred = cosine_similarity(audio_emb, face_emb) > 0.5
  return jnp.mean((pred == (label.reshape(-1) > 0.5)).astype(jnp.float32))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of (B, K) logits against int labels (B,) (torch CrossEntropyLoss)."""
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]
  return -jnp.mean(picked)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels.astype(jnp.int32)).astype(jnp.float32))


def l1_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean absolute error (torch L1Loss, reduction mean)."""
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def mse(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)))


def perceptual_loss(features_x: Sequence[jax.Array], features_y: Sequence[jax.Array]) -> jax.Array:
  """Perceptual loss: sum over the VGG-19 max-pool outputs of the MSE between the two images."""
  return sum(mse(fx, fy) for fx, fy in zip(features_x, features_y, strict=True))


def lower_half_stack(frames: jax.Array) -> jax.Array:
  """(B, T, 96, 96, 3) -> (B, 48, 96, 3T): rows 48..95 of each frame stacked frame-major on channels.

  This is the SyncNet face input (channel 3*t + c holds channel c of frame t).
  """
  b, t, h, w, c = frames.shape
  lower = frames[:, :, h // 2:, :, :]                  # (B, T, H/2, W, C)
  lower = jnp.transpose(lower, (0, 2, 3, 1, 4))        # (B, H/2, W, T, C)
  return lower.reshape(b, h - h // 2, w, t * c)


def global_norm(tree) -> jax.Array:
  """L2 norm over all leaves of a pytree (used for the non-finite-gradient check)."""
  # The barrier keeps these squares apart from the optimizer's (Adam squares the same
  # gradients): shared, XLA:CPU writes each square out in full for this sum instead of summing
  # it as it goes (a 4608 x 2048 gradient: 6.2 ms for both, 3.8 ms apart; docs/design.md).
  leaves = [jax.lax.optimization_barrier(x) for x in jax.tree_util.tree_leaves(tree)]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def per_example(metric_fn, *args) -> jax.Array:
  """(B,) values of a batch-mean metric computed on each example alone (a batch of 1)."""
  return jax.vmap(lambda *xs: metric_fn(*(x[None] for x in xs)))(*args)


def masked_mean(per_example_metrics: dict, mask, axis_name) -> dict:
  """{name: (B,)} -> {name: mean over the examples with mask 1 on all ``axis_name`` devices},
  plus "examples": how many such examples (to weight batches when averaging several).

  ``mask`` (B,) is the input pipeline's 1 = real example / 0 = padding (None: all real), so a
  padded evaluation batch counts each example once.
  """
  first = next(iter(per_example_metrics.values()))
  mask = jnp.ones(first.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
  count = jax.lax.psum(jnp.sum(mask), axis_name)
  out = {k: jax.lax.psum(jnp.sum(v.astype(jnp.float32) * mask), axis_name) / jnp.maximum(count, 1.0)
         for k, v in per_example_metrics.items()}
  out["examples"] = count
  return out
