"""Lip-sync expert (Wav2Lip's ``SyncNet_color``): audio and lower-face embeddings.

16,435,072 parameters and 14,080 BatchNorm statistics at ``width=1``, so Wav2Lip's public
``lipsync_expert.pth`` converts onto it. Submodule names follow the PyTorch paths
(``face_encoder_3``, ``audio_encoder_0``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from emogen_jax.models.generator import apply_layer

FACE_ENCODER = (
    ("conv", 32, 7, 1, 3),
    ("conv", 64, 5, (1, 2), 1), ("res", 64), ("res", 64),
    ("conv", 128, 3, 2, 1), ("res", 128), ("res", 128), ("res", 128),
    ("conv", 256, 3, 2, 1), ("res", 256), ("res", 256),
    ("conv", 512, 3, 2, 1), ("res", 512), ("res", 512),
    ("conv", 512, 3, 2, 1),
    ("conv", 512, 3, 1, 0),
    ("conv", 512, 1, 1, 0),
)
AUDIO_ENCODER = (
    ("conv", 32, 3, 1, 1), ("res", 32), ("res", 32),
    ("conv", 64, 3, (3, 1), 1), ("res", 64), ("res", 64),
    ("conv", 128, 3, 3, 1), ("res", 128), ("res", 128),
    ("conv", 256, 3, (3, 2), 1), ("res", 256), ("res", 256),
    ("conv", 512, 3, 1, 0), ("conv", 512, 1, 1, 0),
)


def l2_normalize(x, eps: float = 1e-12):
  """x / max(||x||, eps) along the last axis (PyTorch's F.normalize)."""
  # max(s, eps^2) inside the sqrt: same values as max(norm, eps), but a finite gradient at x = 0.
  norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))
  return x / jnp.maximum(norm, eps)


class SyncNet(nn.Module):
  """``__call__(mel, faces, train)``: mel (B, 80, 16, 1), faces (B, 48, 96, 15) = lower halves
  (rows 48..95) of 5 consecutive frames stacked frame-major on channels (channel 3*t + c), values
  in [0, 1] -> (audio_emb, face_emb), each (B, 512) float32, L2-normalised (eps 1e-12).

  ``width``/``dtype``/``bn_axis_name`` as for the Generator.
  """
  width: float = 1.0
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, mel, faces, train: bool = False):
    if mel.ndim != 4 or faces.ndim != 4 or mel.shape[0] != faces.shape[0]:
      raise ValueError(f"SyncNet expects mel (B, 80, 16, 1) and faces (B, 48, 96, 15), "
                       f"got {mel.shape} and {faces.shape}")
    layer = lambda spec, x, name: apply_layer(spec, x, name, train=train, width=self.width,
                                              dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    v = faces.astype(self.dtype)
    for j, spec in enumerate(FACE_ENCODER):
      v = layer(spec, v, f"face_encoder_{j}")
    a = mel.astype(self.dtype)
    for j, spec in enumerate(AUDIO_ENCODER):
      a = layer(spec, a, f"audio_encoder_{j}")
    # Both end at 1x1 spatially; flattening is then layout-independent.
    a = a.reshape(a.shape[0], -1).astype(jnp.float32)
    v = v.reshape(v.shape[0], -1).astype(jnp.float32)
    return l2_normalize(a), l2_normalize(v)
