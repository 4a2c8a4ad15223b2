"""VGG-19 convolutional trunk (torchvision's ``vgg19().features``) for the perceptual loss.

Parameters are named ``features_{idx}`` after torchvision's module index, so the ImageNet weights
(torchvision's ``vgg19-dcbf9e60.pth``) convert with a transpose (``emogen_jax.convert --kind
vgg19``). 20,024,384 parameters; no BatchNorm.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from emogen_jax.models.layers import channels

# (torchvision `features` index, output channels) per conv; "M" = the max-pool at that index.
LAYERS = ((0, 64), (2, 64), (4, "M"),
          (5, 128), (7, 128), (9, "M"),
          (10, 256), (12, 256), (14, 256), (16, 256), (18, "M"),
          (19, 512), (21, 512), (23, 512), (25, 512), (27, "M"),
          (28, 512), (30, 512), (32, 512), (34, 512), (36, "M"))

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def max_pool_2x2(x):
  """2x2 max-pool, stride 2, rows and columns past an even size dropped (PyTorch's floor mode):
  (B, H, W, C) -> (B, H // 2, W // 2, C).

  The same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``, written as a max over a reshape:
  its gradient is then an elementwise mask that XLA fuses, where the window form's gradient is a
  select-and-scatter, which XLA:CPU expands into index arithmetic over the whole activation (VGG's
  forward and input gradient, 10 frames at full width: 1.07x faster). A tie's gradient is split
  evenly among the tied inputs instead of going to one of them; after VGG's ReLU the only ties
  are zeros, whose gradient the ReLU stops either way.
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class VGG19Features(nn.Module):
  """VGG-19 ``features`` (3x3 convs with padding 1 + ReLU, 2x2 max-pools).

  ``__call__(images)``: (B, H, W, 3) in [0, 1] -> tuple of the 5 max-pool outputs (torchvision
  ``features`` indices 4, 9, 18, 27, 36), shapes (B, H/2, W/2, 64), (B, H/4, W/4, 128),
  (B, H/8, W/8, 256), (B, H/16, W/16, 512), (B, H/32, W/32, 512) (floor division, like PyTorch).

  Input normalisation: the ImageNet weights expect RGB normalised by the ImageNet mean/std, so with
  ``normalize=True`` (default) the input becomes (x - mean) / std per RGB channel. Our frames are
  BGR (as OpenCV reads them); ``bgr_input=True`` reverses the channels first. ``normalize=False``
  feeds the input as is: that is what the original EmoGen perceptual loss did (raw [0, 1] BGR
  frames straight into torchvision's VGG-19), so ``VGG19Features(normalize=False)`` reproduces
  it and ``VGG19Features(bgr_input=True)`` gives the features the ImageNet weights were made for.
  """
  normalize: bool = True
  bgr_input: bool = False
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    x = images.astype(self.dtype)
    if self.bgr_input:
      x = x[..., ::-1]
    if self.normalize:
      x = (x - jnp.asarray(IMAGENET_MEAN_RGB, self.dtype)) / jnp.asarray(IMAGENET_STD_RGB, self.dtype)
    outs = []
    for idx, ch in LAYERS:
      if ch == "M":
        x = max_pool_2x2(x)
        outs.append(x)
      else:
        x = nn.Conv(channels(ch, self.width), (3, 3), padding=((1, 1), (1, 1)),
                    dtype=self.dtype, name=f"features_{idx}")(x)
        x = nn.relu(x)
    return tuple(outs)
