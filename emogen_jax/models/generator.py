"""EmoGen generator: Wav2Lip's U-Net face encoder/decoder with audio and emotion encoders.

36,826,419 parameters and 22,752 BatchNorm statistics at ``width=1``. Submodule names are the
original's PyTorch module paths with '.' -> '_' (``face_encoder_blocks_2_1``, ``audio_encoder_3``,
``emotion_encoder_0``, ``face_decoder_blocks_4_0``, ``output_block_1``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emogen_jax.data.emotions import NUM_EMOTIONS
from emogen_jax.models.layers import ConvBN, ConvTBN, channels, conv2d


# Per block: layers as (kind, cout, kernel, stride, padding); "res" = ConvBN(c, c, 3, 1, 1, res).
FACE_ENCODER = (
    (("conv", 16, 7, 1, 3),),
    (("conv", 32, 3, 2, 1), ("res", 32), ("res", 32)),
    (("conv", 64, 3, 2, 1), ("res", 64), ("res", 64), ("res", 64)),
    (("conv", 128, 3, 2, 1), ("res", 128), ("res", 128)),
    (("conv", 256, 3, 2, 1), ("res", 256), ("res", 256)),
    (("conv", 512, 3, 2, 1), ("res", 512)),
    (("conv", 512, 3, 1, 0), ("conv", 512, 1, 1, 0)),
)
AUDIO_ENCODER = (
    ("conv", 32, 3, 1, 1), ("res", 32), ("res", 32),
    ("conv", 64, 3, (3, 1), 1), ("res", 64), ("res", 64),
    ("conv", 128, 3, 3, 1), ("res", 128), ("res", 128),
    ("conv", 256, 3, (3, 2), 1), ("res", 256),
    ("conv", 512, 3, 1, 0), ("conv", 512, 1, 1, 0),
)
# "convT" = ConvTBN(cout, kernel, stride, padding, output_padding).
FACE_DECODER = (
    (("conv", 512, 1, 1, 0),),
    (("convT", 512, 3, 1, 0, 0), ("res", 512)),
    (("convT", 512, 3, 2, 1, 1), ("res", 512), ("res", 512)),
    (("convT", 384, 3, 2, 1, 1), ("res", 384), ("res", 384)),
    (("convT", 256, 3, 2, 1, 1), ("res", 256), ("res", 256)),
    (("convT", 128, 3, 2, 1, 1), ("res", 128), ("res", 128)),
    (("convT", 64, 3, 2, 1, 1), ("res", 64), ("res", 64)),
)


def apply_layer(spec, x, name: str, *, train: bool, width: float, dtype: Any,
                bn_axis_name: str | None):
  """Applies one layer spec of the tables above (shared with SyncNet)."""
  kind, cout = spec[0], channels(spec[1], width)
  common = dict(bn_axis_name=bn_axis_name, dtype=dtype, name=name)
  if kind == "res":
    return ConvBN(cout, 3, 1, 1, residual=True, **common)(x, train)
  if kind == "conv":
    return ConvBN(cout, spec[2], spec[3], spec[4], **common)(x, train)
  if kind == "convT":
    return ConvTBN(cout, spec[2], spec[3], spec[4], spec[5], **common)(x, train)
  raise ValueError(kind)


def emotion_one_hot(emotion, batch: int):
  """(B,) int labels or (B, 6) one-hot/probabilities -> (B, 6) float32."""
  emotion = jnp.asarray(emotion)
  if emotion.ndim == 1 and jnp.issubdtype(emotion.dtype, jnp.integer):
    emotion = jax.nn.one_hot(emotion, NUM_EMOTIONS, dtype=jnp.float32)
  if emotion.shape != (batch, NUM_EMOTIONS):
    raise ValueError(f"emotion must be ({batch},) int labels or ({batch}, {NUM_EMOTIONS}) one-hot, "
                     f"got shape {emotion.shape} dtype {emotion.dtype}")
  return emotion.astype(jnp.float32)


class Generator(nn.Module):
  """Emotional talking-face generator.

  ``__call__(mel, face, emotion, train)``:
    clip mode:   mel (B, T, 80, 16, 1), face (B, T, 96, 96, 6) -> frames (B, T, 96, 96, 3);
    frame mode:  mel (B, 80, 16, 1),    face (B, 96, 96, 6)    -> frames (B, 96, 96, 3).
  face channels 0-2: the masked (zero) target, 3-5: a reference frame, values in [0, 1].
  emotion: (B,) int labels or (B, 6) one-hot; in clip mode it applies to every frame.
  Output float32 in [0, 1] (sigmoid). BatchNorm statistics are over all B*T frames.

  ``width`` scales every hidden channel count (1.0 = reference); ``dtype`` is the compute dtype
  (params stay float32); ``bn_axis_name`` syncs BatchNorm batch statistics across that axis.
  """
  width: float = 1.0
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, mel, face, emotion, train: bool = False):
    clip = face.ndim == 5
    if clip != (mel.ndim == 5) or face.shape[:face.ndim - 3] != mel.shape[:mel.ndim - 3]:
      raise ValueError(f"mel {mel.shape} and face {face.shape} must both be clips (B, T, ...) "
                       "or both single frames (B, ...)")
    batch = face.shape[0]
    steps = face.shape[1] if clip else 1
    emotion = emotion_one_hot(emotion, batch)
    # The one place where clips are folded into frames (and unfolded at the end).
    face = face.reshape((batch * steps,) + face.shape[-3:]).astype(self.dtype)
    mel = mel.reshape((batch * steps,) + mel.shape[-3:]).astype(self.dtype)

    layer = lambda spec, x, name: apply_layer(spec, x, name, train=train, width=self.width,
                                              dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    a = mel
    for j, spec in enumerate(AUDIO_ENCODER):
      a = layer(spec, a, f"audio_encoder_{j}")                       # -> (N, 1, 1, 512)

    e = emotion.astype(self.dtype)
    e = nn.leaky_relu(nn.Dense(channels(512, self.width), dtype=self.dtype,
                               name="emotion_encoder_0")(e), 0.2)
    e = nn.leaky_relu(nn.Dense(channels(512, self.width), dtype=self.dtype,
                               name="emotion_encoder_2")(e), 0.2)
    # The same emotion for every frame of a clip (computed once per clip, then repeated).
    e = jnp.repeat(e, steps, axis=0)[:, None, None, :]

    skips = []
    x = face
    for i, block in enumerate(FACE_ENCODER):
      for j, spec in enumerate(block):
        x = layer(spec, x, f"face_encoder_blocks_{i}_{j}")
      skips.append(x)

    x = jnp.concatenate([a, e], axis=-1)
    for i, block in enumerate(FACE_DECODER):
      for j, spec in enumerate(block):
        x = layer(spec, x, f"face_decoder_blocks_{i}_{j}")
      x = jnp.concatenate([x, skips.pop()], axis=-1)

    x = layer(("conv", 32, 3, 1, 1), x, "output_block_0")
    x = nn.Conv(3, (1, 1), padding=((0, 0), (0, 0)), dtype=self.dtype, conv_general_dilated=conv2d,
                name="output_block_1")(x)
    x = jax.nn.sigmoid(x.astype(jnp.float32))
    if clip:
      return x.reshape((batch, steps) + x.shape[1:])
    return x
