"""Emotion discriminator (EmoGen's DISCEMO): per-frame CNN -> projector -> LSTM -> 6 emotion logits.

Parameter names follow the PyTorch module paths with '.' -> '_' (``conv_1_0``, ``projector_0``,
``rnn_1``, ``cls_0``) so that a converted original checkpoint is a transpose away
(see ``emogen_jax.convert``). 16,503,430 parameters at ``width=1``; no BatchNorm.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emogen_jax.data.emotions import NUM_EMOTIONS
from emogen_jax.models.layers import channels, conv2d
CONV_CHANNELS = (64, 128, 256, 512, 512)
PROJ_HIDDEN = 2048
EMBED = 512
LEAK = 0.3


class LSTM(nn.Module):
  """One-layer unidirectional LSTM over axis 1, laid out like ``torch.nn.LSTM``.

  Parameters: ``kernel_ih`` (I, 4H), ``kernel_hh`` (H, 4H), ``bias_ih`` (4H,), ``bias_hh`` (4H,),
  gates packed in PyTorch's order i, f, g, o, so a PyTorch ``weight_ih_l0`` (4H, I) is
  ``kernel_ih.T``. Initialised like PyTorch, uniform(-1/sqrt(H), 1/sqrt(H)).

  Input (B, T, I) -> outputs (B, T, H), zero initial state.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h_dim = self.features
    bound = 1.0 / float(h_dim) ** 0.5
    init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    k_ih = self.param("kernel_ih", init, (x.shape[-1], 4 * h_dim))
    k_hh = self.param("kernel_hh", init, (h_dim, 4 * h_dim))
    b_ih = self.param("bias_ih", init, (4 * h_dim,))
    b_hh = self.param("bias_hh", init, (4 * h_dim,))
    x, k_ih, k_hh, b_ih, b_hh = (a.astype(self.dtype) for a in (x, k_ih, k_hh, b_ih, b_hh))
    # The input projection for all steps at once; only the recurrent matmul is sequential.
    xw = jnp.einsum("bti,ig->tbg", x, k_ih) + b_ih + b_hh

    def step(carry, xw_t):
      h, c = carry
      gates = xw_t + h @ k_hh
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    zeros = jnp.zeros((x.shape[0], h_dim), self.dtype)
    _, hs = jax.lax.scan(step, (zeros, zeros), xw)
    return jnp.swapaxes(hs, 0, 1)


class EmotionDiscriminator(nn.Module):
  """Emotion classifier of a clip.

  ``__call__(video)``: video (B, T, 96, 96, 3) in [0, 1] -> logits (B, 6) (order of
  ``emogen_jax.data.emotions.EMOTIONS``).

  Per frame: five Conv(3x3, stride 2, pad 1) -> LeakyReLU(0.3), channels 64, 128, 256, 512, 512
  (96 -> 48 -> 24 -> 12 -> 6 -> 3), flattened in PyTorch's (C, H, W) order (4608 values) so that
  converted projector weights apply unchanged; Dense 4608 -> 2048 -> LeakyReLU(0.3) -> Dense 512;
  LSTM(512) over the T frames; Dense(6) on the last step.

  ``original_layout=True`` reproduces the original code's folding: it got (N, C, T, H, W) and
  reshaped it straight to (T*N, C, H, W) "frames", each mixing colour channels and time steps. Our
  (B, T, H, W, 3) input is brought to (N, C, T, H, W) and reshaped the same way, so a converted
  original checkpoint gives the original's logits. The default folds real frames.
  """
  original_layout: bool = False
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video):
    b, t, h, w, c = video.shape
    x = video.astype(self.dtype)
    if self.original_layout:
      x = jnp.transpose(x, (0, 4, 1, 2, 3)).reshape(b * t, c, h, w)  # (N,C,T,H,W) viewed as frames
      x = jnp.transpose(x, (0, 2, 3, 1))  # back to NHWC for the convs
    else:
      x = x.reshape(b * t, h, w, c)
    kinit = nn.initializers.xavier_uniform()
    for k, ch in enumerate(CONV_CHANNELS, start=1):
      x = nn.Conv(channels(ch, self.width), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                  kernel_init=kinit, dtype=self.dtype, conv_general_dilated=conv2d,
                  name=f"conv_{k}_0")(x)
      x = nn.leaky_relu(x, LEAK)
    # PyTorch flattens (C, H, W); keep that order so converted Linear weights line up.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(b, t, -1)
    x = nn.Dense(channels(PROJ_HIDDEN, self.width), kernel_init=kinit, dtype=self.dtype,
                 name="projector_0")(x)
    x = nn.leaky_relu(x, LEAK)
    x = nn.Dense(channels(EMBED, self.width), kernel_init=kinit, dtype=self.dtype, name="projector_2")(x)
    x = LSTM(channels(EMBED, self.width), dtype=self.dtype, name="rnn_1")(x)
    logits = nn.Dense(NUM_EMOTIONS, kernel_init=kinit, dtype=self.dtype, name="cls_0")(x[:, -1])
    return logits.astype(jnp.float32)
