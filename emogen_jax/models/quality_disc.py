"""Visual-quality discriminator (Wav2Lip's ``Wav2Lip_disc_qual``), optional in EmoGen.

14,113,793 parameters at ``width=1``, no BatchNorm. Submodule names follow the PyTorch paths
(``face_encoder_blocks_1_0``, ``binary_pred_0``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emogen_jax.models.layers import ConvLeaky, channels

# Blocks of ConvLeaky(cout, kernel, stride, padding); lower half 48x96 -> 1x1.
FACE_ENCODER = (
    ((32, 7, 1, 3),),
    ((64, 5, (1, 2), 2), (64, 5, 1, 2)),
    ((128, 5, 2, 2), (128, 5, 1, 2)),
    ((256, 5, 2, 2), (256, 5, 1, 2)),
    ((512, 3, 2, 1), (512, 3, 1, 1)),
    ((512, 3, 2, 1), (512, 3, 1, 1)),
    ((512, 3, 1, 0), (512, 1, 1, 0)),
)


class QualityDiscriminator(nn.Module):
  """``__call__(frames)``: (B, T, 96, 96, 3) or (B, 96, 96, 3) in [0, 1] -> probability that each
  frame is real, (B, T) or (B,) float32. Only the lower half (rows 48..95) is looked at, as in the
  original. ``logits=True`` returns the pre-sigmoid scores instead (for a stable BCE).
  """
  width: float = 1.0
  dtype: Any = jnp.float32
  logits: bool = False

  @nn.compact
  def __call__(self, frames):
    lead = frames.shape[:-3]
    if frames.ndim not in (4, 5):
      raise ValueError(f"frames must be (B, T, H, W, 3) or (B, H, W, 3), got {frames.shape}")
    x = frames.reshape((-1,) + frames.shape[-3:])
    x = x[:, x.shape[1] // 2:].astype(self.dtype)
    for i, block in enumerate(FACE_ENCODER):
      for j, (cout, k, s, p) in enumerate(block):
        x = ConvLeaky(channels(cout, self.width), k, s, p, dtype=self.dtype,
                      name=f"face_encoder_blocks_{i}_{j}")(x)
    x = nn.Conv(1, (1, 1), padding="VALID", dtype=self.dtype, name="binary_pred_0")(x)
    x = x.reshape(lead).astype(jnp.float32)
    return x if self.logits else jax.nn.sigmoid(x)
